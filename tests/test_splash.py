"""Splash attention (model/splash.py) in Pallas interpret mode on CPU against XLA's attention, and its choice of platform."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import MeshConfig
from model.attention import grouped_attention
from parallel.sharding import make_mesh
from model.splash import block_sizes, splash_attention
from model.transformer import forward, init_model
from tests.helpers import facts_on_simulated_devices, small_model_config


def packed_inputs(batch: int, length: int, heads: int, kv_heads: int, head_dim: int, seed: int = 0):
    """q, k, v and segment ids of rows packed the way the pipeline packs them: several sequences of
    uneven lengths, then padding (segment 0); one row with no padding."""
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim))
    k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim))
    v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim))
    rng = np.random.default_rng(seed)
    segments = np.zeros((batch, length), np.int32)
    for row in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, length), 3, replace=False))
        end = length if row == 0 else cuts[-1]  # row 0 full, the others padded after their last sequence
        for segment, (start, stop) in enumerate(zip([0, *cuts[:-1]], [*cuts[:-1], end]), start=1):
            segments[row, start:stop] = segment
    return q, k, v, jnp.asarray(segments)


def reference_attention(q, k, v, segments):
    """The model's XLA attention with the model's mask (positions restart in each sequence)."""
    starts = jnp.concatenate([jnp.ones_like(segments[:, :1]), segments[:, 1:] != segments[:, :-1]], axis=1)
    index = jnp.arange(segments.shape[1])
    positions = index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    mask = ((segments[:, :, None] == segments[:, None, :]) & (positions[:, None, :] <= positions[:, :, None])
            & (segments[:, None, :] != 0))
    return grouped_attention(q, k.transpose(0, 2, 3, 1), v, mask)  # keys length-last


def real_loss(attention):
    """A scalar of the real (non-padding) positions' outputs, for gradients."""
    def loss(q, k, v, segments):
        out = attention(q, k, v, segments)
        return jnp.sum(jnp.where((segments != 0)[:, :, None, None], out, 0.0) ** 2)
    return loss


@pytest.mark.slow  # Pallas interpret mode
@pytest.mark.parametrize("heads, kv_heads", [(4, 1), (4, 2), (4, 4)])
def test_splash_in_interpret_mode_matches_xla_attention_at_every_real_position(heads, kv_heads):
    q, k, v, segments = packed_inputs(batch=3, length=256, heads=heads, kv_heads=kv_heads, head_dim=64)
    out = jax.jit(lambda *a: splash_attention(*a, interpret=True))(q, k, v, segments)
    want = reference_attention(q, k, v, segments)
    real = np.asarray(segments) != 0
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(want)[real], atol=2e-5)


@pytest.mark.slow  # Pallas interpret mode
def test_splash_gradients_in_interpret_mode_match_xla_attention():
    q, k, v, segments = packed_inputs(batch=2, length=256, heads=4, kv_heads=1, head_dim=64, seed=1)
    kernel = lambda *a: splash_attention(*a, interpret=True)  # noqa: E731
    grads = jax.jit(jax.grad(real_loss(kernel), argnums=(0, 1, 2)))(q, k, v, segments)
    want = jax.grad(real_loss(reference_attention), argnums=(0, 1, 2))(q, k, v, segments)
    for got, expected in zip(grads, want):
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow  # an 8-device subprocess
def test_splash_on_a_mesh_of_8_simulated_devices_matches_xla_attention_shard_by_shard():
    facts = facts_on_simulated_devices("splash_sharded_check.py")
    assert facts["mesh"] == {"dcn_data": 1, "data": 2, "fsdp": 1, "tensor": 4}
    for kv_heads in ("kv1", "kv2"):
        assert facts[kv_heads]["output_shards"] == 8, "the output is not split over rows and heads"
        assert facts[kv_heads]["max_diff"] < 2e-5 and facts[kv_heads]["max_grad_diff"] < 1e-4, facts


def test_blocks_are_the_largest_of_512_256_128_dividing_the_length_and_other_lengths_are_refused():
    assert [block_sizes(n).block_q for n in (128, 384, 768, 2048)] == [128, 128, 256, 512]
    with pytest.raises(ValueError, match="multiple of 128, got 1000.*data.seq_len.*attention_backend=xla"):
        block_sizes(1000)


@pytest.mark.slow
@pytest.mark.parametrize("length", [128, 96])  # the kernel traced (and not lowered), and a length it cannot take
def test_the_splash_backend_off_tpu_is_xla_attention(length):
    """Off TPU `jax.lax.platform_dependent` lowers XLA's attention: a CPU run of a splash config is
    exact, forward and backward."""
    cfg = small_model_config()
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
    tokens = jnp.asarray(np.random.default_rng(0).integers(10, 200, (2, length)), jnp.int32)
    logits, grads = {}, {}
    for backend in ("xla", "splash"):  # under full remat, as the pod plans train
        graphdef, state = init_model(dataclasses.replace(cfg, attention_backend=backend, remat_policy="full"), mesh)
        logits[backend] = jax.jit(forward, static_argnums=0)(graphdef, state, tokens)[0]
        grads[backend] = jax.jit(jax.grad(lambda s: jnp.mean(forward(graphdef, s, tokens)[0] ** 2)))(state)
    np.testing.assert_array_equal(logits["xla"], logits["splash"])
    for got, want in zip(jax.tree.leaves(grads["splash"]), jax.tree.leaves(grads["xla"])):
        np.testing.assert_array_equal(got, want)
