"""Held-out video caption accuracy of a run's checkpoint, by the clip's event; prints one JSON line.

    python bench/video_events.py --workdir runs/tiny [--stage lm] [--examples 200]

Asks the eval's video caption tasks (validation and compositional clips, training/evaluate.py)
through the serving engine, greedy, and groups the answers by what happens in the clip (moves,
turns, appears): exact match, the shapes it names, and the motion. Where the eval's one figure
says how many captions are right, this says which kind of clip the model cannot yet describe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from checkpoints import load_vocabulary, restore_params
from configs import get_config
from data import world
from data.mixture import world_splits
from parallel.sharding import make_mesh
from serving.engine import Engine
from tokenization.text import EOS
from training.evaluate import answer_segments, answers, world_tasks


def by_event(texts: list[str], references: list[str]) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for text, reference in zip(texts, references):
        event, shapes, change = world.parse_clip_caption(reference)
        said = world.parse_clip_caption(text)
        row = counts.setdefault(event, {"clips": 0, "exact": 0, "shapes": 0, "motion": 0})
        row["clips"] += 1
        row["exact"] += text == reference
        row["shapes"] += said is not None and said[1] == shapes
        row["motion"] += said is not None and (said[0], said[2]) == (event, change)
    return {event: {"clips": row["clips"], **{k: round(row[k] / row["clips"], 3) for k in ("exact", "shapes", "motion")}}
            for event, row in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--stage", default="lm", choices=("lm", "sft"))
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args()
    cfg = get_config(args.config)
    vocab, mesh = load_vocabulary(cfg, args.workdir), make_mesh(cfg.mesh)
    graphdef, params, step = restore_params(cfg, args.workdir, mesh, args.stage)
    tasks = [task for task in world_tasks(world_splits(args.workdir), vocab, args.examples) if "video" in task.name]
    engine = Engine(cfg.model, graphdef, params, mesh, 128, cfg.data.seq_len, eos_id=vocab.ids[EOS],
                    real_vocab=vocab.real_size, is_token=vocab.is_token())
    report = {"workdir": str(args.workdir), "stage": args.stage, "step": step}
    for task in tasks:
        said = [answer_segments(vocab, generated) for generated in answers(engine, task, vocab)]
        texts = [s[0].text if len(s) == 1 and hasattr(s[0], "text") else "" for s in said]
        report[task.name] = by_event(texts, task.references)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
