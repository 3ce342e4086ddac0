"""Finite scalar quantization (FSQ, Mentzer et al. 2023, arXiv:2309.15505).

Each latent channel is squashed into a bounded range and rounded to one of `levels[i]` values;
the code is the tuple of rounded channels, so the codebook is the product grid of
prod(levels) points. There is no learned codebook, hence nothing to collapse and no auxiliary
loss: the encoder only has to spread its outputs over the grid, and rounding passes gradients
straight through.

Codes are kept in the normalised form the decoder reads (channel i takes values
k / (levels[i] // 2) for integer k), and map to a single integer index per position by
reading the channels as digits of a mixed-radix number (first channel least significant).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def round_ste(x: jax.Array) -> jax.Array:
    """Round forward, identity backward (straight-through estimator)."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


@dataclasses.dataclass(frozen=True)
class FSQ:
    """The quantizer for a fixed tuple of levels; stateless, so it is a plain frozen value."""

    levels: tuple[int, ...]
    eps: float = 1e-3  # keeps tanh's image strictly inside the outermost rounding cells

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(int(l) for l in self.levels))
        if not self.levels or min(self.levels) < 3:
            # Two levels cannot work here: the even-level shift atanh(0.5 / half_l) needs half_l > 0.5.
            raise ValueError(f"FSQ levels must be a non-empty tuple of integers >= 3, got {self.levels}")

    @property
    def num_channels(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.levels))

    def _levels(self) -> np.ndarray:
        return np.asarray(self.levels, np.float32)

    def _half_width(self) -> np.ndarray:
        """Integer digits run over [-half_width, levels - 1 - half_width]."""
        return np.asarray([l // 2 for l in self.levels], np.float32)

    def _basis(self) -> np.ndarray:
        return np.cumprod([1] + list(self.levels[:-1])).astype(np.int32)

    def levels_are_even(self) -> np.ndarray:
        return np.asarray([l % 2 == 0 for l in self.levels])

    def bound(self, z_c: jax.Array) -> jax.Array:
        """Squash each channel so that rounding yields exactly `levels[i]` integers.

        Odd L: tanh scaled to (-(L-1)/2, (L-1)/2), rounding to {-(L-1)/2 .. (L-1)/2}.
        Even L: the same band shifted down by half a step, rounding to {-L/2 .. L/2 - 1}; the
        input shift atanh(0.5 / half_l) keeps z = 0 mapping to 0.
        """
        levels = self._levels()
        half_l = (levels - 1) * (1 - self.eps) / 2
        offset = np.where(self.levels_are_even(), 0.5, 0.0).astype(np.float32)
        shift = np.arctanh(offset / half_l).astype(np.float32)
        return jnp.tanh(z_c.astype(jnp.float32) + shift) * half_l - offset

    def quantize(self, z_c: jax.Array) -> jax.Array:
        """Latents [..., C] -> normalised grid codes [..., C] in [-1, 1], straight-through."""
        return round_ste(self.bound(z_c)) / self._half_width()

    def codes_to_indices(self, codes_c: jax.Array) -> jax.Array:
        """Grid codes [..., C] -> int32 indices [...] in [0, codebook_size)."""
        half_width = self._half_width()
        digits_c = jnp.round(codes_c * half_width + half_width).astype(jnp.int32)
        return jnp.sum(digits_c * self._basis(), axis=-1).astype(jnp.int32)

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """Int indices [...] -> normalised grid codes [..., C] (float32)."""
        digits_c = (jnp.asarray(indices, jnp.int32)[..., None] // self._basis()) % np.asarray(self.levels, np.int32)
        half_width = self._half_width()
        return (digits_c.astype(jnp.float32) - half_width) / half_width
