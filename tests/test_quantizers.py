"""FSQ's contracts: a bijection between grid codes and indices, exact rounding, straight-through gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenization.fsq import FSQ, round_ste

LEVELS = [(8, 5, 5, 5), (8, 8, 8, 5, 5, 5), (3, 4, 6)]
# The tokenizers' levels in the fast tier; each other set compiles anew (1-2 s).
LEVELS_FAST_FIRST = [LEVELS[0], *(pytest.param(levels, marks=pytest.mark.slow) for levels in LEVELS[1:])]


@pytest.mark.parametrize("levels", LEVELS)
def test_every_index_round_trips_through_a_distinct_grid_code(levels):
    fsq = FSQ(levels)
    assert fsq.codebook_size == int(np.prod(levels))
    indices = jnp.arange(fsq.codebook_size)
    codes_kc = fsq.indices_to_codes(indices)
    np.testing.assert_array_equal(fsq.codes_to_indices(codes_kc), indices)
    assert len(np.unique(np.asarray(codes_kc), axis=0)) == fsq.codebook_size
    # On the grid: channel i is an integer over levels[i] // 2, within the level's range.
    half_width = np.array([l // 2 for l in levels])
    digits_kc = np.asarray(codes_kc, np.float64) * half_width
    np.testing.assert_allclose(digits_kc, np.round(digits_kc), atol=1e-6)  # k / 3 is inexact in float32
    digits_kc = np.round(digits_kc)
    np.testing.assert_array_equal(digits_kc.min(0), -half_width)
    np.testing.assert_array_equal(digits_kc.max(0), np.array(levels) - 1 - half_width)


@pytest.mark.parametrize("levels", LEVELS_FAST_FIRST)
def test_quantize_lands_exactly_on_the_grid_point_whose_cell_holds_the_latent(levels):
    fsq = FSQ(levels)
    codes_kc = np.asarray(fsq.indices_to_codes(jnp.arange(fsq.codebook_size)))
    # Invert the bound: the latent whose bounded value is each grid point (the outermost points,
    # which tanh only approaches, are aimed a fifth of a step inside their cells).
    lv = np.array(levels, np.float64)
    half_l = (lv - 1) * (1 - fsq.eps) / 2
    offset = np.where(lv % 2 == 0, 0.5, 0.0)
    half_width = np.array([l // 2 for l in levels])
    target_kc = np.clip(codes_kc * half_width + offset, -(half_l - 0.2), half_l - 0.2)
    z_kc = np.arctanh(target_kc / half_l) - np.arctanh(offset / half_l)
    np.testing.assert_array_equal(fsq.quantize(jnp.asarray(z_kc, jnp.float32)), codes_kc)
    # Any latent at all, however large, quantizes onto the grid, and a wide spread reaches every level.
    z_nc = 3.0 * jax.random.normal(jax.random.key(0), (20_000, len(levels)))
    q_nc = fsq.quantize(z_nc)
    np.testing.assert_array_equal(fsq.indices_to_codes(fsq.codes_to_indices(q_nc)), q_nc)
    for c, level in enumerate(levels):
        assert len(np.unique(np.asarray(q_nc[:, c]))) == level


def test_zero_latent_is_the_zero_code_for_odd_and_even_levels():
    fsq = FSQ((8, 5, 4, 3))
    np.testing.assert_array_equal(fsq.quantize(jnp.zeros(4)), np.zeros(4))


def test_straight_through_rounding_passes_the_gradient_unchanged():
    x = jax.random.normal(jax.random.key(1), (7, 4)) * 3
    w = jax.random.normal(jax.random.key(2), (7, 4))
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(round_ste(x) * w))(x), w)
    # Through FSQ, rounding is invisible to the gradient: it equals that of the unrounded bound.
    fsq = FSQ((8, 5, 5, 5))
    half_width = np.array([4.0, 2.0, 2.0, 2.0])
    got = jax.grad(lambda x: jnp.sum(fsq.quantize(x) * w))(x)
    want = jax.grad(lambda x: jnp.sum(fsq.bound(x) / half_width * w))(x)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_levels_below_three_are_refused():
    with pytest.raises(ValueError, match=">= 3"):
        FSQ((5, 2))
