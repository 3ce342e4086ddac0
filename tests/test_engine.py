"""The decoding engine and its scheduler: exact greedy decoding, continuous batching, cancels, sampling rows."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from serving.engine import SamplingParams, buckets, widths
from serving.sampling import TOP_LOGPROBS, SamplingRows, likeliest, sample, top_candidates
from serving.text_stream import TextStream
from tests.helpers import facts_on_simulated_devices, jit_forward
from tests.serving_helpers import EOS, REAL_VOCAB, make_engine, prompt_of, request, running, served_model


@pytest.fixture(scope="module")
def model():
    return served_model()


@pytest.fixture(scope="module")
def engine(model):
    engine = make_engine(*model)
    engine.warm_up()
    return engine


def reference_greedy(model, prompt, new_tokens: int) -> list[int]:
    """Greedy decoding with the plain forward over the whole sequence each time: no cache, no engine.
    Over the ids the engine may produce (`REAL_VOCAB`: the padding ids past it never are)."""
    graphdef, state = model
    ids = list(prompt)
    out = []
    for _ in range(new_tokens):
        logits, _ = jit_forward(graphdef, state, jnp.asarray([ids], jnp.int32))
        token = int(jnp.argmax(logits[0, -1, :REAL_VOCAB]))
        out.append(token)
        if token == EOS:
            break
        ids.append(token)
    return out


def run_alone(engine, prompt, max_tokens: int, **params) -> list[int]:
    with running(engine, max_queue=10) as scheduler:
        req, sink = request(prompt, max_tokens, **params)
        scheduler.submit(req)
        return sink.wait().tokens


def test_buckets_are_powers_of_two_up_to_the_cache_length():
    assert buckets(128) == (16, 32, 64, 128)
    assert buckets(100) == (16, 32, 64, 100)


def test_step_widths_are_the_data_shards_times_powers_of_two_up_to_the_slots():
    assert widths(32, 1) == (1, 2, 4, 8, 16, 32)
    assert widths(6, 2) == (2, 4, 6)


# The warmed-up `engine` fixture compiles every prefill bucket and step width (~20 s on 2 cores), so the
# tests that use it are slow; test_api.py's live server drives an engine through the fast tier.
@pytest.mark.slow
def test_a_step_decodes_only_the_slots_up_to_the_last_one_in_use_and_leaves_the_rest(engine):
    prefix = engine.prefill(prompt_of(6, seed=2), SamplingParams(max_tokens=10))
    engine.insert(prefix, 2)
    engine.insert(prefix, 0)
    try:
        before = jax.device_get(engine.decode_state.positions)
        live = np.array([True, False, False, False])
        _, active, _ = jax.device_get(engine.step(live))
        assert len(active) == 1 and active[0]  # width 1: slot 0 alone
        after = jax.device_get(engine.decode_state.positions)
        assert after[0] == before[0] + 1 and after[2] == before[2]  # slot 2 was not stepped
        live[2] = True
        sampled, active, _ = jax.device_get(engine.step(live))
        assert len(active) == 4 and list(active) == [True, False, True, False]
        assert sampled.tokens[2] == prefix_next_token(engine, prefix)  # slot 2 resumes where it was left
    finally:
        engine.reset()


def prefix_next_token(engine, prefix) -> int:
    """The token a prefix's slot decodes at its first step, from a fresh state at full width."""
    saved = engine.decode_state
    engine.reset()
    engine.insert(prefix, engine.slots - 1)
    sampled, _, _ = jax.device_get(engine.step(np.arange(engine.slots) == engine.slots - 1))
    engine.decode_state = saved
    return int(sampled.tokens[-1])


@pytest.mark.slow  # the `engine` fixture
@pytest.mark.parametrize("length", [1, 7, 16, 40])
def test_greedy_through_the_engine_equals_greedy_with_the_plain_forward(model, engine, length):
    prompt = prompt_of(length, seed=length)
    assert run_alone(engine, prompt, 12, temperature=0.0) == reference_greedy(model, prompt, 12)


