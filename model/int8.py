"""Weight-only int8 for decoding: each matrix kept as int8 plus one float32 scale per output channel.

A decode step reads every weight once, so the weights' bytes set both what a chip must hold and
what a step must read. Symmetric int8 with a scale per output channel (absmax / 127 over the axes
the matrix is contracted over) halves bfloat16's bytes. Activations stay in the compute dtype:
the model reads an int8 matrix where it uses it (model/layers.py `project`, `Embedding`): the int8
values in the matmul, then the scale on the product's output channels. In the decode step compiled
for TPU each matmul takes the int8 weight as its operand, so no full-precision copy of a weight
is made (README, "Pod scale" and "Int8 on the tiny run"; XLA:CPU does convert a copy).

Norm scales (vectors) are left as they are: a few kilobytes, and they enter float32 arithmetic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

# The axes each matrix is contracted over where the model uses it (model/layers.py, model/attention.py):
# its scale has one entry per position in the other axes (an output channel). The embedding table is
# scaled per row: a row is looked up whole, and (tied) dotted with the stream over d_model.
CONTRACTED_AXES = {
    "q_dnh": (0,), "k_dkh": (0,), "v_dkh": (0,), "o_nhd": (0, 1),
    "gate_dm": (0,), "up_dm": (0,), "down_md": (0,),
    "unembed_dv": (0,), "table_vd": (1,), "digits_ld": (1,),
}


@struct.dataclass
class Int8Matrix:
    values: jax.Array  # int8, the matrix's shape
    scale: jax.Array  # float32, size 1 on the contracted axes

    def dequantize(self, dtype) -> jax.Array:
        return (self.values.astype(jnp.float32) * self.scale).astype(dtype)


def quantize_matrix(w: jax.Array, axes: tuple[int, ...]) -> Int8Matrix:
    absmax = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=axes, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
    values = jnp.clip(jnp.round(w.astype(jnp.float32) / scale), -127, 127).astype(jnp.int8)
    return Int8Matrix(values=values, scale=scale)


def _scale_sharding(sharding, axes: tuple[int, ...], ndim: int):
    """The weight's sharding with the contracted axes (size 1 in the scale) replicated."""
    if not isinstance(sharding, NamedSharding):
        return None
    spec = list(sharding.spec) + [None] * (ndim - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*(None if axis in axes else s for axis, s in enumerate(spec))))


def _quantize(w, axes: tuple[int, ...]) -> Int8Matrix:
    scale_shape = tuple(1 if axis in axes else size for axis, size in enumerate(w.shape))
    scale_sharding = _scale_sharding(w.sharding, axes, w.ndim)
    if isinstance(w, jax.ShapeDtypeStruct):  # compile-only: shapes, no memory
        return Int8Matrix(values=jax.ShapeDtypeStruct(w.shape, jnp.int8, sharding=w.sharding),
                          scale=jax.ShapeDtypeStruct(scale_shape, jnp.float32, sharding=scale_sharding))
    out_shardings = None if scale_sharding is None else Int8Matrix(values=w.sharding, scale=scale_sharding)
    return jax.jit(quantize_matrix, static_argnums=1, out_shardings=out_shardings)(w, axes)


def param_name(path) -> str | None:
    """The name of the parameter at `path` in an nnx.State (its last dict key: `gate_dm`, `unembed_dv`)."""
    return next((key.key for key in reversed(path) if isinstance(key, jax.tree_util.DictKey)), None)


def quantize(state):
    """`state` (an nnx.State in the decode layout, one module per layer: `unstack_blocks`; arrays or
    shapes with shardings) with every matrix named in CONTRACTED_AXES replaced by an Int8Matrix.
    A matrix it does not name is an error, so none is left unscaled, or scaled on the wrong axes."""

    def one(path, leaf):
        if leaf.ndim < 2:  # norm scales
            return leaf
        name = param_name(path)
        if name not in CONTRACTED_AXES:
            raise KeyError(f"int8: no contracted axes known for parameter {jax.tree_util.keystr(path)} "
                           f"(add it to model/int8.py CONTRACTED_AXES)")
        return _quantize(leaf, CONTRACTED_AXES[name])

    return jax.tree_util.tree_map_with_path(one, state)
