"""Decoding's float matrices stored output-major: [out, in], the contracted axis last.

A decode step multiplies a few rows of activations (one per slot) by each weight. XLA:CPU runs
that product faster with the weight as the left operand, read row by row along the contracted
axis, than with it on the right, [in, out], as training stores it (a product per weight,
measured at the bench shape: batch 32, [512, 2048] 0.32 -> 0.26 ms, [2048, 512] 0.34 -> 0.27 ms,
the [512, 32768] head 5.0 -> 3.6 ms; batch 1, [2048, 512] 0.095 -> 0.047 ms). The engine stores
the MLP's and the untied head's matrices so (`transpose`); `project` (model/layers.py) then
computes W . x^T and moves the output axis last.

Attention's projections stay as they are: their output is split into heads and RoPE'd, and held
output-major the whole step at batch 1 got slower (5.1 -> 5.6 ms). The embedding table is looked up
by row, and as the tied head it is already [vocab, d]. Int8 weights (model/int8.py) keep the
training layout: their scales are per output channel of that layout, and on CPU the engine
converts them to float before each product anyway.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

TRANSPOSED = ("gate_dm", "up_dm", "down_md", "unembed_dv")  # 2-D, contracted over axis 0 in training


@struct.dataclass
class OutputMajor:
    values_oi: jax.Array  # the matrix transposed: [out, in]


def product(x: jax.Array, w: OutputMajor, out_dtype=None) -> jax.Array:
    """x [..., in] against the matrix: what `x @ w_io` is, computed as w_oi . x^T."""
    out_o_lead = jnp.tensordot(w.values_oi.astype(x.dtype), x, (1, x.ndim - 1), preferred_element_type=out_dtype)
    return jnp.moveaxis(out_o_lead, 0, -1)


def _transposed_sharding(sharding):
    if not isinstance(sharding, NamedSharding):
        return sharding
    spec = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*reversed(spec)))


def _transpose(w) -> OutputMajor:
    sharding = _transposed_sharding(w.sharding)
    if isinstance(w, jax.ShapeDtypeStruct):  # compile-only: shapes, no memory
        return OutputMajor(jax.ShapeDtypeStruct(w.shape[::-1], w.dtype, sharding=sharding))
    out_shardings = OutputMajor(sharding) if isinstance(sharding, NamedSharding) else None
    return jax.jit(lambda w: OutputMajor(w.T), out_shardings=out_shardings)(w)


def transpose(state):
    """`state` (the decode layout: `unstack_blocks`; arrays or shapes with shardings) with every
    matrix named in TRANSPOSED held as an OutputMajor, its sharding transposed with it."""

    def one(path, leaf):
        name = next((key.key for key in reversed(path) if isinstance(key, jax.tree_util.DictKey)), None)
        return _transpose(leaf) if name in TRANSPOSED else leaf

    return jax.tree_util.tree_map_with_path(one, state)
