import dataclasses

import jax
from flax import nnx

from configs.base import ModelConfig
from model.transformer import Transformer, forward


def small_model_config(**overrides) -> ModelConfig:
    """A few-thousand-parameter decoder in float32, for exact numerical checks."""
    base = ModelConfig(
        text_vocab_size=200, image_vocab_size=30, audio_vocab_size=20,
        d_model=64, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=16, mlp_dim=128,
        max_seq_len=64, compute_dtype="float32", remat_policy="none",
    )
    return dataclasses.replace(base, **overrides)


jit_forward = jax.jit(forward, static_argnums=0)


def build(cfg: ModelConfig, seed: int = 0):
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))


# The tiny preset's vocabulary layout (1,024 text + 1,000 image + 1,000 audio ids) on a small decoder.
WORLD_MODEL = small_model_config(text_vocab_size=1024, image_vocab_size=1000, audio_vocab_size=1000, max_seq_len=256)
