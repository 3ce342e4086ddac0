"""Multi-query (or grouped / multi-head) attention with RoPE, optional QK-norm and an explicit KV cache.

One code path serves scoring and decoding. Keys come either from the chunk itself (no cache:
training, scoring) or from the cache after the chunk is written into it (prefill, decode).
Which keys a query may see is always the same rule:

    same segment  and  key position <= query position  and  key is not empty (segment 0)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from configs.base import ModelConfig
from model import splash
from model.layers import RMSNorm, apply_rope, project
from model.weights import param
from parallel.sharding import constrain


@struct.dataclass
class KVCache:
    """Keys and values of every layer, indexed by position; a value passed in and returned.

    k:            one [batch, kv_heads, head_dim, length] array per layer (length-last, as the
                  scores' product q . k^T reads them: no transposed copy per step)
    v:            one [batch, length, kv_heads, head_dim] array per layer
    segment_ids:  [batch, length] int32; 0 marks a position not yet written

    An array per layer, not one stacked array: each layer's rows are written into its own
    (donated) buffer in place, where a stacked cache sliced and written back per layer is copied.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    segment_ids: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> "KVCache":
        dtype = dtype or cfg.compute_dtype
        k = tuple(jnp.zeros((batch, cfg.num_kv_heads, cfg.head_dim, length), dtype) for _ in range(cfg.num_layers))
        v = tuple(jnp.zeros((batch, length, cfg.num_kv_heads, cfg.head_dim), dtype) for _ in range(cfg.num_layers))
        return cls(k=k, v=v, segment_ids=jnp.zeros((batch, length), jnp.int32))

    @property
    def length(self) -> int:
        return self.segment_ids.shape[1]


def write_positions(positions_bt: jax.Array, segment_ids_bt: jax.Array, cache_len: int) -> jax.Array:
    """Where each token lands in the cache: its position; padding (segment 0) goes out of bounds and is dropped."""
    return jnp.where(segment_ids_bt == 0, cache_len, positions_bt)


def scatter_rows(cache_bs: jax.Array, rows_bt: jax.Array, where_bt: jax.Array) -> jax.Array:
    """cache[b, where[b, t]] = rows[b, t]; out-of-bounds writes are dropped."""
    batch_b1 = jnp.arange(cache_bs.shape[0])[:, None]
    return cache_bs.at[batch_b1, where_bt].set(rows_bt.astype(cache_bs.dtype), mode="drop")


def scatter_keys(cache_bkhs: jax.Array, keys_btkh: jax.Array, where_bt: jax.Array) -> jax.Array:
    """cache[b, :, :, where[b, t]] = keys[b, t]: `scatter_rows` for the length-last keys."""
    batch_b1 = jnp.arange(cache_bkhs.shape[0])[:, None]
    return cache_bkhs.at[batch_b1, :, :, where_bt].set(keys_btkh.astype(cache_bkhs.dtype), mode="drop")


def grouped_attention(q_btnh: jax.Array, k_bkhs: jax.Array, v_bskh: jax.Array, mask_bts: jax.Array) -> jax.Array:
    """Softmax attention of N query heads over K key/value heads (N/K queries share each), in einsums.

    The backend "xla": what `jax.nn.dot_product_attention` computes, laid out so that no
    [length, length] array is ever transposed. Each kv head's group of queries is folded into the
    query axis ([B, K, T*G, H]), so both products are plain batched matmuls over (B, K) and the
    scores, softmax and their gradients stay in one layout (jax.nn's version keeps heads beside the
    query axis, and XLA copies the scores and probabilities transposed, forward and backward). Only
    the small q and output are transposed here, and for multi-query attention (K = 1) not even those.

    The keys come length-last ([B, K, H, S]), as the cache holds them (KVCache), so the scores'
    product reads them in place.

    A query that may see no key (padding) attends uniformly rather than yielding NaN.
    """
    b, t, n, h = q_btnh.shape
    k, s = k_bkhs.shape[1], k_bkhs.shape[3]
    g = n // k
    q_bkqh = (q_btnh * h**-0.5).reshape(b, t, k, g, h).transpose(0, 2, 1, 3, 4).reshape(b, k, t * g, h)
    scores_bktgs = jnp.einsum(
        "bkqh,bkhs->bkqs", q_bkqh, k_bkhs, preferred_element_type=jnp.float32
    ).reshape(b, k, t, g, s)
    scores_bktgs = jnp.where(mask_bts[:, None, :, None, :], scores_bktgs, jnp.finfo(jnp.float32).min)
    probs_bkqs = jax.nn.softmax(scores_bktgs, axis=-1).astype(v_bskh.dtype).reshape(b, k, t * g, s)
    out_bkqh = jnp.einsum("bkqs,bksh->bkqh", probs_bkqs, v_bskh.transpose(0, 2, 1, 3))
    return out_bkqh.reshape(b, k, t, g, h).transpose(0, 2, 1, 3, 4).reshape(b, t, n, h)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, n, k, h, dtype = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.param_dtype
        self.q_dnh = param(rngs, (d, n, h), ("embed", "heads", "head_dim"), d**-0.5, dtype, contract=(0,))
        self.k_dkh = param(rngs, (d, k, h), ("embed", "kv", "head_dim"), d**-0.5, dtype, contract=(0,))
        self.v_dkh = param(rngs, (d, k, h), ("embed", "kv", "head_dim"), d**-0.5, dtype, contract=(0,))
        self.o_nhd = param(rngs, (n, h, d), ("heads", "head_dim", "embed"), (n * h) ** -0.5, dtype, contract=(0, 1))
        self.q_norm = RMSNorm(h, "head_dim", cfg.norm_eps, dtype, cfg.norm_offset) if cfg.qk_norm else None
        self.k_norm = RMSNorm(h, "head_dim", cfg.norm_eps, dtype, cfg.norm_offset) if cfg.qk_norm else None
        self.rope_base, self.rope_scaling = cfg.rope_base, tuple(cfg.rope_scaling)
        self.backend = cfg.attention_backend

    def __call__(
        self,
        x_btd: jax.Array,
        positions_bt: jax.Array,
        segment_ids_bt: jax.Array,
        cache: tuple[jax.Array, jax.Array] | None = None,
        cache_segment_ids_bs: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Attend; with a cache, `cache_segment_ids_bs` must already include this chunk's writes."""
        dtype = x_btd.dtype
        q_btnh = project(x_btd, self.q_dnh)
        k_btkh = project(x_btd, self.k_dkh)
        v_btkh = project(x_btd, self.v_dkh)
        if self.q_norm is not None:
            q_btnh, k_btkh = self.q_norm(q_btnh), self.k_norm(k_btkh)
        q_btnh = constrain(apply_rope(q_btnh, positions_bt, self.rope_base, self.rope_scaling), ("batch", "length", "heads", None))
        k_btkh = apply_rope(k_btkh, positions_bt, self.rope_base, self.rope_scaling)

        if cache is None:
            keys_bkhs, values_bskh = k_btkh.transpose(0, 2, 3, 1), v_btkh
            key_positions_bs, key_segments_bs = positions_bt, segment_ids_bt
        else:
            cache_k_bkhs, cache_v_bskh = cache
            where_bt = write_positions(positions_bt, segment_ids_bt, cache_v_bskh.shape[1])
            keys_bkhs = scatter_keys(cache_k_bkhs, k_btkh, where_bt)
            values_bskh = scatter_rows(cache_v_bskh, v_btkh, where_bt)
            cache = (keys_bkhs, values_bskh)
            key_positions_bs = jnp.broadcast_to(jnp.arange(values_bskh.shape[1]), cache_segment_ids_bs.shape)
            key_segments_bs = cache_segment_ids_bs
            keys_bkhs, values_bskh = keys_bkhs.astype(dtype), values_bskh.astype(dtype)

        mask_bts = (
            (segment_ids_bt[:, :, None] == key_segments_bs[:, None, :])
            & (key_positions_bs[:, None, :] <= positions_bt[:, :, None])
            & (key_segments_bs[:, None, :] != 0)
        )
        if self.backend == "splash" and cache is None and splash.supports(x_btd.shape[1]):
            # the Pallas kernel on TPU, XLA's attention elsewhere (model/splash.py)
            out_btnh = jax.lax.platform_dependent(
                q_btnh, k_btkh, values_bskh, segment_ids_bt, tpu=splash.splash_attention,
                default=lambda q, k, v, _: grouped_attention(q, k.transpose(0, 2, 3, 1), v, mask_bts))
        elif self.backend in ("xla", "splash"):
            out_btnh = grouped_attention(q_btnh, keys_bkhs, values_bskh, mask_bts)
        else:
            keys_bskh = keys_bkhs.transpose(0, 3, 1, 2)  # jax.nn takes them as the values
            out_btnh = jax.nn.dot_product_attention(
                q_btnh, keys_bskh, values_bskh, mask=mask_bts[:, None], implementation=self.backend
            )
        out_btd = project(out_btnh, self.o_nhd)
        return out_btd, cache
