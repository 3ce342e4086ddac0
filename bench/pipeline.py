"""Input pipeline throughput and packing efficiency on the tiny preset, with the trained tokenizers.

    python train.py --config tiny --stage tokenizers   # once, if runs/tiny/tokenizers is missing
    python bench/pipeline.py [--workdir runs/tiny] [--batches 30]

Prints two JSON lines:
  - the pipeline alone: batches/s, tokens/s, packing efficiency (share of positions holding a
    real token), and what it did to examples (tasks, truncated, dropped);
  - the pipeline feeding the tiny LM's jitted forward + backward + SGD update (a stand-in for
    issue 5's AdamW step, which costs slightly more): the share of wall time spent waiting for data.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from checkpoints import load_vocabulary
from configs import get_config
from data.pipeline import PipelineStats, packed_batches, packing_efficiency
from data.world_builder import build_world
from model.loss import cross_entropy
from model.transformer import Transformer


def data_wait(cfg, batches, steps: int) -> dict:
    """Run `steps` training steps fed by `batches`; time blocked in next() against total time."""
    graphdef, params = nnx.split(Transformer(cfg.model, rngs=nnx.Rngs(0)))

    def loss(params, batch):
        logits, _ = nnx.merge(graphdef, params)(batch["inputs"], batch["positions"], batch["segment_ids"])
        return cross_entropy(logits, batch["targets"], batch["loss_mask"], cfg.train.z_loss_weight)[0]

    def step(params, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), value

    step = jax.jit(step, donate_argnums=0)
    fixed = next(batches)
    params, _ = step(params, fixed)  # compile
    jax.block_until_ready(params)
    # The same steps on one fixed batch: what a step costs with no pipeline competing for the cores.
    start = time.perf_counter()
    for _ in range(3):
        params, value = step(params, fixed)
        jax.block_until_ready(value)
    alone = (time.perf_counter() - start) / 3
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - before
        params, value = step(params, batch)
        jax.block_until_ready(value)
    total = time.perf_counter() - start
    return {"steps": steps, "step_s": round(total / steps, 4), "step_s_without_pipeline": round(alone, 4), "data_wait_s_per_step": round(waited / steps, 5),
            "data_wait_fraction": round(waited / total, 4), "loss": round(float(value), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/tiny")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=20)
    args = parser.parse_args()
    cfg = get_config("tiny")
    workdir = Path(args.workdir)
    vocab = load_vocabulary(cfg, workdir)
    source = build_world(str(workdir.absolute() / "data")).as_data_source()["train"]

    stats = PipelineStats()
    batches = iter(packed_batches(source, vocab, cfg.data, 0, 1, stats=stats))
    next(batches)  # first batch: jit of the tokenizers' encoders, file opening
    efficiency, start = [], time.perf_counter()
    for _ in range(args.batches):
        efficiency.append(packing_efficiency(next(batches)))
    seconds = time.perf_counter() - start
    rows_tokens = cfg.data.global_batch_size * cfg.data.seq_len
    print(json.dumps({
        "bench": "pipeline", "preset": cfg.name, "batch": [cfg.data.global_batch_size, cfg.data.seq_len],
        "batches_per_s": round(args.batches / seconds, 2),
        "real_tokens_per_s": round(args.batches * rows_tokens * float(np.mean(efficiency)) / seconds),
        "packing_efficiency": round(float(np.mean(efficiency)), 4),
        "examples": stats.examples, "tasks": stats.tasks, "truncated": stats.truncated, "dropped": stats.dropped,
    }))
    fresh = iter(packed_batches(source, vocab, cfg.data, 0, 1))
    print(json.dumps({"bench": "pipeline_data_wait", "preset": cfg.name, "prefetch": cfg.data.prefetch,
                      **data_wait(cfg, fresh, args.train_steps)}))


if __name__ == "__main__":
    main()
