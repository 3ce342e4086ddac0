"""Per-row sampling inside the jitted step: every request's parameters are rows of arrays.

Greedy and sampled requests, different temperatures, top-k, top-p and seeds all run in one
batch with no recompile: every row computes the same ops and picks its answer by `where`.
Sampling draws from the `CANDIDATES` likeliest tokens (a `top_k` of the logits, cheap beside a
full sort of the vocabulary); top-k and top-p then cut that sorted list per row.

One branch: a step in which every row is greedy and none reports log-probabilities needs only
each row's likeliest id, and takes it without the top-k (`lax.cond` runs one side).

Each row's randomness is `fold_in(key(seed), position)`, so a seeded request draws the same
tokens whether it decodes alone or beside others, in any slot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

CANDIDATES = 64  # the most a top_k may ask for; also what an unlimited top_k samples among
BLOCK = 64  # ids per block in `top_candidates`' first pass
TOP_LOGPROBS = 5  # alternatives reported per token (OpenAI allows up to 5 for completions)


@struct.dataclass
class SamplingRows:
    """Sampling parameters, one row per decode slot (or per prefilled request)."""

    temperature: jax.Array  # f32 [B]; 0 = greedy
    top_k: jax.Array  # i32 [B]; 0 = no limit beyond CANDIDATES
    top_p: jax.Array  # f32 [B]; 1 = no limit
    seed: jax.Array  # u32 [B]
    allowed: jax.Array  # i32 [B, 2]: ids in [lo, hi) may be produced (a picture asks for image codes only)
    report: jax.Array  # bool [B]: the request reports log-probabilities (else `Sampled`'s may be NaN)

    @classmethod
    def zeros(cls, rows: int) -> "SamplingRows":
        return cls(temperature=jnp.zeros((rows,), jnp.float32), top_k=jnp.zeros((rows,), jnp.int32),
                   top_p=jnp.ones((rows,), jnp.float32), seed=jnp.zeros((rows,), jnp.uint32),
                   allowed=jnp.zeros((rows, 2), jnp.int32), report=jnp.zeros((rows,), bool))


@struct.dataclass
class Sampled:
    tokens: jax.Array  # i32 [B]
    logprobs: jax.Array  # f32 [B]: the model's log-probability of each chosen token
    top_ids: jax.Array  # i32 [B, TOP_LOGPROBS]: the likeliest alternatives ...
    top_logprobs: jax.Array  # f32 [B, TOP_LOGPROBS]: ... and theirs


def _blocked(logits_bv: jax.Array) -> jax.Array:
    """The logits in blocks of BLOCK ids, [B, blocks, BLOCK]; a last block is padded with -inf."""
    b, vocab = logits_bv.shape
    blocks = -(-vocab // BLOCK)
    padded_bv = jnp.pad(logits_bv, ((0, 0), (0, blocks * BLOCK - vocab)), constant_values=-jnp.inf)
    return padded_bv.reshape(b, blocks, BLOCK)


def _first_true(where_bn: jax.Array) -> jax.Array:
    """Each row's first index where `where_bn` holds, [B] (n where none does)."""
    n = where_bn.shape[-1]
    return jnp.min(jnp.where(where_bn, jnp.arange(n, dtype=jnp.int32), n), axis=-1)


def likeliest(logits_bv: jax.Array) -> jax.Array:
    """`jnp.argmax(logits_bv, axis=-1)` (the lowest id among equals), through each block's maximum.

    An argmax is a reduction over (value, id) pairs, which XLA:CPU does not vectorise; maxima, the
    first block holding the largest, and the first id in it holding it, are plain reductions.
    """
    blocked_bnl = _blocked(logits_bv)
    block_max_bn = blocked_bnl.max(axis=-1)
    best_b1 = block_max_bn.max(axis=-1, keepdims=True)
    block_b = _first_true(block_max_bn == best_b1)
    within_bl = jnp.take_along_axis(blocked_bnl, block_b[:, None, None], axis=1)[:, 0]
    return block_b * BLOCK + _first_true(within_bl == best_b1)


