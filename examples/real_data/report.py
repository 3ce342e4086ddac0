"""The real-data recipe's figures, on every held-out record of a trained run.

    python examples/real_data/report.py --workdir runs/real --data runs/real_data

Restores the run's latest weights and tokenizers and measures, through the same code as the
training's evals (training/evaluate.py):
  - digits: caption accuracy (exact) on every held-out scan;
  - speech: transcription accuracy (the whole sequence exact) and per-digit accuracy (1 - the
    word error rate: each digit is a word) on every held-out clip;
  - code: bits per byte on every held-out chunk, beside `gzip -9` and `xz -9` on the same modules.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from pathlib import Path

from checkpoints import load_vocabulary, restore_params
from configs import get_config
from data.mixture import open_mixture
from parallel.sharding import make_mesh
from training.evaluate import Evaluator, HeldOutLoss, source_tasks

SOURCES = ("digits.jsonl:2", "speech.jsonl:2", "code.jsonl:1")  # the recipe's mixture (README)


def compressed_bits_per_byte(files: list[Path], command: list[str]) -> float:
    """Total compressed bits over total bytes, each file compressed alone by `command` (stdin -> stdout)."""
    original = compressed = 0
    for path in files:
        data = path.read_bytes()
        original += len(data)
        compressed += len(subprocess.run(command, input=data, capture_output=True, check=True).stdout)
    return 8 * compressed / original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/real"))
    parser.add_argument("--data", type=Path, default=Path("runs/real_data"))
    args = parser.parse_args()
    cfg = get_config("tiny")
    sources = tuple(f"manifest:{args.data.absolute()}/{source}" for source in SOURCES)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=sources))
    mesh = make_mesh(cfg.mesh)
    graphdef, params, step = restore_params(cfg, args.workdir, mesh)
    vocab = load_vocabulary(cfg, args.workdir)
    held_out = open_mixture(cfg, args.workdir, "validation")
    everything = max(len(source) for source in held_out.sources.values())

    metrics = Evaluator(cfg.model, vocab, source_tasks(held_out, vocab, everything), mesh)(graphdef, params)
    losses = HeldOutLoss(held_out, vocab, cfg.data, mesh, everything)(graphdef, params)
    modules = [Path(line) for line in (args.data / "held_out_modules.txt").read_text().split()]
    report = {
        "step": step,
        "digit_caption_accuracy": metrics["eval/digits/caption_accuracy"],
        "digits_held_out": len(held_out.sources["digits"]),
        "spoken_digits_sequence_accuracy": metrics["eval/speech/transcription_accuracy"],
        "spoken_digits_per_digit_accuracy": 1 - metrics["eval/speech/transcription_word_error_rate"],
        "clips_held_out": len(held_out.sources["speech"]),
        "code_bits_per_byte": losses["eval/code/text_bits_per_byte"],
        "code_gzip_9_bits_per_byte": compressed_bits_per_byte(modules, ["gzip", "-9", "-c"]),
        "code_xz_9_bits_per_byte": compressed_bits_per_byte(modules, ["xz", "-9", "-c"]),
        "code_chunks_held_out": len(held_out.sources["code"]),
        "code_modules_held_out": len(modules),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}))


if __name__ == "__main__":
    main()
