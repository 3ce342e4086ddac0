"""The decoder's numerical contracts: cache == full forward, causality, packing, remat, z-loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.attention import KVCache, grouped_attention
from model.layers import Embedding
from model.loss import cross_entropy
from model.transformer import Transformer, to_per_layer, to_stacked
from parallel.sharding import LOGICAL_RULES
from tokenization.fsq import FSQ
from tests.helpers import build, jit_forward, small_model_config

VARIANTS = {
    "mqa": dict(num_kv_heads=1),
    "gqa_qknorm_untied": dict(num_kv_heads=2, qk_norm=True, tie_embeddings=False),
    "mha": dict(num_kv_heads=4),
}


def random_tokens(key, shape, cfg):
    return jax.random.randint(jax.random.key(key), shape, 0, cfg.vocab_size)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_then_decode_matches_full_forward_for_ragged_prompts(variant):
    cfg = small_model_config(**VARIANTS[variant])
    graphdef, state = build(cfg)
    decoding = to_per_layer(graphdef, state)  # the layout that takes a KV cache
    prompt_lens = np.array([5, 9, 1])  # different lengths in one batch, right-padded to 9
    steps, batch, padded = 6, 3, 9
    sequences = np.asarray(random_tokens(1, (batch, padded + steps), cfg))

    # Prefill: each row's prompt, padding marked with segment id 0.
    prompt = np.where(np.arange(padded) < prompt_lens[:, None], sequences[:, :padded], 0)
    segments = (np.arange(padded) < prompt_lens[:, None]).astype(np.int32)
    positions = np.broadcast_to(np.arange(padded), (batch, padded))
    cache = KVCache.init(cfg, batch, 32)
    # Only each prompt's last position gets logits (`logits_at_b`), as the engine's prefill asks.
    logits, cache = jit_forward(*decoding, prompt, positions, segments, cache, prompt_lens - 1)
    assert logits.shape == (batch, 1, cfg.vocab_size)
    cached = [logits[:, 0]]

    # Decode: one token per step, each row at its own position.
    for step in range(steps):
        pos = prompt_lens + step
        token = sequences[np.arange(batch), pos][:, None]
        logits, cache = jit_forward(*decoding, token, pos[:, None], np.ones((batch, 1), np.int32), cache)
        cached.append(logits[:, 0])

    for b in range(batch):
        full_len = prompt_lens[b] + steps
        row = sequences[b : b + 1, :full_len]
        full_logits, _ = jit_forward(graphdef, state, row)
        expected = full_logits[0, prompt_lens[b] - 1 : full_len]
        got = jnp.stack([c[b] for c in cached])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"row {b}")


def test_changing_a_future_token_never_changes_earlier_logits():
    cfg = small_model_config(num_kv_heads=2)
    graphdef, state = build(cfg)
    tokens = random_tokens(2, (2, 16), cfg)
    base, _ = jit_forward(graphdef, state, tokens)
    for t in (3, 10, 15):
        changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
        logits, _ = jit_forward(graphdef, state, changed)
        np.testing.assert_array_equal(logits[:, :t], base[:, :t])
        assert not np.allclose(logits[:, t], base[:, t]), "the changed token itself must change its logits"


@pytest.mark.slow
def test_packed_sequences_give_the_same_logits_as_each_run_alone():
    cfg = small_model_config(num_kv_heads=2, qk_norm=True)
    graphdef, state = build(cfg)
    a, b = random_tokens(3, (1, 7), cfg), random_tokens(4, (1, 9), cfg)
    packed = jnp.concatenate([a, b, jnp.zeros((1, 4), a.dtype)], axis=1)  # 7 + 9 + 4 padding = 20
    positions = jnp.array([list(range(7)) + list(range(9)) + [0] * 4])
    segments = jnp.array([[1] * 7 + [2] * 9 + [0] * 4])
    logits, _ = jit_forward(graphdef, state, packed, positions, segments)
    alone_a, _ = jit_forward(graphdef, state, a)
    alone_b, _ = jit_forward(graphdef, state, b)
    np.testing.assert_allclose(logits[:, :7], alone_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[:, 7:16], alone_b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_remat_policies_change_memory_not_gradients():
    tokens = random_tokens(5, (2, 12), small_model_config())

    def grads(policy):
        cfg = small_model_config(remat_policy=policy)
        graphdef, state = build(cfg)
        params = nnx.state(nnx.merge(graphdef, state), nnx.Param)

        def loss(params):
            model = nnx.merge(graphdef, params)
            logits, _ = model(tokens)
            return cross_entropy(logits[:, :-1], tokens[:, 1:], jnp.ones((2, 11)))[0]

        return jax.jit(jax.grad(loss))(params)

    reference = grads("none")
    for policy in ("full", "dots_saveable", "dots_with_no_batch_dims_saveable"):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), grads(policy), reference)


@pytest.mark.slow
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_grouped_attention_matches_jax_nn_attention_values_and_gradients(kv_heads):
    q = jax.random.normal(jax.random.key(0), (2, 7, 4, 8))
    k, v = jax.random.normal(jax.random.key(1), (2, 2, 9, kv_heads, 8))
    # causal within two packed segments, over 9 keys (a cache longer than the chunk)
    seg_q, seg_k = np.array([1, 1, 1, 2, 2, 2, 2]), np.array([1, 1, 1, 2, 2, 2, 2, 2, 2])
    pos_q, pos_k = np.array([0, 1, 2, 0, 1, 2, 3]), np.array([0, 1, 2, 0, 1, 2, 3, 4, 5])
    mask = (seg_q[:, None] == seg_k[None]) & (pos_k[None] <= pos_q[:, None])
    mask_bts = jnp.asarray(np.broadcast_to(mask, (2, 7, 9)))

    def ours(q, k, v):
        return grouped_attention(q, k.transpose(0, 2, 3, 1), v, mask_bts)  # keys length-last

    def reference(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask_bts[:, None], implementation="xla")

    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-6)
    weights = jax.random.normal(jax.random.key(2), q.shape)
    grad = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * weights), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), grad(ours), grad(reference))


@pytest.mark.slow
def test_a_query_that_may_see_no_key_gets_finite_output_and_gradients():
    q = jax.random.normal(jax.random.key(0), (1, 2, 2, 8))  # 2 queries, 2 heads
    k, v = jax.random.normal(jax.random.key(1), (2, 1, 3, 1, 8))  # 3 keys, 1 kv head
    mask_bts = jnp.asarray(np.array([[[True, False, False], [False, False, False]]]))  # query 2: padding
    keys = k.transpose(0, 2, 3, 1)  # length-last
    out = grouped_attention(q, keys, v, mask_bts)
    grads = jax.grad(lambda q: jnp.sum(grouped_attention(q, keys, v, mask_bts)))(q)
    assert np.isfinite(out).all() and np.isfinite(grads).all()
    np.testing.assert_allclose(out[0, 0], jnp.repeat(v[0, 0], 2, axis=0), rtol=1e-6)  # its one key's value, per head


@pytest.mark.slow
def test_an_unrolled_scan_and_the_per_layer_layout_give_the_same_logits():
    tokens = random_tokens(6, (2, 12), small_model_config())
    results = []
    for unroll, per_layer in ((1, False), (2, False), (1, True)):
        cfg = small_model_config(scan_unroll=unroll, tie_embeddings=False)
        graphdef, state = build(cfg)  # same seed: same weights
        if per_layer:
            graphdef, state = to_per_layer(graphdef, state)
            blocks = nnx.merge(graphdef, state).blocks
            assert len(blocks) == cfg.num_layers and blocks[0].mlp.down_md.shape == (cfg.mlp_dim, cfg.d_model)
        results.append(jit_forward(graphdef, state, tokens)[0])
    for other in results[1:]:
        np.testing.assert_allclose(results[0], other, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_layout_is_named_and_the_two_conversions_are_inverses():
    cfg = small_model_config(tie_embeddings=False)
    graphdef, state = build(cfg)
    assert nnx.merge(graphdef, state).layout == "stacked"
    per_layer = to_per_layer(graphdef, state)
    assert nnx.merge(*per_layer).layout == "per_layer"
    # Made per layer from the start, the model has the same parameter tree as the converted one.
    fresh = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0), layout="per_layer"))[1]
    assert jax.tree.structure(fresh) == jax.tree.structure(per_layer[1])
    back_graphdef, back = to_stacked(*per_layer)
    assert back_graphdef == graphdef
    jax.tree.map(np.testing.assert_array_equal, back, state)
    with pytest.raises(ValueError, match="layout"):
        Transformer(cfg, rngs=nnx.Rngs(0), layout="scanned")


def test_a_cache_is_per_layer_and_the_stacked_layout_refuses_one():
    cfg = small_model_config()
    graphdef, state = build(cfg)
    tokens = random_tokens(6, (2, 5), cfg)
    _, cache = jit_forward(*to_per_layer(graphdef, state), tokens, None, None, KVCache.init(cfg, 2, 16))
    assert len(cache.k) == cfg.num_layers and cache.k[0].shape == (2, cfg.num_kv_heads, cfg.head_dim, 16)
    assert cache.v[0].shape == (2, 16, cfg.num_kv_heads, cfg.head_dim)  # keys length-last, values length-second
    with pytest.raises(ValueError, match="stacked layout scores whole sequences"):
        jit_forward(graphdef, state, tokens, None, None, KVCache.init(cfg, 2, 16))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_tracks_float32_logits():
    cfg32 = small_model_config()
    cfg16 = dataclasses.replace(cfg32, compute_dtype="bfloat16")
    tokens = random_tokens(6, (2, 12), cfg32)
    graphdef32, state = build(cfg32)
    graphdef16, state16 = build(cfg16)
    assert {x.dtype for x in jax.tree.leaves(state16)} == {jnp.dtype("float32")}
    logits32, _ = jit_forward(graphdef32, state, tokens)
    logits16, _ = jit_forward(graphdef16, state16, tokens)
    assert logits16.dtype == jnp.float32
    assert float(jnp.abs(logits16 - logits32).max()) < 0.1 * float(jnp.abs(logits32).max())


def test_tied_model_has_no_output_matrix_and_untied_has_one():
    tied = nnx.state(nnx.merge(*build(small_model_config(tie_embeddings=True))), nnx.Param)
    untied = nnx.state(nnx.merge(*build(small_model_config(tie_embeddings=False))), nnx.Param)
    assert "unembed_dv" not in tied and untied["unembed_dv"].get_value().shape == (64, 256)


@pytest.mark.slow
def test_z_loss_adds_weighted_mean_squared_log_normaliser():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 3
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    plain, parts = cross_entropy(logits, targets, mask)
    with_z, _ = cross_entropy(logits, targets, mask, z_loss_weight=0.5)

    log_p = np.asarray(jax.nn.log_softmax(logits))
    log_z = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
    picked = np.take_along_axis(log_p, np.asarray(targets)[..., None], -1)[..., 0]
    m = np.asarray(mask, bool)
    np.testing.assert_allclose(plain, -picked[m].mean(), rtol=1e-5)
    np.testing.assert_allclose(parts["z_loss"], (log_z[m] ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(with_z, -picked[m].mean() + 0.5 * (log_z[m] ** 2).mean(), rtol=1e-5)


def test_every_parameter_carries_logical_names_the_rules_table_knows():
    known = {name for name, _ in LOGICAL_RULES}
    state = build(small_model_config(qk_norm=True, tie_embeddings=False))[1]
    for path, variable in jax.tree.leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == variable.get_value().ndim, path
        assert set(names) <= known, (path, names)


def test_a_code_row_is_its_own_row_plus_one_row_per_fsq_digit():
    levels = (8, 5, 5, 5)
    embedding = Embedding(3072, 16, jnp.float32, nnx.Rngs(0), ((1024, levels), (2024, levels)))
    table, own, digit_rows = (np.asarray(a) for a in (embedding.table().array(), embedding.table_vd[...],
                                                       embedding.digits_ld[...]))
    half = np.array([level // 2 for level in levels])
    first_row_of_level = np.cumsum([0, *levels[:-1]])
    for first, first_digit_row in ((1024, 0), (2024, sum(levels))):
        for code in (0, 7, 523, 999):
            digits = np.round(np.asarray(FSQ(levels).indices_to_codes(code)) * half + half).astype(int)
            expected = own[first + code] + digit_rows[first_digit_row + first_row_of_level + digits].sum(0)
            np.testing.assert_allclose(table[first + code], expected, atol=1e-5)
    np.testing.assert_array_equal(table[:1024], own[:1024])  # text ids and the unused tail keep their own rows
    np.testing.assert_array_equal(table[3024:], own[3024:])


def test_code_levels_that_do_not_make_the_code_count_are_refused():
    with pytest.raises(ValueError, match="model.image_code_levels"):
        small_model_config(image_vocab_size=30, image_code_levels=(8, 5))
