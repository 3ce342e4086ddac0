"""A weight matrix as the model reads it: float, or int8 with one scale per output channel.

Every matrix parameter declares where it is made (`param(..., contract=...)`) the axes it is
contracted over where it is used; that is all int8 needs to know to scale it per output channel.
Layers never test a weight's type: `matrix(param)` gives an object with the same three methods
either way (`dot`, `rows`, `array`), as MaxText injects its quantised dot into the dense layer
instead of branching at every call site.

Int8 is weight-only, for decoding (`serve.int8_weights`): a decode step reads every weight once,
so bytes set both what a chip holds and what a step reads. Symmetric int8 with a scale per output
channel halves bfloat16's bytes; the matmul takes the int8 values, and the scale multiplies the
product's output, so no full-precision copy of the weight is made on TPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import NamedSharding, PartitionSpec

from parallel.sharding import constrain

DENSE_OUTPUT = "dense_output"  # the checkpoint name of every float product (the remat policies save it)


def param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str | None, ...], std: float, dtype,
          contract: tuple[int, ...] = ()) -> nnx.Param:
    """A normally initialised parameter carrying its logical axis names and, for a matrix the model
    multiplies by, the axes that product contracts (`contract`).

    Sharding happens where the state is built (`init_sharded` jits with out_shardings), so the
    variable itself is not eagerly resharded.
    """
    assert len(shape) == len(names), (shape, names)
    value = std * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, out_sharding=names, eager_sharding=False, contract=tuple(contract))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense(x, w, contract, out_dtype):
    return jnp.tensordot(x, w, contract, preferred_element_type=out_dtype)


def _dense_forward(x, w, contract, out_dtype):
    return _dense(x, w, contract, out_dtype), (x, w)


def _dense_backward(contract, out_dtype, residuals, g):
    # The weight gradient as one plain (x^T . g) product over the leading axes: what autodiff derives
    # instead is lowered by XLA:CPU through a transposed copy of the large output gradient.
    x, w = residuals
    lead = x.ndim - contract  # the axes that only x and g have (batch, length)
    dx = jnp.tensordot(g, w, (tuple(range(lead, g.ndim)), tuple(range(contract, w.ndim))))
    dw = jnp.tensordot(x, g, (tuple(range(lead)), tuple(range(lead))))
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dense.defvjp(_dense_forward, _dense_backward)


def _x_axes(x: jax.Array, contract: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(range(x.ndim - len(contract), x.ndim))


@struct.dataclass
class FloatMatrix:
    """A float matrix, read in the activations' dtype."""

    value: jax.Array
    contract: tuple[int, ...] = struct.field(pytree_node=False)

    def dot(self, x: jax.Array, out_dtype=None) -> jax.Array:
        """x's last axes against the contracted ones: the output is x's other axes, then the matrix's."""
        w = self.value.astype(x.dtype)
        if self.contract == tuple(range(len(self.contract))):  # leading axes: `_dense`, with its backward
            out = _dense(x, w, len(self.contract), out_dtype)
        else:
            out = jnp.tensordot(x, w, (_x_axes(x, self.contract), self.contract), preferred_element_type=out_dtype)
        # Named because `jax.checkpoint`'s dots policies cannot see into a custom VJP: the remat
        # policies (model/transformer.py) save this name, so remat keeps what it kept for an einsum.
        return checkpoint_name(out, DENSE_OUTPUT)

    def rows(self, ids: jax.Array, dtype, names: tuple[str | None, ...]) -> jax.Array:
        """Rows `ids` of the matrix in `dtype`, gathered with the matrix laid out as `names`."""
        return jnp.take(constrain(self.value, names), ids, axis=0).astype(dtype)

    def array(self) -> jax.Array:
        return self.value


