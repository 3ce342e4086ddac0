"""A trained run's held-out accuracies on more examples than its in-run eval scores.

    python bench/accuracy.py --workdir runs/tiny --stage lm  [--examples 250]
    python bench/accuracy.py --workdir runs/tiny --stage sft [--examples 250] [--conversations 1000]

The in-run eval (train.eval_examples, 200) must stay short: the tiny SFT stage has six minutes in
all. But 200 held-out conversations hold only 40 DTMF clips, 2.5 points an answer, too coarse to
tell whether a turn-1 transcript is within 3 points of the LM's. This scores the same tasks
(training/evaluate.py's held_out_tasks), built the same way, on as many as asked: `--examples`
of each pre-training task (the world's validation split holds 250 of each kind) and, for SFT,
the model's turns of the first `--conversations` held-out conversations (a fifth of them clips).
Prints one JSON line: the stage, its step, each task's number of answers and each accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

from checkpoints import load_vocabulary, restore_params
from configs import get_config
from data.mixture import open_mixture, world_splits
from parallel.sharding import make_mesh
from training.evaluate import Evaluator, held_out_tasks
from training.lm_stage import stage_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--stage", choices=("lm", "sft"), default="sft")
    parser.add_argument("--examples", type=int, default=250, help="held-out examples of each pre-training task")
    parser.add_argument("--conversations", type=int, default=1000, help="held-out conversations (SFT)")
    args = parser.parse_args()
    cfg = stage_config(get_config(args.config), args.stage)
    mesh = make_mesh(cfg.mesh)
    graphdef, params, step = restore_params(cfg, args.workdir, mesh, args.stage)
    vocab = load_vocabulary(cfg, args.workdir)
    tuning = args.stage == "sft"
    held_out = open_mixture(cfg, args.workdir, "validation", conversations=tuning,
                            replay=cfg.sft.replay if tuning else 0.0)
    world = world_splits(args.workdir) if "world" in held_out.source_of.values() else None
    tasks = held_out_tasks(held_out, vocab, args.examples, world, args.conversations if tuning else 0, cfg.data.seed)
    started = time.perf_counter()
    metrics = Evaluator(cfg.model, vocab, tasks, mesh)(graphdef, params)
    print(json.dumps({"bench": "accuracy", "stage": args.stage, "step": step,
                      "answers": {task.name: len(task.prompts) for task in tasks},
                      **{name: round(value, 4) for name, value in metrics.items()},
                      "eval_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
