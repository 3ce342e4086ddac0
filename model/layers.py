"""The small pieces: parameters with logical axes, a dense contraction, RMSNorm, embeddings, gated MLP, RoPE."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from model.int8 import Int8Matrix
from model.output_major import OutputMajor, product
from model.sharding import constrain


def param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...], std: float, dtype) -> nnx.Param:
    """A normally initialised parameter carrying its logical axis names.

    Sharding happens where the state is built (`init_sharded` jits with out_shardings), so the
    variable itself is not eagerly resharded.
    """
    assert len(shape) == len(names), (shape, names)
    value = std * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def ones_param(shape: tuple[int, ...], names: tuple[str, ...], dtype) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, dtype), out_sharding=names, eager_sharding=False)


DENSE_OUTPUT = "dense_output"  # the checkpoint name of every `dense` result (the remat policies save it)


def dense(x: jax.Array, w: jax.Array, contract: int = 1, out_dtype=None) -> jax.Array:
    """x's last `contract` axes against w's first ones (`"btd,dm->btm"`, `"btnh,nhd->btd"`), as an einsum would.

    The backward is written out so that the weight gradient is one plain (x^T . g) product over the
    leading axes. What autodiff derives instead, XLA:CPU lowers by first copying the large output
    gradient transposed, fused with whatever produced it (the silu derivative, the logits' softmax):
    in the bench step (bench/train.py) those copies took a fifth of the step, and the gated MLP's
    forward + backward runs 1.8x faster with this backward (README, "Measured"). The result is
    named DENSE_OUTPUT because `jax.checkpoint`'s dots policies cannot see into a custom VJP: the
    policies in model/transformer.py save this name, so remat keeps what it kept for an einsum.
    """
    return checkpoint_name(_dense(x, w, contract, out_dtype), DENSE_OUTPUT)


def project(x: jax.Array, w: nnx.Param, contract: int = 1, out_dtype=None) -> jax.Array:
    """`dense` of x against a weight matrix, read in x's dtype (or held output-major: see
    model/output_major.py).

    An int8 matrix (model/int8.py: the decode engine's `serve.int8_weights`) enters the product as
    its int8 values, and its per-output-channel scale multiplies the product's output. Compiled for
    TPU, the matmul takes the int8 weight as its operand and no full-precision copy is made
    (XLA:CPU converts a float32 copy first: README, "Int8 on the tiny run").
    """
    value = w.get_value()
    if isinstance(value, OutputMajor):  # decoding (model/output_major.py): no gradient is taken
        return product(x, value, contract, out_dtype)
    if isinstance(value, Int8Matrix):
        out = dense(x, value.values.astype(x.dtype), contract, out_dtype)
        scale = value.scale.reshape(value.scale.shape[contract:])  # the output channels' axes
        return (out.astype(jnp.float32) * scale).astype(out.dtype)
    return dense(x, value.astype(x.dtype), contract, out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense(x, w, contract, out_dtype):
    return jnp.tensordot(x, w, contract, preferred_element_type=out_dtype)


def _dense_forward(x, w, contract, out_dtype):
    return _dense(x, w, contract, out_dtype), (x, w)


def _dense_backward(contract, out_dtype, residuals, g):
    x, w = residuals
    lead = x.ndim - contract  # the axes that only x and g have (batch, length)
    dx = jnp.tensordot(g, w, (tuple(range(lead, g.ndim)), tuple(range(contract, w.ndim))))
    dw = jnp.tensordot(x, g, (tuple(range(lead)), tuple(range(lead))))
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dense.defvjp(_dense_forward, _dense_backward)


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, computed in float32 whatever the compute dtype."""

    def __init__(self, dim: int, axis_name: str, eps: float, param_dtype):
        self.scale = ones_param((dim,), (axis_name,), param_dtype)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Embedding(nnx.Module):
    """One table for every modality's ids; tied, it is also the output head.

    Rows start at norm ~1 (std 1/sqrt(d)): small beside what the blocks add to the residual
    stream, so a tied model does not begin by predicting its own input token, and its logits
    start at unit scale.

    `code_ranges` ((first id, FSQ levels), one per tokenizer) factorises the codes' rows: a code
    is a tuple of FSQ digits, and its row is its own plus one learned row per digit, so codes the
    tokenizer quantised alike (sharing digits) share part of their embedding from the first step,
    in the input and, tied, in the output. On the tiny world this took drawing accuracy at step
    1,000 from 55% to 81% and transcription from 82% to 97% (README, "Measured"). The combined table
    is rebuilt in every forward, decode steps included (a gather-sum over the code rows): cheap at the
    tiny preset's 3,072 ids; the scale presets leave code ranges off.
    """

    def __init__(self, vocab_size: int, d_model: int, param_dtype, rngs: nnx.Rngs,
                 code_ranges: tuple[tuple[int, tuple[int, ...]], ...] = ()):
        self.table_vd = param(rngs, (vocab_size, d_model), ("vocab", "embed"), d_model**-0.5, param_dtype)
        self.code_ranges = tuple((int(first), tuple(int(l) for l in levels)) for first, levels in code_ranges)
        if self.code_ranges:
            digits = sum(sum(levels) for _, levels in self.code_ranges)
            self.digits_ld = param(rngs, (digits, d_model), (None, "embed"), d_model**-0.5, param_dtype)

    def table(self) -> jax.Array | Int8Matrix:
        """The rows every id reads: with code ranges, each code's row plus its digits' rows.

        With int8 weights (decoding) the table stays int8 without code ranges (the scale presets,
        whose table is their largest matrix), and is dequantized whole with them (tiny's 3,072 rows).
        """
        table_vd = self.table_vd.get_value()
        if not self.code_ranges:
            return table_vd
        digits_ld = self.digits_ld.get_value()
        if isinstance(table_vd, Int8Matrix):
            table_vd, digits_ld = table_vd.dequantize(jnp.float32), digits_ld.dequantize(jnp.float32)
        parts, cursor, first_digit_row = [], 0, 0
        for first, levels in self.code_ranges:
            size = math.prod(levels)
            codes_c = jnp.arange(size)
            rows_cd = table_vd[first : first + size]
            place = 1  # digit i of a code is (code // prod(levels[:i])) % levels[i]: first level least significant
            for level in levels:
                rows_cd = rows_cd + jnp.take(digits_ld, first_digit_row + (codes_c // place) % level, axis=0)
                place *= level
                first_digit_row += level
            parts += [table_vd[cursor:first], rows_cd]
            cursor = first + size
        parts.append(table_vd[cursor:])
        return jnp.concatenate(parts, axis=0)

    def encode(self, tokens_bt: jax.Array, dtype) -> jax.Array:
        # Gather the FSDP-split model dimension first (as every FSDP weight is, per use), so the
        # lookup needs only a sum over vocab shards and lands batch-split without a reshuffle.
        table = self.table()
        if isinstance(table, Int8Matrix):  # the int8 rows and their scales, gathered, then multiplied
            values_vd, scale_v1 = constrain(table.values, ("vocab", None)), constrain(table.scale, ("vocab", None))
            rows_btd = jnp.take(values_vd, tokens_bt, axis=0).astype(jnp.float32) * jnp.take(scale_v1, tokens_bt, axis=0)
            return rows_btd.astype(dtype)
        table_vd = constrain(table, ("vocab", None))
        return jnp.take(table_vd, tokens_bt, axis=0).astype(dtype)

    def decode(self, x_btd: jax.Array) -> jax.Array:
        """Tied logits: the normalised stream against every row of the table (an int8 table's
        scales, one per row, multiply the logits instead: see `project`)."""
        table = self.table()
        if isinstance(table, Int8Matrix):
            logits_btv = jnp.einsum("btd,vd->btv", x_btd, table.values.astype(x_btd.dtype),
                                    preferred_element_type=jnp.float32)
            return logits_btv * table.scale[:, 0]
        return jnp.einsum("btd,vd->btv", x_btd, table.astype(x_btd.dtype), preferred_element_type=jnp.float32)


class GatedMLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, mlp_dim: int, param_dtype, rngs: nnx.Rngs):
        self.gate_dm = param(rngs, (d_model, mlp_dim), ("embed", "mlp"), d_model**-0.5, param_dtype)
        self.up_dm = param(rngs, (d_model, mlp_dim), ("embed", "mlp"), d_model**-0.5, param_dtype)
        self.down_md = param(rngs, (mlp_dim, d_model), ("mlp", "embed"), mlp_dim**-0.5, param_dtype)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        gate_btm = project(x_btd, self.gate_dm)
        up_btm = project(x_btd, self.up_dm)
        hidden_btm = constrain(jax.nn.silu(gate_btm) * up_btm, ("batch", "length", "mlp"))
        return project(hidden_btm, self.down_md)


def apply_rope(x_btnh: jax.Array, positions_bt: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding over pairs (first half, second half) of the head dimension."""
    half = x_btnh.shape[-1] // 2
    inv_freq_f = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq_f
    sin, cos = jnp.sin(angles_bth)[:, :, None, :], jnp.cos(angles_bth)[:, :, None, :]
    x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_btnh.dtype)
