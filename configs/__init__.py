"""Configs: typed dataclasses (configs/base.py) and one module per preset.

A preset module has `config()`, and may have `TRAIN_PLANS` and `SERVE_PLANS`: TPU slice name ->
PodPlan, the mesh and changes that make it fit that slice (checked by `--compile-only`).
"""

from typing import Literal

from configs import nano1, nano2, pro, tiny, ultra
from configs.base import Config, DataConfig, MeshConfig, ModelConfig, PodPlan, ServeConfig, TrainConfig

PRESETS = {module.__name__.split(".")[-1]: module for module in (tiny, nano1, nano2, pro, ultra)}


def get_config(name: str, topology: str | None = None, program: Literal["train", "serve"] = "train") -> Config:
    """The preset; on a TPU slice it has a plan for (`program`'s), with that plan applied."""
    if name not in PRESETS:
        raise ValueError(f"config field `config`: unknown preset {name!r}; choose from {sorted(PRESETS)}")
    cfg = PRESETS[name].config()
    plan = plans(name, program).get(" ".join((topology or "").split()))
    return plan.apply(cfg) if plan else cfg


def plans(name: str, program: Literal["train", "serve"]) -> dict[str, PodPlan]:
    return getattr(PRESETS[name], f"{program.upper()}_PLANS", {})


__all__ = ["PRESETS", "Config", "DataConfig", "MeshConfig", "ModelConfig", "PodPlan", "ServeConfig", "TrainConfig",
           "get_config", "plans"]
