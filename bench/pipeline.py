"""Input pipeline throughput and packing efficiency on the tiny preset, with a run's trained tokenizers.

    python train.py --config tiny --stage tokenizers   # once, if runs/tiny/tokenizers is missing
    python bench/pipeline.py [--workdir runs/tiny] [--batches 30]
    python bench/pipeline.py --workdir runs/real --sources manifest:runs/real_data/digits.jsonl:2 ... \
        --seq-len 2048 --rows 64 --compare-media --train-steps 0     # nano1's rows per host, on 1 host

Prints JSON lines:
  - the pipeline alone (one process: what one host reads): batches/s, real tokens/s, packing
    efficiency (share of positions holding a real token), and what it did to examples; on the
    manifests' codes from the encode pass (data/encode.py, run first if they are not current), and
    with `--compare-media` also on their pictures and sound decoded and tokenized per example;
  - the pipeline feeding the tiny LM's jitted forward + backward + SGD update (a stand-in for
    issue 5's AdamW step, which costs slightly more): the share of wall time spent waiting for data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from checkpoints import load_vocabulary
from configs import get_config
from data.mixture import encode_sources, make_sources, open_mixture
from data.pipeline import PipelineStats, packed_batches, packing_efficiency
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


def pipeline_rate(cfg, vocab, mixture, batches: int) -> dict:
    """The pipeline alone, `batches` batches after the first: batches/s, real tokens/s, packing, what it did."""
    stats = PipelineStats()
    stream = iter(packed_batches(mixture.sources, vocab, cfg.data, 0, 1, stats, mixture.weights, mixture.readers))
    next(stream)  # first batch: jit of the tokenizers' encoders, file opening
    efficiency, start = [], time.perf_counter()
    for _ in range(batches):
        efficiency.append(packing_efficiency(next(stream)))
    seconds = time.perf_counter() - start
    rows_tokens = cfg.data.global_batch_size * cfg.data.seq_len
    return {"batch": [cfg.data.global_batch_size, cfg.data.seq_len], "batches_per_s": round(batches / seconds, 2),
            "real_tokens_per_s": round(batches * rows_tokens * float(np.mean(efficiency)) / seconds),
            "packing_efficiency": round(float(np.mean(efficiency)), 4), "examples": stats.examples,
            "tasks": stats.tasks, "truncated": stats.truncated, "dropped": stats.dropped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/tiny")
    parser.add_argument("--sources", nargs="*", default=None, help="data.sources (default: the preset's, the world)")
    parser.add_argument("--seq-len", type=int, default=None, help="rows of this many tokens (default: the preset's)")
    parser.add_argument("--rows", type=int, default=None, help="rows per batch (default: the preset's global batch)")
    parser.add_argument("--compare-media", action="store_true",
                        help="also read the manifests' media (as before the encode pass) and report both")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=20)
    args = parser.parse_args()
    cfg = get_config("tiny")
    data = dataclasses.replace(cfg.data, **{k: v for k, v in (("sources", tuple(args.sources or ())),
                                                               ("seq_len", args.seq_len),
                                                               ("global_batch_size", args.rows)) if v})
    cfg = dataclasses.replace(cfg, data=data, model=dataclasses.replace(cfg.model, max_seq_len=max(
        cfg.model.max_seq_len, data.seq_len)))
    workdir = Path(args.workdir)
    vocab = load_vocabulary(cfg, workdir)
    make_sources(cfg.data, workdir, log=lambda message: None)
    started = time.perf_counter()
    encode_sources(cfg, workdir, vocab, log=lambda message: None)
    encode_s = time.perf_counter() - started
    for raw in ((False, True) if args.compare_media else (False,)):
        mixture = open_mixture(cfg, workdir, "train", raw=raw)
        print(json.dumps({"bench": "pipeline", "preset": cfg.name, "sources": list(cfg.data.sources),
                          "media": "decoded per example" if raw else "codes (encode pass)",
                          **({"encode_pass_s": round(encode_s, 1)} if not raw else {}),
                          **pipeline_rate(cfg, vocab, mixture, args.batches)}))
    if args.train_steps and cfg.data.seq_len <= get_config("tiny").model.max_seq_len:
        mixture = open_mixture(cfg, workdir, "train")
        fresh = iter(packed_batches(mixture.sources, vocab, cfg.data, 0, 1, None, mixture.weights, mixture.readers))
        print(json.dumps({"bench": "pipeline_data_wait", "preset": cfg.name, "prefetch": cfg.data.prefetch,
                          **data_wait(cfg, fresh, args.train_steps)}))


if __name__ == "__main__":
    main()