@pytest.mark.slow  # the `engine` fixture
def test_continuous_batching_gives_each_request_the_tokens_it_gets_alone(engine):
    """10 requests of mixed lengths and budgets through 4 slots, arriving in waves while others decode."""
    specs = [(3 + 5 * i, 4 + (7 * i) % 13) for i in range(10)]
    alone = [run_alone(engine, prompt_of(n, seed=i), m) for i, (n, m) in enumerate(specs)]
    with running(engine, max_queue=20) as scheduler:
        sinks = []
        for i, (n, m) in enumerate(specs):
            req, sink = request(prompt_of(n, seed=i), m)
            scheduler.submit(req)
            sinks.append(sink)
            if i % 3 == 2:
                time.sleep(0.05)  # the next wave arrives mid-decode
        together = [sink.wait().tokens for sink in sinks]
    assert together == alone
    assert all(s.finished.reason in ("stop", "length") for s in sinks)


@pytest.mark.slow  # the `engine` fixture
def test_a_seeded_sampled_request_draws_the_same_tokens_alone_or_beside_others(engine):
    params = dict(temperature=1.0, top_k=20, top_p=0.9, seed=1234)
    alone = run_alone(engine, prompt_of(9, seed=1), 10, **params)
    with running(engine, max_queue=10) as scheduler:
        others = [request(prompt_of(5 + i, seed=50 + i), 10, temperature=0.7, seed=i)[0] for i in range(2)]
        for other in others:
            scheduler.submit(other)
        req, sink = request(prompt_of(9, seed=1), 10, **params)
        scheduler.submit(req)
        assert sink.wait().tokens == alone


@pytest.mark.slow  # the `engine` fixture
def test_a_request_arriving_while_others_decode_is_served_without_waiting_for_them(engine):
    with running(engine, max_queue=10) as scheduler:
        # Text ids only, so neither long request can end early on an <eos>.
        long = [request(prompt_of(8, seed=i), 100, allowed=(10, 1024)) for i in range(2)]
        for req, _ in long:
            scheduler.submit(req)
        while not all(sink.tokens for _, sink in long):
            time.sleep(0.01)
        short, short_sink = request(prompt_of(6, seed=9), 3)
        scheduler.submit(short)
        short_sink.wait()
        assert not any(sink.done.is_set() for _, sink in long), "the short request waited for the long ones"
        assert all(len(sink.tokens) < 100 for _, sink in long)
        for req, _ in long:
            scheduler.cancel(req)


@pytest.mark.slow  # the `engine` fixture
def test_a_cancelled_request_frees_its_slot_at_once(engine):
    with running(engine, max_queue=10) as scheduler:
        req, sink = request(prompt_of(8, seed=3), 100)
        scheduler.submit(req)
        while not sink.tokens:
            time.sleep(0.01)
        scheduler.cancel(req)
        sink.wait()
        assert sink.finished.reason == "cancelled"
        deadline = time.time() + 5
        while scheduler.slots_in_use and time.time() < deadline:
            time.sleep(0.01)
        assert scheduler.slots_in_use == 0
        assert len(sink.tokens) < 100


@pytest.mark.slow  # the `engine` fixture
def test_a_request_stops_at_its_stop_id_and_counts_it(model, engine):
    prompt = prompt_of(10, seed=4)
    free_run = reference_greedy(model, prompt, 8)
    stop = free_run[3]
    tokens = run_alone(engine, prompt, 8, stop_ids=(stop,))
    assert tokens == free_run[: free_run.index(stop) + 1]


@pytest.mark.slow  # the `engine` fixture
def test_more_requests_than_slots_all_complete_and_none_is_lost(engine):
    with running(engine, max_queue=100) as scheduler:
        sinks = []
        for i in range(40):
            req, sink = request(prompt_of(2 + i % 30, seed=100 + i), 1 + i % 9, temperature=float(i % 2), seed=i)
            scheduler.submit(req)
            sinks.append(sink)
        for i, sink in enumerate(sinks):
            sink.wait()
            assert 1 <= len(sink.tokens) <= 1 + i % 9
    assert scheduler.slots_in_use == 0


# ---- sampling rows ---------------------------------------------------------------------------


def rows(batch=3, **fields):
    base = SamplingRows.zeros(batch)
    base = base.replace(allowed=jnp.asarray([[0, 50]] * batch, jnp.int32))
    return base.replace(**{k: jnp.asarray(v) for k, v in fields.items()})


