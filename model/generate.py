"""Generation for a batch of ragged prompts, all in one jitted call (no host round trip per token).

    prompts (right-padded, padding = segment 0) -> prefill into a KV cache -> the next token of
    every row from its last real position -> `new_tokens - 1` one-token steps in a `fori_loop`

Greedy at temperature 0; otherwise sampled (optionally from the top k) with a fixed seed, so a
run is repeatable. Every row runs the full `new_tokens` steps; callers cut each row at its first
<eos>. Used by the held-out eval (training/evaluate.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from model.transformer import forward


def _pick(logits_bv: jax.Array, key: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
    if temperature == 0.0:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    if top_k is not None:
        kth_b1 = jax.lax.top_k(logits_bv, top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth_b1, -jnp.inf, logits_bv)
    return jax.random.categorical(key, logits_bv / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _generate(graphdef: nnx.GraphDef, state: nnx.State, prompt_bt: jax.Array, lengths_b: jax.Array,
              new_tokens: int, temperature: float, top_k: int | None, seed: jax.Array) -> jax.Array:
    batch, padded = prompt_bt.shape
    model = nnx.merge(graphdef, state)
    keys = jax.random.split(jax.random.key(seed), new_tokens)
    positions_bt = jnp.broadcast_to(jnp.arange(padded, dtype=jnp.int32), prompt_bt.shape)
    segments_bt = (positions_bt < lengths_b[:, None]).astype(jnp.int32)
    cache = model.init_cache(batch, padded + new_tokens)  # stacked, or per layer in the decode layout
    logits_b1v, cache = forward(graphdef, state, prompt_bt, positions_bt, segments_bt, cache, logits_at_b=lengths_b - 1)
    first_b = _pick(logits_b1v[:, 0], keys[0], temperature, top_k)
    out_bn = jnp.zeros((batch, new_tokens), jnp.int32).at[:, 0].set(first_b)
    ones_b1 = jnp.ones((batch, 1), jnp.int32)

    def step(i, carry):
        out_bn, token_b1, cache = carry
        position_b1 = (lengths_b + i - 1)[:, None]  # where the token generated at step i-1 sits
        logits_b1v, cache = forward(graphdef, state, token_b1, position_b1, ones_b1, cache)
        token_b = _pick(logits_b1v[:, 0], keys[i], temperature, top_k)
        return out_bn.at[:, i].set(token_b), token_b[:, None], cache

    out_bn, _, _ = jax.lax.fori_loop(1, new_tokens, step, (out_bn, first_b[:, None], cache))
    return out_bn


def generate(graphdef: nnx.GraphDef, state: nnx.State, prompts: list[np.ndarray], new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, seed: int = 0, pad_to: int = 32) -> np.ndarray:
    """[len(prompts), new_tokens] continuations. Prompt lengths are padded up to a multiple of
    `pad_to`, so sets of similar prompts share one compiled program."""
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("generate needs at least one prompt, each of at least one token")
    longest = max(len(p) for p in prompts)
    padded = -(-longest // pad_to) * pad_to
    prompt_bt = np.zeros((len(prompts), padded), np.int32)
    for row, prompt in enumerate(prompts):
        prompt_bt[row, : len(prompt)] = prompt
    lengths_b = np.array([len(p) for p in prompts], np.int32)
    out = _generate(graphdef, state, prompt_bt, lengths_b, new_tokens, float(temperature), top_k, np.uint32(seed))
    # On several processes the rows may be split among them; every process gets all of them.
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))
