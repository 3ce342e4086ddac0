import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

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


def facts_on_simulated_devices(script: str, devices: int = 8) -> dict:
    """Run tests/<script> in a subprocess with `devices` simulated CPU devices (the rest of the suite
    keeps one) and return the JSON object it prints last; a failing script fails the caller."""
    tests = Path(__file__).parent
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(tests.parent))
    run = subprocess.run([sys.executable, str(tests / script)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
