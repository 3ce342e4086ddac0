"""Train the model: `python train.py --config tiny [--workdir runs/tiny] [--stage all] [--train.steps 300 ...]`.

Stages, in order (`--stage all` runs the tokenizers when they are missing, then the LM):
  tokenizers  SentencePiece, image and audio tokenizers on the procedural world   (training/tokenizer_stage.py)
  lm          the decoder on packed, templated world data: sharded jitted steps,  (training/lm_stage.py)
              orbax checkpoints, metrics.jsonl + TensorBoard, a progress bar and
              held-out evals (training/evaluate.py); re-running resumes
Then a summary of the run: its last losses and eval accuracies, and the wall-clock time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from configs.cli import parse
from model.sharding import make_mesh
from training.lm_stage import train_lm
from training.tokenizer_stage import load_vocabulary, tokenizers_exist, train_tokenizers

FLAGS = {
    "--workdir": dict(default=None, help="where everything goes (default runs/<preset>)"),
    "--stage": dict(default="all", choices=("all", "tokenizers", "lm"), help="which stage to run"),
}


def main() -> None:
    started = time.perf_counter()
    cfg, flags = parse(prog="train.py", flags=FLAGS)
    workdir = Path(flags.workdir or f"runs/{cfg.name}")
    try:  # a mesh that does not fit the devices stops here, naming the field, before any work or compile
        make_mesh(cfg.mesh)
    except ValueError as error:
        sys.exit(f"train.py: {error}")

    if flags.stage == "tokenizers" or (flags.stage == "all" and not tokenizers_exist(workdir)):
        train_tokenizers(cfg, workdir)
    elif flags.stage == "all":
        print(f"tokenizers: found under {workdir}/tokenizers, not retrained")

    if flags.stage in ("all", "lm"):
        last = train_lm(cfg, workdir, load_vocabulary(cfg, workdir))
        if not last:
            print(f"the LM is already trained to train.steps={cfg.train.steps}; raise it to train further")
            return
        summary = {"preset": cfg.name, "wall_clock_s": round(time.perf_counter() - started, 1),
                   **{k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()}}
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print("summary:", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
