"""Train the model: `python train.py --config tiny [--workdir runs/tiny] [--stage all] [--train.steps 300 ...]`.

Stages, in order (`--stage all` runs the tokenizers when they are missing, then the LM):
  tokenizers  SentencePiece, image and audio tokenizers on the procedural world   (training/tokenizer_stage.py)
  lm          the decoder on packed, templated world data, with checkpoints,      (training/lm_stage.py)
              metrics.jsonl and a progress bar; re-running resumes
"""

from __future__ import annotations

import json
from pathlib import Path

from configs.cli import parse
from training.lm_stage import train_lm
from training.tokenizer_stage import load_vocabulary, tokenizers_exist, train_tokenizers

FLAGS = {
    "--workdir": dict(default=None, help="where everything goes (default runs/<preset>)"),
    "--stage": dict(default="all", choices=("all", "tokenizers", "lm"), help="which stage to run"),
}


def main() -> None:
    cfg, flags = parse(prog="train.py", flags=FLAGS)
    workdir = Path(flags.workdir or f"runs/{cfg.name}")
    if flags.stage == "tokenizers" or (flags.stage == "all" and not tokenizers_exist(workdir)):
        train_tokenizers(cfg, workdir)
    elif flags.stage == "all":
        print(f"tokenizers: found under {workdir}/tokenizers, not retrained")
    if flags.stage in ("all", "lm"):
        last = train_lm(cfg, workdir, load_vocabulary(cfg, workdir))
        if last:
            print("last step:", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()}))
        else:
            print(f"the LM is already trained to train.steps={cfg.train.steps}; raise it to train further")


if __name__ == "__main__":
    main()
