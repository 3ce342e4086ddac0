"""Configs: typed dataclasses (configs/base.py) and one module per preset."""

from configs import nano1, nano2, pro, tiny, ultra
from configs.base import Config, DataConfig, MeshConfig, ModelConfig, ServeConfig, TrainConfig

PRESETS = {
    "tiny": tiny.config,
    "nano1": nano1.config,
    "nano2": nano2.config,
    "pro": pro.config,
    "ultra": ultra.config,
}


def get_config(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"config field `config`: unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()


__all__ = ["PRESETS", "Config", "DataConfig", "MeshConfig", "ModelConfig", "ServeConfig", "TrainConfig", "get_config"]
