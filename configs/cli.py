"""Command line -> Config: `--config PRESET` picks a preset, tyro overrides any field of it.

    python train.py --config tiny --model.num-layers 2 --train.learning-rate 1e-3

Flags that are not config fields (a script's `--workdir`, `--stage`) are declared by the script
and parsed beside `--config`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Literal

import tyro

from configs import PRESETS, Config, get_config


def parse(argv: list[str] | None = None, prog: str | None = None, flags: dict[str, dict] | None = None,
          program: Literal["train", "serve"] = "train") -> tuple[Config, argparse.Namespace]:
    """(config, the script's own flags). `flags` maps e.g. "--workdir" to argparse keyword arguments.

    A script flag `--topology` picks the preset's plan for that TPU slice (its `program`'s), under
    the overrides."""
    argv = sys.argv[1:] if argv is None else list(argv)
    own = argparse.ArgumentParser(add_help=False, prog=prog)
    own.add_argument("--config", default="tiny", help=f"preset: one of {sorted(PRESETS)}")
    for flag, kwargs in (flags or {}).items():
        own.add_argument(flag, **kwargs)
    known, rest = own.parse_known_args(argv)
    if known.config not in PRESETS:
        own.error(f"--config: unknown preset {known.config!r}; choose from {sorted(PRESETS)}")
    script_flags = "; ".join(f"{flag}: {kwargs.get('help', '')}" for flag, kwargs in (flags or {}).items())
    description = (f"Preset {known.config!r} (choose with --config: {', '.join(PRESETS)}); every field below "
                   f"overrides it. {script_flags}")
    default = get_config(known.config, getattr(known, "topology", None), program)
    cfg = tyro.cli(Config, default=default, args=rest, prog=prog, description=description)
    return cfg, known
