"""What a model costs: parameters (counted and by formula), training FLOPs, KV-cache bytes.

The model knows its own arithmetic, so MFU and memory figures elsewhere start here.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from configs.base import ModelConfig
from model.transformer import Transformer

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def counted_params(cfg: ModelConfig) -> int:
    """Parameters of the real module, built abstractly with `nnx.eval_shape` (no memory)."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def layer_matmul_params(cfg: ModelConfig) -> int:
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attention = d * n * h + 2 * d * k * h + n * h * d  # q, k, v, o
    return attention + 3 * d * cfg.mlp_dim  # gate, up, down


def analytic_params(cfg: ModelConfig) -> int:
    """V*d (x2 if untied) + a d-row per FSQ digit value + L * (attention + gated MLP + 2 norms [+ QK-norms]) + final norm."""
    d = cfg.d_model
    per_layer = layer_matmul_params(cfg) + 2 * d + (2 * cfg.head_dim if cfg.qk_norm else 0)
    digit_rows = sum(cfg.image_code_levels) + sum(cfg.audio_code_levels)
    embeddings = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2) + digit_rows * d
    return embeddings + cfg.num_layers * per_layer + d


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward + backward FLOPs per trained token (PaLM appendix B convention).

    6 x (every matmul weight, including the output head's V*d logits matmul; the input
    lookup is free) + 12 x L x heads x head_dim x seq_len for attention scores and mixing,
    counted over the full square as PaLM does (a causal kernel can skip about half).
    """
    matmul = cfg.num_layers * layer_matmul_params(cfg) + cfg.vocab_size * cfg.d_model
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6 * matmul + attention


def kv_cache_bytes_per_token(cfg: ModelConfig) -> int:
    """Keys and values of every layer, in the compute dtype the cache holds."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * _BYTES[cfg.compute_dtype]


def decode_flops_per_step(cfg: ModelConfig, slots: int, cache_len: int) -> int:
    """One token for every slot: 2 x every matmul weight (the head's included), plus scores and
    mixing over the whole cache (the step attends to all of it, masked)."""
    matmul = cfg.num_layers * layer_matmul_params(cfg) + cfg.vocab_size * cfg.d_model
    attention = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * cache_len
    return slots * (2 * matmul + attention)
