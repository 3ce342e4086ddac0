"""Serve the model: `python serve.py --config tiny [--serve.slots 8 ...]`.

What runs today (issue 2, the foundation): build the decoder into its shards and decode greedily
through the KV cache for every slot at once: one prefill, then one jitted step per token, with
the cache donated. The HTTP server, scheduler and checkpoint loading land with issue 6.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from configs.cli import parse
from model.attention import KVCache
from model.costs import kv_cache_bytes_per_token
from model.sharding import make_mesh
from model.transformer import forward, init_model

PROMPT_LEN, NEW_TOKENS = 16, 32


def main() -> None:
    cfg, _ = parse(prog="serve.py")
    slots, cache_len = cfg.serve.slots, cfg.serve.max_cache_len
    mesh = make_mesh(cfg.mesh)
    print(f"preset {cfg.name}: {slots} slots x {cache_len} positions = "
          f"{slots * cache_len * kv_cache_bytes_per_token(cfg.model) / 2**20:.1f} MiB of KV cache")
    graphdef, state = init_model(cfg.model, mesh, cfg.train.seed)

    step = jax.jit(forward, static_argnums=0, donate_argnums=5)  # the cache is replaced each step
    prompt = jax.random.randint(jax.random.key(0), (slots, PROMPT_LEN), 0, cfg.model.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(PROMPT_LEN), prompt.shape)
    ones = jnp.ones((slots, 1), jnp.int32)
    with jax.set_mesh(mesh):
        cache = KVCache.init(cfg.model, slots, cache_len)
        logits, cache = step(graphdef, state, prompt, positions, jnp.ones_like(prompt), cache)
        token = jnp.argmax(logits[:, -1], axis=-1)[:, None]
        step(graphdef, state, token, positions[:, -1:] + 1, ones, KVCache.init(cfg.model, slots, cache_len))  # compile
        start, generated = time.perf_counter(), [token]
        for i in range(1, NEW_TOKENS):
            logits, cache = step(graphdef, state, token, jnp.full((slots, 1), PROMPT_LEN + i - 1), ones, cache)
            token = jnp.argmax(logits[:, -1], axis=-1)[:, None]
            generated.append(token)
        generated = np.asarray(jnp.concatenate(generated, axis=1))
        seconds = time.perf_counter() - start
    print(f"decoded {NEW_TOKENS - 1} steps x {slots} slots: {slots * (NEW_TOKENS - 1) / seconds:.0f} tokens/s "
          f"(untrained weights; slot 0 ids: {generated[0, :8].tolist()} ...)")
    print("The HTTP server is not built yet (issue 6).")


if __name__ == "__main__":
    main()
