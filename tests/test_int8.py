"""Weight-only int8 decoding: per-channel rounding, every matrix covered, and the engine decoding with it exactly."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import MeshConfig
from flax import nnx
from model import weights
from model.transformer import abstract_model, forward, prepare_for_decoding, to_per_layer
from parallel.sharding import make_mesh
from tests.helpers import WORLD_MODEL
from tests.serving_helpers import make_engine, prompt_of, served_model
from tests.test_engine import reference_greedy, run_alone


def dequantized_state(state):
    """Every Int8Matrix in `state` as the float32 matrix it stands for."""
    return jax.tree.map(lambda x: x.array() if isinstance(x, weights.Int8Matrix) else x, state,
                        is_leaf=lambda x: isinstance(x, weights.Int8Matrix))


@pytest.mark.slow
def test_a_matrix_rounds_to_within_half_a_step_of_its_output_channels_scale():
    w = jax.random.normal(jax.random.key(0), (64, 4, 8)) * jnp.arange(1, 33).reshape(1, 4, 8)  # channels differ in range
    q = weights.quantize_matrix(w, (0,))
    assert q.values.dtype == jnp.int8 and q.scale.shape == (1, 4, 8)
    np.testing.assert_allclose(q.scale, jnp.max(jnp.abs(w), axis=0, keepdims=True) / 127, rtol=1e-6)
    error = jnp.abs(q.values * q.scale - w)
    assert bool(jnp.all(error <= q.scale / 2 + 1e-6))
    assert int(jnp.max(jnp.abs(q.values.astype(jnp.int32)))) == 127  # each channel uses the whole range


@pytest.mark.parametrize("tied, code_levels", [(True, ()), (False, ()), (True, (8, 5, 5, 5))])
def test_every_matrix_of_the_decode_layout_becomes_int8_and_every_vector_stays(tied, code_levels):
    cfg = dataclasses.replace(WORLD_MODEL, tie_embeddings=tied, image_code_levels=code_levels,
                              audio_code_levels=code_levels)
    abstract = abstract_model(cfg, make_mesh(MeshConfig(data=1, fsdp=1, tensor=1)))
    _, quantized = prepare_for_decoding(cfg, *abstract, int8=True)
    leaves = jax.tree.leaves(quantized, is_leaf=lambda x: isinstance(x, weights.Int8Matrix))
    matrices = [leaf for leaf in leaves if isinstance(leaf, weights.Int8Matrix)]
    assert all(leaf.ndim == 1 for leaf in leaves if not isinstance(leaf, weights.Int8Matrix))
    # 7 a layer (q, k, v, o, gate, up, down), the table, an untied output head, the code digits' rows
    assert len(matrices) == 7 * cfg.num_layers + 1 + (not tied) + bool(code_levels)
    assert all(m.values.dtype == jnp.int8 and m.scale.dtype == jnp.float32 for m in matrices)


def test_a_matrix_that_declares_no_contracted_axes_is_an_error_not_a_guess():
    class Mystery(nnx.Module):
        def __init__(self):
            self.mystery_xy = nnx.Param(jnp.ones((4, 4)))

    with pytest.raises(KeyError, match="mystery_xy.*declares no contracted axes"):
        weights.quantize(nnx.state(Mystery()))


@pytest.mark.slow
def test_each_matrix_is_scaled_per_output_channel_of_the_axes_it_declares():
    """The contracted axes come from where each parameter is made: a scale of size 1 on exactly those."""
    graphdef, state = to_per_layer(*served_model())
    _, quantized = prepare_for_decoding(WORLD_MODEL, graphdef, state, int8=True)
    model = nnx.merge(graphdef, quantized)
    attention, mlp = model.blocks[0].attention, model.blocks[0].mlp
    assert attention.o_nhd.get_value().scale.shape == (1, 1, WORLD_MODEL.d_model)  # o contracts heads and head_dim
    assert attention.q_dnh.get_value().scale.shape == (1, WORLD_MODEL.num_heads, WORLD_MODEL.head_dim)
    assert mlp.down_md.get_value().scale.shape == (1, WORLD_MODEL.d_model)
    assert model.embedding.table_vd.get_value().scale.shape == (WORLD_MODEL.vocab_size, 1)  # a scale per row


@pytest.mark.slow
def test_the_model_reading_int8_matrices_computes_what_it_computes_with_them_dequantized():
    """The scale applied to the products' outputs equals the scale applied to the weights."""
    graphdef, state = to_per_layer(*served_model())
    quantized = weights.quantize(state)
    dequantized = dequantized_state(quantized)
    tokens = jnp.asarray(np.random.default_rng(0).integers(10, 3000, (2, 40)), jnp.int32)
    run = jax.jit(forward, static_argnums=0)
    logits_int8, _ = run(graphdef, quantized, tokens)
    logits_dequantized, _ = run(graphdef, dequantized, tokens)
    np.testing.assert_allclose(logits_int8, logits_dequantized, atol=2e-4)
    logits_float, _ = run(graphdef, state, tokens)
    assert 0 < float(jnp.max(jnp.abs(logits_int8 - logits_float))) < 0.5  # rounded, and only by rounding


@pytest.mark.slow
def test_an_int8_engine_holds_int8_matrices_and_greedy_decodes_as_the_forward_with_them_dequantized():
    graphdef, state = served_model()
    engine = make_engine(graphdef, state, int8_weights=True)
    unstacked_graphdef, unstacked = to_per_layer(graphdef, state)
    matrices = [w for w in jax.tree.leaves(unstacked) if w.ndim >= 2]
    assert sum(w.dtype == jnp.int8 for w in engine.weights) == len(matrices)
    float_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    assert sum(w.nbytes for w in engine.weights) < 0.3 * float_bytes  # int8 values, float32 scales and norms
    # The reference: the plain forward over the whole sequence, each matrix replaced by its int8 rounding.
    rounded = dequantized_state(weights.quantize(unstacked))
    for length in (5, 23):
        prompt = prompt_of(length, seed=length)
        assert run_alone(engine, prompt, 10, temperature=0.0) == reference_greedy((unstacked_graphdef, rounded), prompt, 10)
