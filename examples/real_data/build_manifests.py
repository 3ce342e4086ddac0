"""Three real corpora that need no download, as manifests (data/manifest.py) for `train.py --data.sources`.

    python examples/real_data/build_manifests.py --out runs/real_data     # needs espeak-ng and the `examples` extra

    digits.jsonl   the 1,797 handwritten digit scans bundled with scikit-learn (8x8, 17 grey levels),
                   each captioned with its digit ("7"); every fifth scan held out (20%)
    speech.jsonl   three or four spoken digits ("3 1 4") synthesised by espeak-ng in several voices,
                   speeds and pitches; the held-out clips speak sequences no training clip speaks
    code.jsonl     the Python standard library's own modules as text, in chunks of about
                   `--chunk-chars` characters cut at line ends; every tenth module (by name) held
                   out whole, listed in held_out_modules.txt

Every line pins its split, so the held-out parts are fixed whatever `data.prepare` is told.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")


def digits(out: Path) -> dict:
    scans = load_digits()
    folder = out / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (pixels, label) in enumerate(zip(scans.images, scans.target)):
        path = folder / f"{index:04d}.png"
        Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8), mode="L").save(path)
        lines.append({"image": f"digits/{path.name}", "caption": str(int(label)),
                      "split": "validation" if index % 5 == 0 else "train"})
    return _write(out / "digits.jsonl", lines)


def speech(out: Path, train: int, held_out: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    every = [tuple(int(d) for d in f"{n:0{k}d}") for k in (3, 4) for n in range(10**k)]
    order = rng.permutation(len(every))
    unseen = {every[i] for i in order[:held_out]}
    seen = [every[i] for i in order[held_out:]]
    folder = out / "speech"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    clips = [(s, "validation") for s in sorted(unseen)] + [(seen[int(i)], "train") for i in rng.permutation(len(seen))[:train]]
    for index, (sequence, split) in enumerate(clips):
        voice, speed, pitch = VOICES[rng.integers(len(VOICES))], int(rng.integers(130, 201)), int(rng.integers(25, 76))
        path = folder / f"{index:05d}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path),
                        " ".join(DIGIT_WORDS[d] for d in sequence)], check=True)
        lines.append({"audio": f"speech/{path.name}", "transcript": " ".join(map(str, sequence)), "split": split})
    return _write(out / "speech.jsonl", lines)


def code(out: Path, chunk_chars: int) -> dict:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    modules = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith(("test", "_")))
    held_out = [m for i, m in enumerate(modules) if i % 10 == 0]
    (out / "held_out_modules.txt").write_text("".join(f"{m}\n" for m in held_out))
    lines = []
    for module in modules:
        split = "validation" if module in held_out else "train"
        chunk = ""
        for line in module.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
            if chunk and len(chunk) + len(line) > chunk_chars:
                lines.append({"text": chunk, "split": split})
                chunk = ""
            chunk += line
        if chunk.strip():
            lines.append({"text": chunk, "split": split})
    return _write(out / "code.jsonl", [line for line in lines if line["text"].strip()])


def _write(path: Path, lines: list[dict]) -> dict:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    splits = [line["split"] for line in lines]
    return {"manifest": str(path), "train": splits.count("train"), "validation": splits.count("validation")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/real_data"))
    parser.add_argument("--speech-train", type=int, default=4000, help="training clips")
    parser.add_argument("--speech-held-out", type=int, default=200, help="held-out clips, each an unseen sequence")
    parser.add_argument("--chunk-chars", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for made in (digits(args.out), speech(args.out, args.speech_train, args.speech_held_out, args.seed),
                 code(args.out, args.chunk_chars)):
        print(json.dumps(made))


if __name__ == "__main__":
    main()
