"""What weight-only int8 decoding costs a trained model: the tiny run's held-out evals, float and int8.

    python bench/int8.py [--workdir runs/tiny] [--examples 200]

Loads the latest checkpoint of `--workdir` (train it first: `python train.py --config tiny`) and
its tokenizers, and scores the model twice through the serving engine, once with its float weights
(in the compute dtype) and once with every matrix int8 with per-channel scales (model/weights.py),
as `serve.py --serve.int8-weights` serves it:
  - the held-out world tasks (training/evaluate.py: caption, transcription, drawing, compositional
    caption; greedy, drawing sampled with the same seeds), as accuracies;
  - teacher-forced over the same prompts, every real position: the int8 logits against the float
    ones (largest and mean absolute difference, mean KL(float || int8) in nats, and the share of
    positions whose most likely next token is the same).
Prints JSON lines; the last one is the summary docs/performance.md quotes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from checkpoints import load_vocabulary, restore_params
from configs import get_config
from data.world_builder import build_world
from model.transformer import forward, prepare_for_decoding
from parallel.sharding import make_mesh
from training.evaluate import Evaluator, world_tasks


@jax.jit
def _logit_gap(float_btv, int8_btv, real_bt):
    """Over real positions: max and mean |difference|, mean KL(float || int8), top-1 agreement."""
    gap_btv = jnp.abs(float_btv - int8_btv)
    p_btv = jax.nn.softmax(float_btv)
    kl_bt = jnp.sum(p_btv * (jax.nn.log_softmax(float_btv) - jax.nn.log_softmax(int8_btv)), axis=-1)
    same_bt = jnp.argmax(float_btv, -1) == jnp.argmax(int8_btv, -1)
    real = real_bt.sum()
    return {"max_abs_logit_diff": jnp.max(jnp.where(real_bt[..., None], gap_btv, 0)),
            "mean_abs_logit_diff": jnp.sum(jnp.where(real_bt[..., None], gap_btv, 0)) / (real * gap_btv.shape[-1]),
            "mean_kl_nats": jnp.sum(jnp.where(real_bt, kl_bt, 0)) / real,
            "top1_agreement": jnp.sum(same_bt & real_bt) / real, "positions": real}


def teacher_forced(graphdef, weights: dict, prompts: list[np.ndarray]) -> dict:
    padded = max(len(p) for p in prompts)
    tokens_bt = np.zeros((len(prompts), padded), np.int32)
    for row, prompt in enumerate(prompts):
        tokens_bt[row, : len(prompt)] = prompt
    segments_bt = (np.arange(padded) < np.array([len(p) for p in prompts])[:, None]).astype(np.int32)
    run = jax.jit(forward, static_argnums=0)
    logits = {name: run(graphdef, state, tokens_bt, None, segments_bt)[0] for name, state in weights.items()}
    return {key: float(value) for key, value in _logit_gap(logits["float"], logits["int8"], segments_bt == 1).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--examples", type=int, default=200, help="held-out examples per task")
    args = parser.parse_args()
    cfg = get_config("tiny")
    mesh = make_mesh(cfg.mesh)
    vocab = load_vocabulary(cfg, args.workdir)
    graphdef, params, step = restore_params(cfg, args.workdir, mesh)
    prepared = {name: prepare_for_decoding(cfg.model, graphdef, params, int8=name == "int8") for name in ("float", "int8")}
    weights = {name: state for name, (_, state) in prepared.items()}
    bytes_of = {name: sum(leaf.nbytes for leaf in jax.tree.leaves(state)) for name, state in weights.items()}
    tasks = world_tasks(build_world(str(args.workdir.absolute() / "data")).as_data_source(), vocab, args.examples)
    accuracy = {}
    for name in weights:
        accuracy[name] = Evaluator(cfg.model, vocab, tasks, mesh, int8_weights=name == "int8")(graphdef, params)
        print(json.dumps({"weights": name, "step": step, "bytes": bytes_of[name], **accuracy[name]}), flush=True)
    gaps = teacher_forced(prepared["float"][0], weights, [prompt for task in tasks for prompt in task.prompts])
    print(json.dumps({"step": step, "examples_per_task": args.examples,
                      "int8_bytes_over_float": bytes_of["int8"] / bytes_of["float"],
                      "accuracy_change": {key: accuracy["int8"][key] - accuracy["float"][key] for key in accuracy["int8"]},
                      **gaps}))


if __name__ == "__main__":
    main()