@struct.dataclass
class Int8Matrix:
    """int8 values and a float32 scale of size 1 on the contracted axes (one per output channel)."""

    values: jax.Array
    scale: jax.Array
    contract: tuple[int, ...] = struct.field(pytree_node=False)

    def dot(self, x: jax.Array, out_dtype=None) -> jax.Array:
        out = jnp.tensordot(x, self.values.astype(x.dtype), (_x_axes(x, self.contract), self.contract),
                            preferred_element_type=out_dtype)
        return (out.astype(jnp.float32) * self._output_scale()).astype(out.dtype)

    def rows(self, ids: jax.Array, dtype, names: tuple[str | None, ...]) -> jax.Array:
        values, scale = constrain(self.values, names), constrain(self.scale, names)
        rows = jnp.take(values, ids, axis=0).astype(jnp.float32) * jnp.take(scale, ids, axis=0)
        return rows.astype(dtype)

    def array(self) -> jax.Array:
        return self.values.astype(jnp.float32) * self.scale

    def _output_scale(self) -> jax.Array:
        return self.scale.reshape([size for axis, size in enumerate(self.scale.shape) if axis not in self.contract])


def matrix(weight: nnx.Param) -> FloatMatrix | Int8Matrix:
    """The parameter as the model multiplies by it (the one place that knows a weight's kind)."""
    value = weight.get_value()
    if isinstance(value, Int8Matrix):
        return value
    return FloatMatrix(value, weight.get_metadata()["contract"])


def quantize_matrix(w: jax.Array, contract: tuple[int, ...]) -> Int8Matrix:
    absmax = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=contract, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
    values = jnp.clip(jnp.round(w.astype(jnp.float32) / scale), -127, 127).astype(jnp.int8)
    return Int8Matrix(values=values, scale=scale, contract=contract)


def _quantize(w, contract: tuple[int, ...]) -> Int8Matrix:
    """`quantize_matrix` in place on w's devices, or as shapes with shardings for a compile-only `w`."""
    scale_shape = tuple(1 if axis in contract else size for axis, size in enumerate(w.shape))
    scale_sharding = None
    if isinstance(w.sharding, NamedSharding):  # the weight's, with the contracted axes (size 1) replicated
        spec = tuple(w.sharding.spec) + (None,) * (w.ndim - len(w.sharding.spec))
        scale_sharding = NamedSharding(w.sharding.mesh, PartitionSpec(
            *(None if axis in contract else s for axis, s in enumerate(spec))))
    if isinstance(w, jax.ShapeDtypeStruct):
        return Int8Matrix(values=jax.ShapeDtypeStruct(w.shape, jnp.int8, sharding=w.sharding),
                          scale=jax.ShapeDtypeStruct(scale_shape, jnp.float32, sharding=scale_sharding),
                          contract=contract)
    out_shardings = None
    if scale_sharding is not None:
        out_shardings = Int8Matrix(values=w.sharding, scale=scale_sharding, contract=contract)
    return jax.jit(quantize_matrix, static_argnums=1, out_shardings=out_shardings)(w, contract)


def _matrices(state, convert):
    """`state` with `convert(value, contract)` applied to every matrix parameter (two or more axes).
    A matrix that declares no contracted axes is an error: none is left unscaled, or scaled wrongly."""

    def one(path, variable):
        if not isinstance(variable, nnx.Variable) or variable.get_value().ndim < 2:  # norm scales stay
            return variable
        contract = variable.get_metadata().get("contract")
        if not contract:
            raise KeyError(f"parameter {jax.tree_util.keystr(path)} declares no contracted axes "
                           "(give `contract=` where it is made)")
        return variable.replace(convert(variable.get_value(), contract))

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def quantize(state):
    """Every matrix of `state` (arrays, or shapes with shardings) as an Int8Matrix."""
    return _matrices(state, _quantize)


def cast(state, dtype):
    """Every floating-point matrix of `state` in `dtype` (as the model casts it at every use anyway);
    norm scales keep theirs, for the float32 arithmetic they enter."""

    def one(w, _):
        if not jnp.issubdtype(w.dtype, jnp.floating) or w.dtype == jnp.dtype(dtype):
            return w
        if isinstance(w, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(w.shape, jnp.dtype(dtype), sharding=w.sharding)
        return w.astype(dtype)

    return _matrices(state, one)

