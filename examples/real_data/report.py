"""The real-data recipe's figures, on every held-out record of a trained run.

    python examples/real_data/report.py --workdir runs/real --data runs/real_data

Restores the run's latest weights and tokenizers and measures, through the same code as the
training's evals (training/evaluate.py):
  - digits: caption accuracy (exact) on every held-out scan;
  - speech: transcription accuracy (the whole sequence exact) and per-digit accuracy (1 - the
    word error rate: each digit is a word) on every held-out clip;
  - what the audio tokenizer's round trip keeps: every held-out clip's codes decoded to a waveform
    (its vocoder: the mel decoder and Griffin-Lim), encoded again and transcribed by the model, as
    accuracy beside the clips' own (the tokenizer stage has no recognizer of speech to ask);
  - code: bits per byte on every held-out chunk, beside `gzip -9` and `xz -9` on the same modules.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np

from checkpoints import load_vocabulary, restore_params
from configs import get_config
from data.mixture import open_mixture
from parallel.sharding import make_mesh
from training.evaluate import Evaluator, HeldOutLoss, Task, source_tasks

SOURCES = ("digits.jsonl:2", "speech.jsonl:2", "code.jsonl:1")  # the recipe's mixture (README)


def compressed_bits_per_byte(files: list[Path], command: list[str]) -> float:
    """Total compressed bits over total bytes, each file compressed alone by `command` (stdin -> stdout)."""
    original = compressed = 0
    for path in files:
        data = path.read_bytes()
        original += len(data)
        compressed += len(subprocess.run(command, input=data, capture_output=True, check=True).stdout)
    return 8 * compressed / original


def round_trip(tasks: list[Task], vocab) -> Task:
    """The held-out speech task with each clip's codes replaced by those of its decoded waveform."""
    speech = next(task for task in tasks if task.name == "speech/transcription")
    start, end = vocab.ids["<boa>"], vocab.ids["<eoa>"]
    prompts = []
    for prompt in speech.prompts:
        first, last = int(np.nonzero(prompt == start)[0][0]) + 1, int(np.nonzero(prompt == end)[0][0])
        codes = prompt[first:last] - vocab.audio_offset
        again = vocab.audio.encode(vocab.audio.decode(codes)) + vocab.audio_offset
        prompts.append(np.concatenate([prompt[:first], again, prompt[last:]]).astype(np.int32))
    return dataclasses.replace(speech, name="speech/round_trip_transcription", prompts=prompts)


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

    tasks = source_tasks(held_out, vocab, everything)
    metrics = Evaluator(cfg.model, vocab, tasks + [round_trip(tasks, vocab)], mesh)(graphdef, params)
    losses = HeldOutLoss(held_out, vocab, cfg.data, mesh, everything)(graphdef, params)
    modules = [Path(line) for line in (args.data / "held_out_modules.txt").read_text().split()]
    report = {
        "step": step,
        "digit_caption_accuracy": metrics["eval/digits/caption_accuracy"],
        "digits_held_out": len(held_out.sources["digits"]),
        "spoken_digits_sequence_accuracy": metrics["eval/speech/transcription_accuracy"],
        "spoken_digits_per_digit_accuracy": 1 - metrics["eval/speech/transcription_word_error_rate"],
        "clips_held_out": len(held_out.sources["speech"]),
        "round_tripped_clips_sequence_accuracy": metrics["eval/speech/round_trip_transcription_accuracy"],
        "round_tripped_clips_per_digit_accuracy": 1 - metrics["eval/speech/round_trip_transcription_word_error_rate"],
        "code_bits_per_byte": losses["eval/code/text_bits_per_byte"],
        "code_gzip_9_bits_per_byte": compressed_bits_per_byte(modules, ["gzip", "-9", "-c"]),
        "code_xz_9_bits_per_byte": compressed_bits_per_byte(modules, ["xz", "-9", "-c"]),
        "code_chunks_held_out": len(held_out.sources["code"]),
        "code_modules_held_out": len(modules),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}))


if __name__ == "__main__":
    main()
