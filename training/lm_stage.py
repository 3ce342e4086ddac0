"""The LM stage: train the decoder on the packed pipeline, checkpointing and logging as it goes.

    <workdir>/checkpoints/<step>/   orbax: train state, data iterator state, resolved config
    <workdir>/metrics.jsonl         one JSON object per step; eval steps add `eval/...` accuracies
    <workdir>/tensorboard/          the same scalars as TensorBoard event files

Re-running the same command resumes from the latest checkpoint (model, optimizer, step and the
data iterator together). SIGTERM (a TPU preemption notice) saves and exits cleanly. A NaN or inf
loss stops the run naming the step, after saving the last good state.

Multi-host: every process runs this same loop in lockstep, reads its own share of the data and
writes its own shards of each checkpoint (the workdir must be one shared filesystem); process 0
alone writes metrics.jsonl, the log and the progress bar.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter
from tqdm import tqdm

from checkpoints import CHECKPOINT_ITEMS
from configs.base import Config
from data.pipeline import PipelineStats, packed_batches, to_global
from data.mixture import encode_sources, make_sources, open_mixture, world_splits
from data.vocab import Vocabulary
from model.costs import train_flops_per_token
from model.transformer import init_model
from parallel.hardware import matmul_peak_flops
from parallel.sharding import make_mesh
from training.evaluate import Evaluator, HeldOutLoss, source_tasks, world_tasks
from training.train_step import init_opt_state, make_optimizer, modality_losses, train_step


class NonFiniteLoss(RuntimeError):
    pass


def train_lm(cfg: Config, workdir: Path, vocab: Vocabulary, world: dict | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Train to `cfg.train.steps`, resuming from `workdir` if it holds a checkpoint; returns the last metrics.

    The data are the mixture `cfg.data.sources` names (data/mixture.py). `world` holds the world's
    "train", "validation" and "compositional" data sources when it is not the default one under
    `<workdir>/data` (tests use small worlds); the held-out evals read the last two.
    """
    workdir = Path(workdir).absolute()
    lead = jax.process_index() == 0  # one process speaks for all: they hold the same metrics
    log = log if lead else (lambda message: None)
    # Process 0 generates the world, prepares manifests and encodes their media first: on a shared
    # workdir the others would race it.
    if lead:
        make_sources(cfg.data, workdir, log, world=world is None)
        encode_sources(cfg, workdir, vocab, log)
    multihost_utils.sync_global_devices("data sources made")
    train, held_out = open_mixture(cfg, workdir, "train", world), open_mixture(cfg, workdir, "validation", world)
    mesh = make_mesh(cfg.mesh)
    graphdef, model_state = init_model(cfg.model, mesh, cfg.train.seed)
    params = nnx.state(nnx.merge(graphdef, model_state), nnx.Param)
    tx = make_optimizer(cfg.train)
    with jax.set_mesh(mesh):
        state = {"params": params, "opt_state": init_opt_state(tx, params, mesh), "step": jnp.zeros((), jnp.int32)}
        step_fn = jax.jit(train_step(graphdef, tx, cfg.train), donate_argnums=0)

    stats = PipelineStats()
    batches = iter(packed_batches(train.sources, vocab, cfg.data, stats=stats, weights=train.weights,
                                  readers=train.readers))
    tasks = source_tasks(held_out, vocab, cfg.train.eval_examples)
    if "world" in train.source_of.values():
        tasks = world_tasks(world or world_splits(workdir), vocab, cfg.train.eval_examples) + tasks
    evaluator = Evaluator(cfg.model, vocab, tasks, mesh) if tasks else None
    held_out_loss = HeldOutLoss(held_out, vocab, cfg.data, mesh, cfg.train.eval_loss_examples)

    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.train.keep_checkpoints, enable_async_checkpointing=True)
    manager = ocp.CheckpointManager(workdir / "checkpoints", options=options, item_names=CHECKPOINT_ITEMS)
    start_step = 0
    if manager.latest_step() is not None:
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state), data=grain.checkpoint.CheckpointRestore(batches)))
        state, start_step = restored["state"], int(restored["state"]["step"])
        log(f"resumed from {workdir / 'checkpoints'} at step {start_step} of {cfg.train.steps}")

    def save(step: int) -> None:
        manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(batches),
            config=ocp.args.JsonSave(dataclasses.asdict(cfg))))

    sigterms = []
    if jax.process_count() == 1:
        previous = signal.signal(signal.SIGTERM, lambda *_: sigterms.append(True))
        stop = lambda step: bool(sigterms)  # noqa: E731
    else:
        # jax.distributed's preemption service catches SIGTERM on any host (its handler is left in
        # place) and names a step at which every host returns True: all save that step and stop.
        previous = None
        stop = multihost_utils.reached_preemption_sync_point
    tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len
    flops_per_step = train_flops_per_token(cfg.model, cfg.data.seq_len) * tokens_per_step
    # MFU against what this machine's devices measurably do, not a datasheet.
    peak_flops = matmul_peak_flops(dtype=cfg.model.compute_dtype) * jax.device_count()
    last: dict = {}
    writer = SummaryWriter(str(workdir / "tensorboard")) if lead else None
    try:
        with open(workdir / "metrics.jsonl" if lead else os.devnull, "a") as metrics_file, jax.set_mesh(mesh):
            progress = tqdm(range(start_step, cfg.train.steps), initial=start_step, total=cfg.train.steps,
                            desc="train", dynamic_ncols=True, disable=not lead)
            for step in progress:
                started = time.perf_counter()
                batch = to_global(next(batches), mesh)
                waited = time.perf_counter() - started
                state, metrics = step_fn(state, batch)
                if not bool(metrics["finite"]):
                    save(step)  # the state the step returned is the last good one
                    manager.wait_until_finished()
                    raise NonFiniteLoss(f"loss or gradient is not finite at step {step}; the last good state "
                                        f"is saved in {workdir / 'checkpoints'} at step {step}")
                seconds = time.perf_counter() - started
                last = {"step": step + 1, "loss": float(metrics["loss"]), "nll": float(metrics["nll"]),
                        "z_loss": float(metrics["z_loss"]), "grad_norm": float(metrics["grad_norm"]),
                        "learning_rate": float(metrics["learning_rate"]), **modality_losses(metrics),
                        "tokens_per_s": tokens_per_step / seconds, "model_flops_per_s": flops_per_step / seconds,
                        "mfu": flops_per_step / seconds / peak_flops, "data_wait_s": waited, "step_s": seconds,
                        "examples_truncated": stats.truncated, "examples_dropped": stats.dropped}
                if (step + 1) % cfg.train.eval_every == 0 or step + 1 == cfg.train.steps:
                    started = time.perf_counter()
                    last.update(held_out_loss(graphdef, state["params"]))
                    if evaluator is not None:
                        last.update(evaluator(graphdef, state["params"]))
                    last["eval/seconds"] = time.perf_counter() - started
                    log(f"step {step + 1} eval: " + ", ".join(
                        f"{k.removeprefix('eval/')} {v:.3f}" for k, v in last.items() if k.startswith("eval/")))
                metrics_file.write(json.dumps(last) + "\n")
                metrics_file.flush()  # a line per step, readable while the run goes on
                for name, value in last.items():
                    if writer is not None and name != "step" and np.isscalar(value):
                        writer.add_scalar(name if "/" in name else f"train/{name}", value, step + 1)
                progress.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}",
                                     mfu=f"{last['mfu']:.0%}")
                preempted = stop(step + 1)
                if (step + 1) % cfg.train.checkpoint_every == 0 or step + 1 == cfg.train.steps or preempted:
                    save(step + 1)
                if preempted:
                    log(f"SIGTERM: saved step {step + 1} and stopped")
                    break
    finally:
        if writer is not None:
            writer.close()
        manager.wait_until_finished()
        manager.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return last
