"""The benchmark shape (bench/train.py, bench/decode.py): 63.4M parameters, a 32,768-id vocabulary, fp32.

The tiny preset widened to d_model 512, 8 layers, 8 query heads over 1 kv head (head_dim 64), a
gated MLP of 2048, untied input and output embeddings, and no remat (the activations fit, and
dots_saveable measured the same within noise).
"""

from __future__ import annotations

import dataclasses

from configs import get_config
from configs.base import ModelConfig

VOCAB, SEQ = 32768, 512


def bench_config(remat_policy: str = "none") -> ModelConfig:
    tiny = get_config("tiny").model
    codes = tiny.image_vocab_size + tiny.audio_vocab_size
    return dataclasses.replace(
        tiny, text_vocab_size=VOCAB - codes, d_model=512, num_layers=8, num_heads=8, num_kv_heads=1, head_dim=64,
        mlp_dim=2048, max_seq_len=SEQ, tie_embeddings=False, compute_dtype="float32", remat_policy=remat_policy,
        image_code_levels=(), audio_code_levels=(),  # plain rows, as the bench shape was measured
        scan_unroll=1,  # a scanned stack, as the scale presets run
    )
