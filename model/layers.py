"""The small pieces: RMSNorm, embeddings, gated MLP, RoPE, and `project` (a weight matrix's product)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from model.weights import FloatMatrix, Int8Matrix, matrix, param
from parallel.sharding import constrain


def constant_param(value: float, shape: tuple[int, ...], names: tuple[str | None, ...], dtype) -> nnx.Param:
    return nnx.Param(jnp.full(shape, value, dtype), out_sharding=names, eager_sharding=False)


def project(x: jax.Array, w: nnx.Param, out_dtype=None) -> jax.Array:
    """x's last axes against the axes `w` contracts (declared where it was made), float or int8 alike."""
    return matrix(w).dot(x, out_dtype)


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, computed in float32 whatever the compute dtype; with `offset` (Gemma's
    layout) the scale is 1 + w, w starting at 0."""

    def __init__(self, dim: int, axis_name: str, eps: float, param_dtype, offset: bool = False):
        self.scale = constant_param(0.0 if offset else 1.0, (dim,), (axis_name,), param_dtype)
        self.eps, self.offset = eps, offset

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(jnp.float32)
        return (normed * (1 + scale if self.offset else scale)).astype(x.dtype)


class Embedding(nnx.Module):
    """One table for every modality's ids; tied, it is also the output head.

    Rows start at norm ~1 (std 1/sqrt(d)): small beside what the blocks add to the residual
    stream, so a tied model does not begin by predicting its own input token, and its logits
    start at unit scale.

    `code_ranges` ((first id, FSQ levels), one per tokenizer) factorises the codes' rows: a code
    is a tuple of FSQ digits, and its row is its own plus one learned row per digit, so codes the
    tokenizer quantised alike (sharing digits) share part of their embedding from the first step,
    in the input and, tied, in the output: on the tiny world it lifts drawing and transcription
    accuracy early in training (docs/performance.md). The combined table
    is rebuilt in every forward, decode steps included (a gather-sum over the code rows): cheap at the
    tiny preset's 3,072 ids; the scale presets leave code ranges off.
    """

    def __init__(self, vocab_size: int, d_model: int, param_dtype, rngs: nnx.Rngs,
                 code_ranges: tuple[tuple[int, tuple[int, ...]], ...] = ()):
        # Contracted over d_model where it is the tied head; looked up by row, so scaled per row.
        self.table_vd = param(rngs, (vocab_size, d_model), ("vocab", "embed"), d_model**-0.5, param_dtype, contract=(1,))
        self.code_ranges = tuple((int(first), tuple(int(l) for l in levels)) for first, levels in code_ranges)
        if self.code_ranges:
            digits = sum(sum(levels) for _, levels in self.code_ranges)
            self.digits_ld = param(rngs, (digits, d_model), (None, "embed"), d_model**-0.5, param_dtype, contract=(1,))

    def table(self) -> FloatMatrix | Int8Matrix:
        """The rows every id reads: with code ranges, each code's row plus its digits' rows.

        Without code ranges (the scale presets, whose table is their largest matrix) an int8 table
        stays int8; with them (tiny's 3,072 rows) the combined table is built from the dequantised parts.
        """
        if not self.code_ranges:
            return matrix(self.table_vd)
        table_vd, digits_ld = matrix(self.table_vd).array(), matrix(self.digits_ld).array()
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
        return FloatMatrix(jnp.concatenate(parts, axis=0), contract=(1,))

    def encode(self, tokens_bt: jax.Array, dtype) -> jax.Array:
        # Gather the FSDP-split model dimension first (as every FSDP weight is, per use), so the
        # lookup needs only a sum over vocab shards and lands batch-split without a reshuffle.
        return self.table().rows(tokens_bt, dtype, ("vocab", None))

    def decode(self, x_btd: jax.Array) -> jax.Array:
        """Tied logits: the normalised stream against every row of the table."""
        return self.table().dot(x_btd, out_dtype=jnp.float32)


ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}


class GatedMLP(nnx.Module):
    """SwiGLU, down(silu(gate(x)) * up(x)), or with `activation="gelu_tanh"` GeGLU."""

    def __init__(self, d_model: int, mlp_dim: int, param_dtype, rngs: nnx.Rngs, activation: str = "silu"):
        self.activation = activation
        self.gate_dm = param(rngs, (d_model, mlp_dim), ("embed", "mlp"), d_model**-0.5, param_dtype, contract=(0,))
        self.up_dm = param(rngs, (d_model, mlp_dim), ("embed", "mlp"), d_model**-0.5, param_dtype, contract=(0,))
        self.down_md = param(rngs, (mlp_dim, d_model), ("mlp", "embed"), mlp_dim**-0.5, param_dtype, contract=(0,))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        gate_btm = project(x_btd, self.gate_dm)
        up_btm = project(x_btd, self.up_dm)
        hidden_btm = constrain(ACTIVATIONS[self.activation](gate_btm) * up_btm, ("batch", "length", "mlp"))
        return project(hidden_btm, self.down_md)


def rope_frequencies(half: int, base: float, scaling: tuple[float, ...] = ()) -> jax.Array:
    """RoPE's `half` inverse frequencies; with `scaling` (factor, low_freq_factor, high_freq_factor,
    original context), Llama 3.1's: wavelengths longer than the original context / low_freq_factor
    are stretched by `factor`, those shorter than it / high_freq_factor kept, the rest interpolated."""
    inv_freq_f = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if not scaling:
        return inv_freq_f
    factor, low, high, context = scaling
    wavelength_f = 2 * math.pi / inv_freq_f
    stretched_f = jnp.where(wavelength_f > context / low, inv_freq_f / factor, inv_freq_f)
    smooth_f = (context / wavelength_f - low) / (high - low)
    between_f = (wavelength_f >= context / high) & (wavelength_f <= context / low)
    return jnp.where(between_f, (1 - smooth_f) * stretched_f / factor + smooth_f * stretched_f, stretched_f)


def apply_rope(x_btnh: jax.Array, positions_bt: jax.Array, base: float, scaling: tuple[float, ...] = ()) -> jax.Array:
    """Rotary position embedding over pairs (first half, second half) of the head dimension."""
    half = x_btnh.shape[-1] // 2
    inv_freq_f = rope_frequencies(half, base, scaling)
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq_f
    sin, cos = jnp.sin(angles_bth)[:, :, None, :], jnp.cos(angles_bth)[:, :, None, :]
    x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_btnh.dtype)
