"""Every preset on every TPU slice it has a plan for: the train and decode steps compiled for the slice
on this machine (no TPU needed; the `tpu` extra), one per process.

    python bench/pod_fit.py [--presets nano1 pro] [--markdown]

Prints one JSON line per (preset, program, slice): the report of `train.py` / `serve.py
--compile-only --topology SLICE` (parallel/aot.py) plus the wall-clock seconds the compile took;
`--markdown` then prints the table in docs/pod-scale.md. Exits non-zero if any plan does not fit with 10% of
HBM to spare. Takes minutes: the largest presets compile for 512 chips.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from configs import PRESETS, plans

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train": "train.py", "serve": "serve.py"}


def compile_plan(preset: str, program: str, topology: str) -> dict:
    command = [sys.executable, str(ROOT / SCRIPTS[program]), "--config", preset, "--compile-only", "--topology", topology]
    started = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    reports = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    if not reports:
        return {"preset": preset, "program": program, "topology": topology, "fits_with_margin": False,
                "error": (run.stderr.strip().splitlines() or ["no output"])[-1][:500], "compile_s": seconds}
    return {**reports[-1], "compile_s": seconds}


def markdown(rows: list[dict]) -> str:
    lines = ["| preset | program | slice | mesh | per-chip HBM used / capacity | spare | FLOPs per chip per step "
             "(XLA / analytic) | step lower bound | MFU ceiling |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['preset']} | {row['program']} | {row['topology']} | | failed: {row['error']} |"
                         " | | | |")
            continue
        mesh = " x ".join(f"{axis} {size}" for axis, size in row["mesh"].items() if size > 1) or "one chip"
        memory = row["per_chip_gib"]
        flops = row["flops_per_chip"]
        lines.append(f"| {row['preset']} | {row['program']} | {row['topology']} | {mesh} | "
                     f"{memory['total']:.2f} / {memory['capacity']:.2f} GiB | {row['spare']:.0%} | "
                     f"{flops['xla']:.3g} / {flops['analytic']:.3g} | {row['step_lower_bound_s'] * 1e3:.1f} ms | "
                     f"{row['mfu_ceiling']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=[name for name in PRESETS if name != "tiny"])
    parser.add_argument("--markdown", action="store_true", help="also print the table of docs/pod-scale.md")
    args = parser.parse_args()
    rows = []
    for preset in args.presets:
        for program in ("train", "serve"):
            for topology in plans(preset, program):
                rows.append(compile_plan(preset, program, topology))
                print(json.dumps(rows[-1]), flush=True)
    if args.markdown:
        print(markdown(rows))
    sys.exit(0 if all(row["fits_with_margin"] for row in rows) else 1)


if __name__ == "__main__":
    main()
