"""Input pipeline throughput and packing efficiency on the tiny preset, with the trained tokenizers.

    python train.py --config tiny --stage tokenizers   # once, if runs/tiny/tokenizers is missing
    python bench/pipeline.py [--workdir runs/tiny] [--batches 30]

Prints one JSON line: batches/s, tokens/s, packing efficiency (share of positions holding a real
token), and what the pipeline did to examples (tasks, truncated, dropped).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from configs import get_config
from data.pipeline import PipelineStats, packed_batches, packing_efficiency
from data.world_builder import build_world
from training.tokenizer_stage import load_vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/tiny")
    parser.add_argument("--batches", type=int, default=30)
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


if __name__ == "__main__":
    main()