def top_candidates(logits_bv: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`jax.lax.top_k(logits_bv, k)` (the same values [B, k], likeliest first, and their ids), in two passes.

    The k likeliest ids lie in the k blocks of BLOCK ids with the largest maxima (a block holding
    one of them has a maximum at least as large, and only k values can be that large), so a max per
    block, a top_k of those, and a top_k of the k blocks' ids find them, where a top_k over the
    whole vocabulary walks every id of every row.
    """
    b, vocab = logits_bv.shape
    if -(-vocab // BLOCK) <= k:
        return jax.lax.top_k(logits_bv, k)
    # Padding ids never come out: top_k puts the lower index first among equals, and the padded
    # block is the last of more than k blocks, so any -inf candidates come from real blocks first.
    blocked_bnl = _blocked(logits_bv)
    _, best_blocks_bk = jax.lax.top_k(blocked_bnl.max(axis=-1), k)
    within_bkl = jnp.take_along_axis(blocked_bnl, best_blocks_bk[:, :, None], axis=1)
    values_bk, where_bk = jax.lax.top_k(within_bkl.reshape(b, k * BLOCK), k)
    ids_bk = jnp.take_along_axis(best_blocks_bk, where_bk // BLOCK, axis=1) * BLOCK + where_bk % BLOCK
    return values_bk, ids_bk


def sample(logits_bv: jax.Array, rows: SamplingRows, positions_b: jax.Array, is_token_v=None) -> Sampled:
    """The next token of every row, and the log-probabilities the API reports. Only ids in the row's
    allowed range that are tokens (`is_token_v`, bool [V]; None: every id) can come out."""
    vocab = logits_bv.shape[-1]
    ids_1v = jnp.arange(vocab, dtype=jnp.int32)[None, :]
    inside_bv = (ids_1v >= rows.allowed[:, :1]) & (ids_1v < rows.allowed[:, 1:])
    if is_token_v is not None:
        inside_bv = inside_bv & jnp.asarray(is_token_v)[None, :]
    logits_bv = jnp.where(inside_bv, logits_bv.astype(jnp.float32), -jnp.inf)
    drawn = jnp.any(rows.temperature > 0) | jnp.any(rows.report)
    return jax.lax.cond(drawn, _drawn, _greedy, logits_bv, rows, positions_b)


def _greedy(logits_bv: jax.Array, rows: SamplingRows, positions_b: jax.Array) -> Sampled:
    """Every row's likeliest token; no log-probabilities (NaN: no row reports them)."""
    tokens_b = likeliest(logits_bv)
    b = tokens_b.shape[0]
    alternatives = min(TOP_LOGPROBS, CANDIDATES, logits_bv.shape[-1])
    return Sampled(tokens=tokens_b, logprobs=jnp.full((b,), jnp.nan), top_ids=jnp.full((b, alternatives), -1, jnp.int32),
                   top_logprobs=jnp.full((b, alternatives), jnp.nan))


def _drawn(logits_bv: jax.Array, rows: SamplingRows, positions_b: jax.Array) -> Sampled:
    """Every row's token drawn by its own parameters, with the log-probabilities the API reports."""
    vocab = logits_bv.shape[-1]
    # The candidates come sorted, likeliest first: top-k is a prefix, top-p a prefix by mass. Their
    # log-probabilities are their logits less the row's logsumexp (no [B, V] array of them is made).
    candidates = min(CANDIDATES, vocab)
    best_logits_bc, best_ids_bc = top_candidates(logits_bv, candidates)
    best_bc = best_logits_bc - jax.nn.logsumexp(logits_bv, axis=-1, keepdims=True)
    rank_c = jnp.arange(candidates)
    limit_b = jnp.where(rows.top_k > 0, jnp.minimum(rows.top_k, candidates), candidates)
    keep_bc = rank_c < limit_b[:, None]
    temperature_b1 = jnp.maximum(rows.temperature, 1e-6)[:, None]
    scaled_bc = jnp.where(keep_bc, best_bc / temperature_b1, -jnp.inf)
    probs_bc = jax.nn.softmax(scaled_bc, axis=-1)
    mass_before_bc = jnp.cumsum(probs_bc, axis=-1) - probs_bc
    keep_bc &= (mass_before_bc < rows.top_p[:, None]) | (rank_c == 0)  # the likeliest always stays
    scaled_bc = jnp.where(keep_bc, scaled_bc, -jnp.inf)

    keys = jax.vmap(lambda seed, position: jax.random.fold_in(jax.random.key(seed), position))(rows.seed, positions_b)
    choice_b = jnp.where(rows.temperature > 0, jax.vmap(jax.random.categorical)(keys, scaled_bc), 0)
    # The chosen token is always a candidate: its id and log-probability are read there.
    tokens_b = jnp.take_along_axis(best_ids_bc, choice_b[:, None], axis=-1)[:, 0]
    chosen_b = jnp.take_along_axis(best_bc, choice_b[:, None], axis=-1)[:, 0]
    # The alternatives are the first candidates, gathered: XLA:CPU turned a slice of the top-k's
    # output into a sort of the whole vocabulary.
    alternatives = min(TOP_LOGPROBS, candidates)
    first_bk = jnp.broadcast_to(jnp.arange(alternatives), (best_bc.shape[0], alternatives))
    return Sampled(tokens=tokens_b, logprobs=chosen_b, top_ids=jnp.take_along_axis(best_ids_bc, first_bk, axis=-1),
                   top_logprobs=jnp.take_along_axis(best_bc, first_bk, axis=-1))
