"""The LM stage: train the decoder on the packed pipeline, checkpointing and logging as it goes.

    <workdir>/checkpoints/<step>/   orbax: train state, data iterator state, resolved config
    <workdir>/metrics.jsonl         one JSON object per step; eval steps add `eval/...` accuracies
    <workdir>/tensorboard/          the same scalars as TensorBoard event files

Re-running the same command resumes from the latest checkpoint (model, optimizer, step and the
data iterator together), first dropping the metrics (and TensorBoard events) of the steps a crash
lost. SIGTERM (a TPU preemption notice) saves and returns metrics marked `"preempted": True`
(train.py then exits 143). A NaN or inf loss, gradient or updated parameters stop the run naming the
step and what was not finite, the last good state on disk. A checkpoint whose background write fails
stops the run at the next step, naming it.

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

from checkpoints import CHECKPOINT_ITEMS, restore_params
from configs.base import Config
from data.pipeline import PipelineStats, packed_batches, to_global
from data.mixture import encode_sources, make_sources, open_mixture, world_splits
from data.vocab import Vocabulary
from model.costs import train_flops_per_token
from model.transformer import init_model
from open_weights.load import describe, hf_folder, import_model
from parallel.hardware import matmul_peak_flops
from parallel.sharding import make_mesh
from training.evaluate import Evaluator, HeldOutLoss, held_out_tasks
from training.train_step import init_opt_state, make_optimizer, modality_losses, train_step


class NonFiniteLoss(RuntimeError):
    pass


class CheckpointFailed(RuntimeError):
    pass


def keep_metrics_through(path: Path, step: int) -> None:
    """Drop the rows of `metrics.jsonl` past `step`: a run that crashed after its last checkpoint wrote
    them, and the resumed run writes those steps again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError):
            pass  # a row the crash cut short
    path.with_suffix(".tmp").write_text("".join(kept))
    path.with_suffix(".tmp").replace(path)  # whole, even if this run is killed meanwhile


def stage_config(cfg: Config, stage: str = "lm") -> Config:
    """What a stage trains with: the LM stage, `cfg` itself; SFT, `cfg` with SFT's steps, schedule,
    checkpoint and eval intervals, and mixture (configs/base.py's SFTConfig)."""
    if stage == "lm":
        return cfg
    sft = cfg.sft
    train = dataclasses.replace(cfg.train, steps=sft.steps, learning_rate=sft.learning_rate,
                                warmup_steps=sft.warmup_steps, checkpoint_every=sft.checkpoint_every,
                                eval_every=sft.eval_every)
    return dataclasses.replace(cfg, train=train, data=dataclasses.replace(cfg.data, sources=sft.sources))