def test_greedy_sampled_and_top_k_1_rows_in_one_batch_each_follow_their_own_parameters():
    logits = jax.random.normal(jax.random.key(0), (3, 50)) * 3
    out = sample(logits, rows(temperature=[0.0, 1.0, 1.0], top_k=[0, 0, 1], seed=np.uint32([0, 1, 2]),
                              report=[True, False, False]), jnp.zeros(3, jnp.int32))
    best = np.asarray(jnp.argmax(logits, -1))
    assert out.tokens[0] == best[0] and out.tokens[2] == best[2]
    np.testing.assert_allclose(out.logprobs, jax.nn.log_softmax(logits)[jnp.arange(3), out.tokens], rtol=1e-5)


@pytest.mark.parametrize("batch", [3, 1])  # a single row takes its logsumexp as a row (sampling.py)
def test_the_reported_alternatives_are_the_likeliest_ids_with_their_log_probabilities(batch):
    logits = jax.random.normal(jax.random.key(3), (batch, 50)) * 3
    out = sample(logits, rows(batch, temperature=[0.0, 1.0, 0.5][:batch], seed=np.uint32([0, 1, 2][:batch]),
                              report=[True] * batch), jnp.zeros(batch, jnp.int32))
    expected_ids = np.argsort(-np.asarray(logits), axis=-1)[:, :TOP_LOGPROBS]
    np.testing.assert_array_equal(out.top_ids, expected_ids)
    logprobs = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(out.top_logprobs, np.take_along_axis(np.asarray(logprobs), expected_ids, -1), rtol=1e-5)


@pytest.mark.parametrize("batch", [3, 1])
def test_a_greedy_batch_takes_the_likeliest_allowed_ids_and_reports_nothing(batch):
    logits = jax.random.normal(jax.random.key(5), (batch, 50)) * 3
    greedy = sample(logits, rows(batch), jnp.zeros(batch, jnp.int32))  # every row greedy, none reports
    reported = sample(logits, rows(batch, report=[True] * batch), jnp.zeros(batch, jnp.int32))
    np.testing.assert_array_equal(greedy.tokens, np.argmax(logits, -1))
    np.testing.assert_array_equal(greedy.tokens, reported.tokens)
    assert np.isnan(greedy.logprobs).all() and not np.isnan(reported.logprobs).any()
    limited = sample(logits, rows(batch, allowed=[[20, 30]] * batch), jnp.zeros(batch, jnp.int32))
    np.testing.assert_array_equal(limited.tokens, 20 + np.argmax(logits[:, 20:30], -1))


def test_an_id_that_is_no_token_never_comes_out_however_likely():
    logits = jax.random.normal(jax.random.key(7), (3, 50)).at[:, 10:20].set(50.0)  # ids 10-19: the likeliest by far
    is_token = np.arange(50) < 10  # ... but no token (a text range wider than its SentencePiece pieces)
    for temperature in (0.0, 1.0, 2.0):
        out = sample(logits, rows(temperature=[temperature] * 3, seed=np.uint32([0, 1, 2]), report=[True] * 3),
                     jnp.zeros(3, jnp.int32), is_token)
        assert (np.asarray(out.tokens) < 10).all()
        assert (np.asarray(out.top_ids) < 10).all()


@pytest.mark.parametrize("vocab", [pytest.param(8192, marks=pytest.mark.slow), 5000,  # many blocks; a padded last block;
                                   pytest.param(63, marks=pytest.mark.slow)])  # a single block (each compiles: 1-2 s)
def test_likeliest_is_argmax_with_the_lowest_id_among_equals(vocab):
    logits = jax.random.normal(jax.random.key(vocab), (4, vocab))
    logits = logits.at[0, vocab - 1].set(9.0).at[0, vocab // 2].set(9.0)  # equals, in different blocks
    logits = logits.at[1, 5].set(9.0).at[1, 7].set(9.0)  # equals in one block
    logits = logits.at[3].set(-jnp.inf)  # a row with no allowed id
    np.testing.assert_array_equal(likeliest(logits), [vocab // 2, 5, np.argmax(logits[2]), 0])


@pytest.mark.parametrize("vocab", [8192, 5000, 1000])  # more blocks than k; a padded last block; too few
def test_top_candidates_in_two_passes_are_top_k(vocab):
    logits = jax.random.normal(jax.random.key(vocab), (4, vocab)) * 3
    logits = logits.at[1].set(-jnp.inf).at[1, 7].set(0.0)  # a row allowed one id: the rest are ties at -inf
    values, ids = map(np.asarray, top_candidates(logits, 64))
    expected_values, expected_ids = map(np.asarray, jax.lax.top_k(logits, 64))
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(ids[[0, 2, 3]], expected_ids[[0, 2, 3]])
    assert ids[1, 0] == 7 and len(set(ids[1].tolist())) == 64 and (ids < vocab).all()


def test_top_p_keeps_only_the_smallest_set_holding_that_mass():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05] + [1e-9] * 46] * 3))
    seen = set()
    for seed in range(60):
        out = sample(logits, rows(temperature=[1.0] * 3, top_p=[0.7] * 3, seed=np.uint32([seed] * 3)),
                     jnp.zeros(3, jnp.int32))
        seen |= set(np.asarray(out.tokens).tolist())
    assert seen == {0, 1}


