"""Prefix caching: a prompt that starts with cached blocks reuses their keys and values, never
changes its answer for it, and the cache stays within its bound."""

import time

import numpy as np
import pytest

from serving.engine import SamplingParams
from serving.metrics import ServingMetrics
from serving.offline import generate
from serving.prefix_cache import BLOCK, PrefixCache, block_names
from serving.scheduler import Scheduler
from tests.serving_helpers import EOS, make_engine, prompt_of, request, running, served_model

BOI, EOI = 3, 4  # the world vocabulary's <boi> and <eoi>
IMAGE_IDS = (1024, 2024)  # image codes follow the 1,024 text ids


@pytest.fixture(scope="module")
def model():
    return served_model()


@pytest.fixture(scope="module")
def engines(model):
    """The same model without and with a prefix cache of 12 blocks."""
    return make_engine(*model), make_engine(*model, prefix_cache_tokens=12 * BLOCK)


def picture(seed: int) -> np.ndarray:
    codes = np.random.default_rng(seed).integers(*IMAGE_IDS, 64)
    return np.concatenate([[BOI], codes, [EOI]]).astype(np.int32)


def conversation_prompts() -> list[np.ndarray]:
    """Shared and unshared prefixes, a picture sent twice, and a second turn that starts with the first."""
    system = prompt_of(40, seed=1)
    turn1 = np.concatenate([prompt_of(5, seed=2), picture(3), prompt_of(9, seed=4)[1:]])
    turn2 = np.concatenate([turn1, prompt_of(12, seed=5)[1:]])
    return [np.concatenate([system, prompt_of(n, seed=10 + n)[1:]]) for n in (2, 7, 25)] + [
        turn1, turn2, prompt_of(30, seed=6), prompt_of(33, seed=6), system[:2 * BLOCK],  # a prompt of whole cached blocks
        np.concatenate([prompt_of(3, seed=7), picture(3)])]


@pytest.mark.slow  # compiles engines
def test_greedy_outputs_are_identical_with_the_prefix_cache_on_and_off(engines):
    off, on = engines
    prompts = conversation_prompts()
    params = SamplingParams(max_tokens=12)
    expected = generate(off, prompts, params)
    metrics = ServingMetrics()
    scheduler = Scheduler(on, max_queue=len(prompts), metrics=metrics)
    reused = []
    for prompt, want in zip(prompts, expected):  # one by one: each prompt finds what the ones before it left
        hits = metrics.prefix_cache_hit_tokens._value.get()
        req, sink = request(prompt, 12)
        scheduler.submit(req)
        scheduler.run_until_idle()
        reused.append(int(metrics.prefix_cache_hit_tokens._value.get() - hits))
        assert sink.tokens == want.tolist(), f"prompt {len(reused) - 1}: reused {reused[-1]} tokens"
    assert metrics.prefix_cache_miss_tokens._value.get() == sum(map(len, prompts)) - sum(reused)
    # The cache was used: a system prompt's two blocks, the first turn's whole blocks (its picture
    # among them), a block shared by two prompts, a prompt of cached blocks but the one holding its
    # last token; a picture after another start is no prefix of anything cached.
    assert reused == [0, 2 * BLOCK, 2 * BLOCK, 0, len(prompts[3]) // BLOCK * BLOCK, 0, BLOCK, BLOCK, 0], reused


@pytest.mark.slow  # compiles engines
def test_a_concurrent_batch_with_shared_prefixes_gets_the_answers_it_gets_uncached(engines):
    off, on = engines
    system = prompt_of(50, seed=8)
    prompts = [np.concatenate([system, prompt_of(n, seed=20 + n)[1:]]) for n in range(2, 10)]
    params = SamplingParams(max_tokens=10)
    assert [a.tolist() for a in generate(on, prompts, params)] == [a.tolist() for a in generate(off, prompts, params)]


@pytest.mark.slow  # compiles engines
def test_eviction_keeps_the_cache_within_its_bound_under_a_stream_of_distinct_prefixes(engines):
    _, on = engines
    prompts = [prompt_of(3 * BLOCK + 1, seed=100 + i) for i in range(10)]
    generate(on, prompts, SamplingParams(max_tokens=2))
    cache = on.prefix_cache
    assert cache.cached_blocks == cache.capacity == 12 and cache.held_blocks == 0
    # The four most recent prompts are cached whole; the first ones were evicted.
    assert [cache.cached_blocks_of(p) for p in prompts] == [0] * 6 + [3] * 4


@pytest.mark.slow  # compiles engines
def test_a_cancelled_requests_blocks_are_released_and_can_be_evicted(engines):
    _, on = engines
    prompt = prompt_of(4 * BLOCK + 3, seed=200)
    with running(on, max_queue=10) as scheduler:
        req, sink = request(prompt, 100)
        scheduler.submit(req)
        while not sink.tokens:
            time.sleep(0.01)
        assert on.prefix_cache.held_blocks == 4  # held while it runs
        scheduler.cancel(req)
        assert sink.wait().finished.reason == "cancelled"
        deadline = time.time() + 5
        while on.prefix_cache.held_blocks and time.time() < deadline:
            time.sleep(0.01)
        assert on.prefix_cache.held_blocks == 0
    names = set(block_names(prompt))
    generate(on, [prompt_of(3 * BLOCK + 1, seed=300 + i) for i in range(4)], SamplingParams(max_tokens=2))
    assert not names & set(on.prefix_cache.rows)  # released blocks were evicted like any other


def test_held_blocks_are_never_evicted_and_a_full_cache_keeps_nothing_new():
    cache = PrefixCache(4)
    first = cache.plan(prompt_of(3 * BLOCK + 1, seed=1))
    assert len(first.stored) == 3
    second = cache.plan(prompt_of(3 * BLOCK + 1, seed=2))  # one free row, then only held blocks
    assert len(second.stored) == 1 and cache.cached_blocks == 4
    assert set(first.held) <= set(cache.rows)
    cache.release(first)
    third = cache.plan(prompt_of(2 * BLOCK + 1, seed=3))
    assert len(third.stored) == 2 and set(second.held) <= set(cache.rows)
    # The first prompt lost its tail before its head: its first block is still reachable.
    assert first.held[0] in cache.rows and first.held[2] not in cache.rows


def test_a_block_is_named_by_everything_before_it():
    a, b = prompt_of(2 * BLOCK, seed=1), prompt_of(2 * BLOCK, seed=1)
    b[3] += 1  # the same second block after a different first
    assert block_names(a)[1] != block_names(b)[1]
    assert block_names(a) == block_names(a.copy()) and len(block_names(a[:-1])) == 1


def test_a_failed_prefill_forgets_the_blocks_it_was_to_write():
    cache = PrefixCache(8)
    prompt = prompt_of(2 * BLOCK + 1, seed=5)
    plan = cache.plan(prompt)
    cache.discard(plan)
    assert cache.cached_blocks == 0 and cache.held_blocks == 0 and len(cache.free) == 8
    assert cache.cached_blocks_of(prompt) == 0


@pytest.mark.slow  # compiles engines
def test_a_request_whose_blocks_cannot_be_kept_is_still_served(model):
    engine = make_engine(*model, prefix_cache_tokens=BLOCK)  # one block
    prompts = [prompt_of(3 * BLOCK, seed=400 + i) for i in range(4)]  # all at once: the one block is held
    off = make_engine(*model)
    params = SamplingParams(max_tokens=4)
    assert [a.tolist() for a in generate(engine, prompts, params)] == [a.tolist() for a in generate(off, prompts, params)]
    assert engine.prefix_cache.held_blocks == 0 and EOS not in prompts[0]