def train_lm(cfg: Config, workdir: Path, vocab: Vocabulary, world: dict | None = None,
             log: Callable[[str], None] = print, stage: str = "lm") -> dict:
    """Train to `cfg.train.steps`, resuming from `workdir` if it holds a checkpoint; returns the last metrics,
    with `"preempted": True` when SIGTERM stopped the run short of them (its checkpoint saved).

    `stage="sft"` instruction-tunes instead (`cfg.sft`): the world's conversations and the SFT
    mixture's manifests, starting from the LM's latest checkpoint (this run's, or `sft.init_from`'s;
    parameters only, a fresh optimiser), its own checkpoints, metrics and TensorBoard under
    <workdir>/sft/, resumable in the same way.

    The data are the mixture `cfg.data.sources` names (data/mixture.py). `world` holds the world's
    "train", "validation" and "compositional" data sources when it is not the default one under
    `<workdir>/data` (tests use small worlds); the held-out evals read the last two.
    """
    workdir = Path(workdir).absolute()
    lm_cfg, cfg = cfg, stage_config(cfg, stage)
    out = workdir if stage == "lm" else workdir / "sft"  # checkpoints, metrics, TensorBoard
    out.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0  # one process speaks for all: they hold the same metrics
    log = log if lead else (lambda message: None)
    # Process 0 generates the world, prepares manifests and encodes their media first: on a shared
    # workdir the others would race it.
    if lead:
        make_sources(cfg.data, workdir, log, world=world is None)
        encode_sources(cfg, workdir, vocab, log)
    multihost_utils.sync_global_devices("data sources made")
    conversations = stage == "sft"
    replay = cfg.sft.replay if conversations else 0.0
    train = open_mixture(cfg, workdir, "train", world, conversations=conversations, replay=replay)
    held_out = open_mixture(cfg, workdir, "validation", world, conversations=conversations, replay=replay)
    mesh = make_mesh(cfg.mesh)
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.train.keep_checkpoints, enable_async_checkpointing=True)
    manager = ocp.CheckpointManager(out / "checkpoints", options=options, item_names=CHECKPOINT_ITEMS)
    if stage == "sft" and manager.latest_step() is None:  # SFT starts from the pre-trained LM
        lm_run = Path(cfg.sft.init_from or workdir)
        graphdef, params, lm_step = restore_params(lm_cfg, lm_run, mesh)
        log(f"SFT starts from the LM checkpoint at step {lm_step} of {lm_run / 'checkpoints'}")
    elif cfg.train.init_from and manager.latest_step() is None:  # the LM starts from open weights
        folder = hf_folder(cfg.train.init_from)
        graphdef, params = import_model(folder, cfg.model, mesh, cfg.train.seed)
        log(f"LM starts from the {describe(folder, cfg.model)}")
    else:
        graphdef, model_state = init_model(cfg.model, mesh, cfg.train.seed)
        params = nnx.state(nnx.merge(graphdef, model_state), nnx.Param)
    tx = make_optimizer(cfg.train)
    with jax.set_mesh(mesh):
        state = {"params": params, "opt_state": init_opt_state(tx, params, mesh), "step": jnp.zeros((), jnp.int32)}
        step_fn = jax.jit(train_step(graphdef, tx, cfg.train), donate_argnums=0)

    stats = PipelineStats()
    batches = iter(packed_batches(train.sources, vocab, cfg.data, stats=stats, weights=train.weights,
                                  readers=train.readers))
    with_world = "world" in train.source_of.values()
    tasks = held_out_tasks(held_out, vocab, cfg.train.eval_examples, (world or world_splits(workdir)) if with_world else None,
                           cfg.train.eval_examples if conversations else 0, cfg.data.seed)
    evaluator = Evaluator(cfg.model, vocab, tasks, mesh) if tasks else None
    held_out_loss = HeldOutLoss(held_out, vocab, cfg.data, mesh, cfg.train.eval_loss_examples)

    start_step = 0
    if manager.latest_step() is not None:
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state), data=grain.checkpoint.CheckpointRestore(batches)))
        state, start_step = restored["state"], int(restored["state"]["step"])
        log(f"resumed from {out / 'checkpoints'} at step {start_step} of {cfg.train.steps}")

    writing = None  # the step of the checkpoint orbax is writing in the background

    def save(step: int) -> None:
        nonlocal writing
        check_written(wait=True)
        manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(batches),
            config=ocp.args.JsonSave(dataclasses.asdict(cfg))))
        writing = step

    def check_written(wait: bool = False) -> None:
        """Raise CheckpointFailed if the last checkpoint's background write failed. Called every step
        without waiting, so a full disk stops the run at once rather than at the next save."""
        nonlocal writing
        if writing is None or (not wait and manager.is_saving_in_progress()):
            return
        step, writing = writing, None
        try:
            manager.wait_until_finished()  # no wait when the write is over; raises its error
        except Exception as error:
            raise CheckpointFailed(f"the checkpoint at step {step} could not be written to {out / 'checkpoints'}: "
                                   f"{type(error).__name__}: {error}") from error

    def stop_non_finite(step: int, metrics: dict) -> NonFiniteLoss:
        """The error for a non-finite step `step` (from 0), having left the last good state on disk.

        The step kept its input, the state after `step` steps. If only its update overflowed, that
        state's own loss and gradient were finite: it is saved, unless it already is (its data iterator
        is past this step's batch). Otherwise that state is the bad one: a checkpoint of it, made just
        before this step, is dropped (unless it is the only one) so that a re-run resumes from a good one.
        """
        bad = {name: float(metrics[name]) for name in ("loss", "grad_norm", "param_norm")
               if not np.isfinite(metrics[name])}
        kept_is_good = list(bad) == ["param_norm"]
        check_written(wait=True)
        if kept_is_good and step not in manager.all_steps():
            save(step)
            check_written(wait=True)
        elif not kept_is_good and step in manager.all_steps() and len(manager.all_steps()) > 1:
            manager.delete(step)
        good = [saved for saved in manager.all_steps() if saved < step or kept_is_good]
        names = {"loss": "loss", "grad_norm": "gradient norm", "param_norm": "parameter norm"}
        what = " and ".join(f"the {names[name]} is {value}" for name, value in bad.items())
        where = (f"the last good state is the checkpoint at step {max(good)} in {out / 'checkpoints'}"
                 if good else f"no earlier checkpoint is kept (train.keep_checkpoints={cfg.train.keep_checkpoints})")
        return NonFiniteLoss(f"step {step + 1}: {what}; stopped, {where}")

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
    writer = None
    if lead:
        keep_metrics_through(out / "metrics.jsonl", start_step)
        # TensorBoard drops the events at or past purge_step that earlier files hold: the lost steps'.
        writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1)
    try:
        with open(out / "metrics.jsonl" if lead else os.devnull, "a") as metrics_file, jax.set_mesh(mesh):
            progress = tqdm(range(start_step, cfg.train.steps), initial=start_step, total=cfg.train.steps,
                            desc=stage, dynamic_ncols=True, disable=not lead)
            for step in progress:
                check_written()
                started = time.perf_counter()
                batch = to_global(next(batches), mesh)
                waited = time.perf_counter() - started
                state, metrics = step_fn(state, batch)
                if not bool(metrics["finite"]):
                    raise stop_non_finite(step, metrics)
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
                    log(f"SIGTERM: preempted, saved step {step + 1} and stopped")
                    if step + 1 < cfg.train.steps:
                        last["preempted"] = True
                    break
            check_written(wait=True)
    finally:
        if writer is not None:
            writer.close()
        manager.wait_until_finished()
        manager.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return last
