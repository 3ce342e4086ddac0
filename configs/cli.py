"""Command line -> (Config, the script's flags), in one tyro call.

    python train.py --config tiny --workdir runs/x --stage lm --model.num-layers 2 --train.learning-rate 1e-3

A script declares its own flags (`--workdir`, `--stage`, ...) as a frozen dataclass whose fields
have defaults (train.py's `TrainFlags`, serve.py's `ServeFlags`). tyro parses them, `--config` and
every field of the chosen preset together, so one `--help` lists them all.

Help text is the docstring under each field: it belongs to that field alone. tyro would read a
`#` comment above a field as the help of that field and of every field right below it, so every
field parsed here has a docstring, which tyro reads first; comments are for readers of the code
(tests/test_configs.py checks that every flag has help and no two flags share it).

The preset, and the TPU slice whose plan applies to it (`--topology`), are the defaults the
override flags start from, so they must be known before tyro builds its parser: their two values
are read from the command line first (`_preset_and_topology`), then tyro parses both flags again
with everything else (and lists them in --help).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Annotated, Generic, Literal, TypeVar

import tyro

from configs import PRESETS, Config, get_config

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
F = TypeVar("F")


@dataclasses.dataclass(frozen=True)
class NoFlags:
    """A script with no flags of its own."""


@dataclasses.dataclass(frozen=True)
class Command(Generic[F]):
    """What one command line holds: the preset, the script's flags, the preset's config with overrides."""

    config: PresetName = "tiny"
    """the preset every field below starts from (configs/<preset>.py)"""
    flags: Annotated[F, tyro.conf.arg(name="")] = None  # type: ignore[assignment]
    """the script's own flags"""
    cfg: Annotated[Config, tyro.conf.arg(name="")] = None  # type: ignore[assignment]
    """the preset's config"""


def parse(argv: list[str] | None = None, prog: str | None = None, flags: type[F] = NoFlags,
          program: Literal["train", "serve"] = "train", description: str | None = None) -> tuple[Config, F]:
    """(config, the script's flags: an instance of `flags`), parsed from `argv` (default sys.argv[1:]).

    If `flags` has a `topology` field, `--topology NAME` also picks the preset's plan for that TPU
    slice (`program`'s plans), under the overrides."""
    argv = sys.argv[1:] if argv is None else list(argv)
    spec = tyro_spec(argv, prog, flags, program, description)
    command = tyro.cli(**spec, args=argv)
    assert command.config == spec["default"].config  # the preset read first is the one tyro parsed
    return command.cfg, command.flags


def tyro_spec(argv: list[str], prog: str | None = None, flags: type = NoFlags,
              program: Literal["train", "serve"] = "train", description: str | None = None) -> dict:
    """`tyro.cli`'s arguments but `args`, for `argv`: the command type, its defaults (the preset and
    plan `argv` names), prog and description."""
    prog = prog or sys.argv[0]
    has_topology = "topology" in {field.name for field in dataclasses.fields(flags)}
    preset, topology = _preset_and_topology(argv, prog, has_topology)
    default = Command(config=preset, flags=flags(), cfg=get_config(preset, topology, program))
    if description is None:
        description = f"Preset {preset!r} (--config picks another), with the overrides below."
        if has_topology:
            description += " --topology picks its plan for a TPU slice."
    return dict(f=Command[flags], default=default, prog=prog, description=description)


def _preset_and_topology(argv: list[str], prog: str, has_topology: bool) -> tuple[str, str | None]:
    """`--config` and `--topology` as tyro will parse them (the last one given wins), nothing else."""
    peek = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    peek.add_argument("--config", default=Command.config)
    if has_topology:
        peek.add_argument("--topology", default=None)
    known, _ = peek.parse_known_args(argv)
    if known.config not in PRESETS:
        print(f"{prog}: error: --config: unknown preset {known.config!r}; choose from {', '.join(PRESETS)}",
              file=sys.stderr)
        sys.exit(2)
    return known.config, getattr(known, "topology", None)
