"""Command line -> Config: `--config PRESET` picks a preset, tyro overrides any field of it.

    python train.py --config tiny --model.num-layers 2 --train.learning-rate 1e-3
"""

from __future__ import annotations

import argparse
import sys

import tyro

from configs import PRESETS, Config, get_config


def parse(argv: list[str] | None = None, prog: str | None = None) -> Config:
    argv = sys.argv[1:] if argv is None else list(argv)
    preset_parser = argparse.ArgumentParser(add_help=False)
    preset_parser.add_argument("--config", default="tiny", help=f"preset: one of {sorted(PRESETS)}")
    known, rest = preset_parser.parse_known_args(argv)
    if known.config not in PRESETS:
        preset_parser.error(f"--config: unknown preset {known.config!r}; choose from {sorted(PRESETS)}")
    description = f"Preset {known.config!r} (choose with --config: {', '.join(PRESETS)}); every field below overrides it."
    return tyro.cli(Config, default=get_config(known.config), args=rest, prog=prog, description=description)
