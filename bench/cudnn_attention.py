"""The `cudnn` attention backend on a GPU against XLA's, through the whole model (needs a CUDA jax).

    python bench/cudnn_attention.py

A 2-layer model (d 256, 4 query heads over 1 kv head of 64) in bfloat16, once with
`attention_backend="xla"` and once with `"cudnn"`, each against the same model in float32 with
XLA's attention, over the real positions of 4 rows of 256 tokens:
  - logits with no cache, over packed rows (two sequences in one row, padding in another);
  - logits through a KV cache of 320 positions (prefill), over rows of one sequence, right-padded;
  - the gradient of the mean log-likelihood, relative to its largest entry.
cudnn should differ from float32 about as much as XLA in bfloat16 does. Prints JSON lines.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from configs.base import MeshConfig, ModelConfig
from model.attention import KVCache
from model.transformer import forward, init_model, to_per_layer
from parallel.sharding import make_mesh

BATCH, LENGTH, CACHE = 4, 256, 320


def rows() -> dict:
    rng = np.random.default_rng(0)
    tokens = rng.integers(10, 1000, (BATCH, LENGTH)).astype(np.int32)
    packed = np.ones((BATCH, LENGTH), np.int32)
    packed[1, 100:] = 2  # a second sequence, its positions restarting at 0
    packed[2, 200:] = 0  # padding
    packed_positions = np.zeros((BATCH, LENGTH), np.int32)
    for row in range(BATCH):
        for segment in np.unique(packed[row]):
            where = np.flatnonzero(packed[row] == segment)
            packed_positions[row, where] = np.arange(len(where))
    single = np.ones((BATCH, LENGTH), np.int32)  # a cache holds one sequence a row (the engine's use)
    single[1, 150:] = 0
    single[3, 60:] = 0
    single_positions = np.broadcast_to(np.arange(LENGTH, dtype=np.int32), (BATCH, LENGTH)).copy()
    return dict(tokens=tokens, packed=packed, packed_positions=packed_positions, single=single,
                single_positions=single_positions)


def run(cfg: ModelConfig, data: dict) -> dict:
    graphdef, state = init_model(cfg, make_mesh(MeshConfig(data=1, fsdp=1, tensor=1)))
    f = jax.jit(forward, static_argnums=0)
    logits, _ = f(graphdef, state, data["tokens"], data["packed_positions"], data["packed"])
    cached, _ = f(*to_per_layer(graphdef, state), data["tokens"], data["single_positions"], data["single"],
                  KVCache.init(cfg, BATCH, CACHE))  # the layout that decodes takes the cache
    real = data["packed"] != 0

    def loss(state):
        logits, _ = forward(graphdef, state, data["tokens"], data["packed_positions"], data["packed"])
        return jnp.sum(jnp.where(real[..., None], jax.nn.log_softmax(logits), 0.0)) / real.sum()

    grads = jax.jit(jax.grad(loss))(state)
    return dict(logits=np.asarray(logits), cached=np.asarray(cached), grads=[np.asarray(g) for g in jax.tree.leaves(grads)])


def main() -> None:
    if jax.default_backend() != "gpu":
        raise SystemExit(f"bench/cudnn_attention.py needs a GPU (jax's backend here is {jax.default_backend()!r})")
    print(json.dumps({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}), flush=True)
    base = ModelConfig(text_vocab_size=1000, image_vocab_size=0, audio_vocab_size=0, d_model=256, num_layers=2,
                       num_heads=4, num_kv_heads=1, head_dim=64, mlp_dim=512, max_seq_len=512,
                       param_dtype="float32", remat_policy="none")
    data = rows()
    reference = run(dataclasses.replace(base, attention_backend="xla", compute_dtype="float32"), data)
    packed_real, single_real = data["packed"] != 0, data["single"] != 0
    for backend in ("xla", "cudnn"):
        got = run(dataclasses.replace(base, attention_backend=backend, compute_dtype="bfloat16"), data)
        print(json.dumps({
            "backend": backend, "dtype": "bfloat16", "against": "xla float32",
            "logits_max_diff": float(np.max(np.abs(got["logits"] - reference["logits"])[packed_real])),
            "cached_logits_max_diff": float(np.max(np.abs(got["cached"] - reference["cached"])[single_real])),
            "grad_max_rel_diff": max(float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
                                     for a, b in zip(reference["grads"], got["grads"])),
        }), flush=True)


if __name__ == "__main__":
    main()
