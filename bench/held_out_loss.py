"""What the per-source held-out loss costs an eval, and what it reads, on a trained run.

    python bench/held_out_loss.py --workdir runs/tiny [--config tiny] [--examples 64]

Restores the run's latest parameters and tokenizers, builds the held-out rows of every source in
`data.sources` (training/evaluate.py, HeldOutLoss) and measures them twice (the first call
compiles). Prints one JSON line: seconds to build the rows, rows per source, seconds of the first
and of the second eval, and the metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from checkpoints import load_vocabulary, restore_params
from configs import get_config
from data.mixture import open_mixture
from parallel.sharding import make_mesh
from training.evaluate import HeldOutLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--examples", type=int, default=None, help="held-out records per stream (default: the config's)")
    args = parser.parse_args()
    cfg = get_config(args.config)
    if args.examples:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_loss_examples=args.examples))
    mesh = make_mesh(cfg.mesh)
    graphdef, params, step = restore_params(cfg, args.workdir, mesh)
    vocab = load_vocabulary(cfg, args.workdir)
    started = time.perf_counter()
    held_out = HeldOutLoss(open_mixture(cfg, args.workdir, "validation"), vocab, cfg.data, mesh,
                           cfg.train.eval_loss_examples)
    built = time.perf_counter() - started
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        metrics = held_out(graphdef, params)
        seconds.append(time.perf_counter() - started)
    rows = {name: sum(len(b["inputs"]) for b in batches) for name, (batches, _) in held_out.sources.items()}
    print(json.dumps({"bench": "held_out_loss", "step": step, "examples_per_stream": cfg.train.eval_loss_examples,
                      "rows": rows, "build_s": round(built, 2), "first_eval_s": round(seconds[0], 2),
                      "eval_s": round(seconds[1], 2), **{k: round(v, 4) for k, v in metrics.items()}}))


if __name__ == "__main__":
    main()