def test_a_row_only_produces_ids_in_its_allowed_range():
    logits = jnp.zeros((3, 50)).at[:, 0].set(10.0)
    allowed = jnp.asarray([[0, 50], [20, 30], [40, 41]], jnp.int32)
    out = sample(logits, SamplingRows.zeros(3).replace(allowed=allowed, temperature=jnp.ones(3)), jnp.zeros(3, jnp.int32))
    tokens = np.asarray(out.tokens)
    assert tokens[0] == 0 and 20 <= tokens[1] < 30 and tokens[2] == 40


# ---- text as it streams ----------------------------------------------------------------------


def test_streamed_text_never_shows_a_stop_string_or_what_follows_it():
    pieces = ["a", " sm", "all", " re", "d", " ci", "rcle"]
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    stream = TextStream(decode, stop=[" red"])
    released = [stream.push(i) for i in range(len(pieces))]
    assert "".join(released) == "a small"
    assert stream.stopped and stream.finish() == ""


def test_streamed_text_joins_to_the_whole_decode_when_no_stop_string_appears():
    pieces = ["a", " re", "d", " ci", "rcle"]
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    stream = TextStream(decode, stop=["red circle!"])
    released = "".join(stream.push(i) for i in range(len(pieces))) + stream.finish()
    assert released == "a red circle" and not stream.stopped


def test_streamed_text_decodes_a_short_window_per_token_and_joins_to_the_whole_decode():
    """SentencePiece-like: a reply's first piece loses its leading space; a character split over
    two byte pieces shows as U+FFFD until both are in."""
    pieces = ["\u2581a", "\u2581red", "\u2581ci", "rcle", "\u2581", "<e2>", "<9c><93>", "\u2581ok"]
    calls = []

    def decode(ids):
        calls.append(len(ids))
        raw = "".join(pieces[i] for i in ids)
        raw = raw.replace("<e2><9c><93>", "\u2713").replace("<e2>", "\ufffd").replace("<9c><93>", "\ufffd")
        return raw.replace("\u2581", " ").removeprefix(" ")

    stream = TextStream(decode)
    released = [stream.push(i) for i in range(len(pieces))]
    assert max(calls) <= 3, "each token should decode a window of a few ids, not the whole reply"
    assert "".join(released) + stream.finish() == decode(range(len(pieces))) == "a red circle \u2713 ok"
    assert released[5] == ""  # half of the check mark waits for its other half


# ---- tensor-parallel decoding ----------------------------------------------------------------


@pytest.mark.slow  # an 8-device subprocess
def test_tensor_parallel_decoding_on_8_simulated_devices_equals_one_device_with_float_and_int8_weights_and_a_prefix_cache():
    facts = facts_on_simulated_devices("serving_sharded_check.py")
    assert facts["mesh"] == {"dcn_data": 1, "data": 2, "fsdp": 1, "tensor": 4}
    assert facts["mlp_weight_shards"] == 4, "the MLP weights are not split over the tensor axis"
    assert facts["sharded_tokens"] == facts["single_device_tokens"]
    assert facts["int8_mlp_weight_shards"] == 4, "the int8 MLP weights are not split over the tensor axis"
    assert facts["int8_sharded_tokens"] == facts["int8_single_device_tokens"]
    # With a prefix cache on the mesh, prompts sharing 40 tokens reuse them and answer as uncached on one device.
    assert facts["prefix_cache_blocks"] > 2 and facts["prefix_cached_tokens"] == facts["uncached_single_device_tokens"]
