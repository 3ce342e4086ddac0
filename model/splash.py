"""Splash attention: the Pallas TPU kernel in jax.experimental, as the attention of a whole sequence on TPU.

`attention_backend="splash"` (the scale presets) runs this kernel for attention without a cache
(training, scoring) when the program is compiled for TPU, and XLA's attention
(model/attention.py `grouped_attention`) on any other platform: `jax.lax.platform_dependent` picks
at lowering, so one config serves a pod, a laptop and CI. With a KV cache (prefill, decode: one
query row a step is not what the kernel's blocks are for), or for a length that is not a multiple
of 128 (the kernel's blocks are whole lanes), the model uses XLA's attention.

The kernel is blockwise (flash) attention that skips the blocks the mask leaves empty: the
[length, length] scores are never in HBM, and about half of the causal blocks are never computed.
The mask is the model's rule (model/attention.py): causal (by index, which within a packed
segment is causal by position) and within a segment, by segment id. A padding query (segment 0)
attends to the padding before it instead of to nothing as in XLA's; its output reaches only other
padding, which the loss ignores, so every real position's output and gradient are the same.

The kernel runs per device on its local shard (`jax.shard_map`): rows split as the batch is,
query heads split over `tensor` as the q projection is; the kv heads are replicated (see
LOGICAL_RULES), so each shard takes the kv heads its query heads read. `interpret=True` runs the
same kernel in Pallas' interpreter, on any platform: the tests match it against XLA's on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from parallel.sharding import logical_to_spec

BLOCKS = (512, 256, 128)  # query and key rows per kernel block, the largest that divides the length (512: MaxText's)


def supports(length: int) -> bool:
    """The kernel's blocks are whole multiples of the TPU's 128 lanes: other lengths use XLA's attention."""
    return length % BLOCKS[-1] == 0


def block_sizes(length: int) -> splash.BlockSizes:
    if not supports(length):
        raise ValueError(f"splash attention needs a sequence length that is a multiple of {BLOCKS[-1]}, got {length} "
                         f"(set data.seq_len, or model.attention_backend=xla)")
    block = next(size for size in BLOCKS if length % size == 0)
    return splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                             block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)


def _local_attention(q_btnh, k_bskh, v_bskh, segment_ids_bt, *, num_heads: int, interpret: bool):
    """One device's shard: `num_heads` is the model's query head count, q holds this shard's heads."""
    b, t, n_local, h = q_btnh.shape
    k_heads = k_bskh.shape[2]
    if k_heads > 1 and n_local < num_heads:  # grouped-query with the query heads split: this shard's kv heads
        first = jax.lax.axis_index("tensor") * n_local
        reads = (first + jnp.arange(n_local)) // (num_heads // k_heads)
        k_bskh, v_bskh = jnp.take(k_bskh, reads, axis=2), jnp.take(v_bskh, reads, axis=2)
    mask = splash.MultiHeadMask([splash.CausalMask(shape=(t, t))] * n_local)
    kernel = splash.make_splash_mha_single_device(mask, block_sizes=block_sizes(t), interpret=interpret)
    # The kernel takes one row's [heads, length, head_dim].
    to_heads_first = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    q_bnth = to_heads_first(q_btnh * jnp.asarray(h**-0.5, q_btnh.dtype))
    out_bnth = jax.vmap(lambda q, k, v, segments: kernel(q, k, v, segment_ids=splash.SegmentIds(segments, segments)))(
        q_bnth, to_heads_first(k_bskh), to_heads_first(v_bskh), segment_ids_bt)
    return to_heads_first(out_bnth)


def splash_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, segment_ids_bt: jax.Array, *,
                     interpret: bool = False) -> jax.Array:
    """Causal attention within segments of q [B, T, N, H] over k, v [B, T, K, H]: [B, T, N, H]."""
    local = functools.partial(_local_attention, num_heads=q_btnh.shape[2], interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q_btnh, k_bskh, v_bskh, segment_ids_bt)
    q_spec = logical_to_spec(("batch", "length", "heads", "head_dim"))
    kv_spec = logical_to_spec(("batch", "length", "kv", "head_dim"))
    return jax.shard_map(local, in_specs=(q_spec, kv_spec, kv_spec, logical_to_spec(("batch", "length"))),
                         out_specs=q_spec, check_vma=False)(q_btnh, k_bskh, v_bskh, segment_ids_bt)
