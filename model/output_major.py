"""Decoding's MLP and untied head matrices stored output-major: [out, in], the contracted axis last.

A decode step multiplies a few rows of activations (one per slot) by each weight. The engine holds
these matrices transposed (`transpose`), and `project` (model/layers.py) computes W . x^T and moves
the output axis last; between the MLP's products XLA then keeps the hidden activations in the
products' own layout. Measured in the engine at the bench shape (bench/decode.py's step, the
variants compiled in one process and timed alternately), batch-32 step: 18.1 ms as training stores
them, 17.5 with the head alone transposed, 16.7 with the MLP's matrices too (17.4 with gate and up
but not down, 18.3 with down but not gate and up); batch 1 within noise of before (5.2-5.3 ms).

Attention's projections stay as they are: transposed too (all four, or q and o, or o), the batch-32
step measured 16.2-16.7 ms against 16.2-16.4 without. The embedding table is looked up by row, and
as the tied head it is already [vocab, d]. Int8 weights (model/int8.py) keep the training layout:
their scales are per output channel of that layout, and on CPU the engine converts them to float
before each product.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from model.int8 import CONTRACTED_AXES, param_name

TRANSPOSED = ("gate_dm", "up_dm", "down_md", "unembed_dv")  # their contracted axes: model/int8.py


@struct.dataclass
class OutputMajor:
    values_oi: jax.Array  # the matrix with its contracted axes moved last: [out..., in...]


def product(x: jax.Array, w: OutputMajor, contract: int, out_dtype=None) -> jax.Array:
    """x's last `contract` axes against the matrix's: what `dense(x, w)` is, computed as w . x^T."""
    values = w.values_oi.astype(x.dtype)
    out_axes = values.ndim - contract
    axes = (tuple(range(out_axes, values.ndim)), tuple(range(x.ndim - contract, x.ndim)))
    out_o_lead = jnp.tensordot(values, x, axes, preferred_element_type=out_dtype)
    return jnp.moveaxis(out_o_lead, tuple(range(out_axes)), tuple(range(-out_axes, 0)))


def _transpose(w, contracted: tuple[int, ...]) -> OutputMajor:
    order = tuple(a for a in range(w.ndim) if a not in contracted) + contracted
    sharding = w.sharding
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (w.ndim - len(sharding.spec))
        sharding = NamedSharding(sharding.mesh, PartitionSpec(*(spec[a] for a in order)))
    if isinstance(w, jax.ShapeDtypeStruct):  # compile-only: shapes, no memory
        return OutputMajor(jax.ShapeDtypeStruct(tuple(w.shape[a] for a in order), w.dtype, sharding=sharding))
    out_shardings = OutputMajor(sharding) if isinstance(sharding, NamedSharding) else None
    return jax.jit(lambda w: OutputMajor(jnp.transpose(w, order)), out_shardings=out_shardings)(w)


def transpose(state):
    """`state` (the decode layout: `unstack_blocks`; arrays or shapes with shardings) with every
    matrix named in TRANSPOSED held as an OutputMajor, its sharding transposed with it."""

    def one(path, leaf):
        name = param_name(path)
        return _transpose(leaf, CONTRACTED_AXES[name]) if name in TRANSPOSED else leaf

    return jax.tree_util.tree_map_with_path(one, state)
