"""The decoding engine: B slots sharing one KV cache on the mesh, driven by three jitted programs.

    prefill(tokens padded to a bucket)     -> Prefix: the prompt's keys/values and its first token
    insert(decode state, prefix, slot)     -> the slot holds the request; its old rows are masked off
    step(decode state, live)               -> one token for every slot in use, sampled on the device

With a prefix cache (`prefix_cache_tokens`, serving/prefix_cache.py) two more: a prompt whose
first blocks are cached prefills only the rest, after those blocks' rows copied from the block
pool (`prefill_after`); and a prefill's new whole blocks are written into the pool (`store`).

The decode state is donated to `insert` and `step`, so the cache is updated in place. Prompts
are padded up to one of a few bucket lengths (powers of two), and every bucket is compiled at
start-up (`warm_up`), so no request waits for a compile. Sampling parameters are rows of arrays
(serving/sampling.py): greedy and sampled requests share a step at no cost.

A step computes only the first `width` slots, the smallest compiled width (powers of two, and
all the slots) that holds every slot in use; requests take the lowest free slot. A lone request
on a 32-slot server decodes at batch-1 speed, and a half-empty batch at half cost.

A slot stops on the device when it produces one of its stop ids or reaches its token budget:
the host learns it a step later (the scheduler keeps one step in flight) and nothing is
decoded for the slot meanwhile. The host can also stop a slot (a cancel, a stop string) by
clearing its `live` bit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from configs.base import ModelConfig
from model.attention import KVCache
from model.transformer import forward, prepare_for_decoding
from parallel.sharding import logical_to_spec
from serving.prefix_cache import BLOCK, Plan, PrefixCache
from serving.sampling import Sampled, SamplingRows, sample

MAX_STOP_IDS = 4  # stop ids per request, <eos> among them
SMALLEST_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """One request's decoding parameters, as the host holds them."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()
    allowed: tuple[int, int] | None = None  # ids the request may produce, [lo, hi); None: any real id
    logprobs: bool = False  # report each token's log-probability and the likeliest alternatives


@struct.dataclass
class Prefix:
    """A prefilled prompt, ready to insert: its cache rows, its length, its first token."""

    k: tuple[jax.Array, ...]  # per layer: [1, kv_heads, head_dim, bucket] (KVCache: keys length-last)
    v: tuple[jax.Array, ...]  # per layer: [1, bucket, kv_heads, head_dim]
    length: jax.Array  # i32 []
    first: Sampled  # rows of 1
    rows: SamplingRows  # rows of 1
    remaining: jax.Array  # i32 []: tokens still to produce after the first
    stop_ids: jax.Array  # i32 [MAX_STOP_IDS], -1 padded


@struct.dataclass
class PrefixPool:
    """The prefix cache's blocks on the device, one row a block (serving/prefix_cache.py says which)."""

    k: tuple[jax.Array, ...]  # per layer: [blocks, kv_heads, head_dim, BLOCK]
    v: tuple[jax.Array, ...]  # per layer: [blocks, BLOCK, kv_heads, head_dim]


@struct.dataclass
class DecodeState:
    cache: KVCache  # per layer: keys [slots, kv_heads, head_dim, cache_len], values [slots, cache_len, kv, head_dim]
    tokens: jax.Array  # i32 [B]: each slot's last token, the next step's input
    positions: jax.Array  # i32 [B]: where that token goes in the cache
    remaining: jax.Array  # i32 [B]: tokens the slot may still produce
    stop_ids: jax.Array  # i32 [B, MAX_STOP_IDS]
    active: jax.Array  # bool [B]: the slot decodes in the next step
    rows: SamplingRows


def widths(slots: int, shards: int) -> tuple[int, ...]:
    """Step widths compiled for: `shards` (the slots' split over the data axes) times powers of two, and `slots`."""
    sizes, size = [], shards
    while size < slots:
        sizes.append(size)
        size *= 2
    return tuple(sizes) + (slots,)


def _first_slots(decode: DecodeState, width: int) -> DecodeState:
    """The state of slots [0, width) (a copy, unless that is all of them)."""
    if width == decode.tokens.shape[0]:
        return decode
    return jax.tree.map(lambda x: jax.lax.slice_in_dim(x, 0, width), decode)


def _put_first_slots(decode: DecodeState, part: DecodeState) -> DecodeState:
    """`decode` with slots [0, width) replaced by `part` (in place: `decode` is donated)."""
    if part.tokens.shape == decode.tokens.shape:
        return part
    return jax.tree.map(lambda x, p: jax.lax.dynamic_update_slice_in_dim(x, p, 0, 0), decode, part)


def buckets(cache_len: int) -> tuple[int, ...]:
    """Prompt lengths compiled for: 16, 32, ... up to the cache length (which is always one)."""
    sizes, size = [], SMALLEST_BUCKET
    while size < cache_len:
        sizes.append(size)
        size *= 2
    return tuple(sizes) + (cache_len,)


def _stopped(tokens_b, remaining_b, positions_b, stop_ids_bs, cache_len):
    hit_b = jnp.any(tokens_b[:, None] == stop_ids_bs, axis=-1)
    # The token just made goes to `positions + 1` in the next step; past the cache there is no room.
    return hit_b | (remaining_b <= 0) | (positions_b + 1 >= cache_len)


class Engine:
    def __init__(self, cfg: ModelConfig, graphdef: nnx.GraphDef, state: nnx.State, mesh: jax.sharding.Mesh,
                 slots: int, cache_len: int, eos_id: int, real_vocab: int, int8_weights: bool = False,
                 is_token: np.ndarray | None = None, prefix_cache_tokens: int = 0):
        self.cfg, self.mesh, self.int8_weights = cfg, mesh, int8_weights
        # Which ids are tokens (bool [vocab]): ids past `real_vocab` pad the table, and a text range
        # can be wider than its SentencePiece model. No request ever produces an id that is no token.
        self.is_token = np.arange(cfg.vocab_size) < real_vocab if is_token is None else np.asarray(is_token, bool)
        with jax.set_mesh(mesh):  # the engine's mesh, whatever mesh the caller works under
            self.graphdef, state = prepare_for_decoding(cfg, graphdef, state, int8_weights)
        # The weights travel as a flat list of arrays: jit flattens that in C++, where an nnx.State
        # costs Python calls per leaf on every step.
        self.weights, self._weights_def = jax.tree.flatten(state)
        abstract = isinstance(self.weights[0], jax.ShapeDtypeStruct)  # compile-only: shapes, no memory
        self.slots, self.cache_len, self.eos_id, self.real_vocab = slots, cache_len, eos_id, real_vocab
        self.buckets = buckets(cache_len)
        shards = int(np.prod([mesh.shape[axis] for axis in ("dcn_data", "data", "fsdp") if axis in mesh.shape]))
        self.widths = widths(slots, shards)
        # Slots split over the data axes, kv heads over `tensor` where they can (see LOGICAL_RULES).
        keys_sharding = NamedSharding(mesh, logical_to_spec(("batch", "kv", "head_dim", "length")))
        values_sharding = NamedSharding(mesh, logical_to_spec(("batch", "length", "kv", "head_dim")))
        replicated = NamedSharding(mesh, PartitionSpec())
        self._prefill = jax.jit(self._prefill_fn)
        self._insert = jax.jit(self._insert_fn, donate_argnums=0)
        self._step = jax.jit(self._step_fn, donate_argnums=1)
        state_shardings = jax.tree.map(lambda _: replicated, jax.eval_shape(self._empty_state_fn))
        layers = cfg.num_layers
        state_shardings = state_shardings.replace(
            cache=state_shardings.cache.replace(k=(keys_sharding,) * layers, v=(values_sharding,) * layers))
        self._empty_state = jax.jit(self._empty_state_fn, out_shardings=state_shardings)
        # The prefix cache: `prefix_cache_tokens` rounded down to whole blocks; none below one block.
        self.prefix_cache = PrefixCache(prefix_cache_tokens // BLOCK) if prefix_cache_tokens >= BLOCK else None
        if self.prefix_cache is not None:
            # Blocks are replicated over the data axes (any slot may reuse any block), kv heads split as the cache's.
            pool_keys = NamedSharding(mesh, logical_to_spec((None, "kv", "head_dim", "length")))
            pool_values = NamedSharding(mesh, logical_to_spec((None, "length", "kv", "head_dim")))
            self._empty_pool = jax.jit(self._empty_pool_fn, out_shardings=PrefixPool(
                k=(pool_keys,) * layers, v=(pool_values,) * layers))
            self._prefill_after = jax.jit(self._prefill_after_fn)
            self._store = jax.jit(self._store_fn, donate_argnums=0)
        if abstract:
            self.decode_state = jax.eval_shape(self._empty_state)
            self.pool = jax.eval_shape(self._empty_pool) if self.prefix_cache is not None else None
        else:
            self.reset()

    # ---- the jitted programs ------------------------------------------------------------------
    def _prefill_fn(self, weights, tokens_1t, length, rows: SamplingRows, remaining, stop_ids_s):
        bucket = tokens_1t.shape[1]
        positions_1t = jnp.arange(bucket, dtype=jnp.int32)[None]
        segments_1t = (positions_1t < length).astype(jnp.int32)
        cache = KVCache.init(self.cfg, 1, bucket)
        last_1 = jnp.reshape(length - 1, (1,))
        logits_11v, cache = forward(self.graphdef, self._state(weights), tokens_1t, positions_1t, segments_1t, cache,
                                    logits_at_b=last_1)
        first = sample(logits_11v[:, 0], rows, last_1 + 1, self.is_token)
        return Prefix(k=cache.k, v=cache.v, length=length, first=first, rows=rows, remaining=remaining,
                      stop_ids=stop_ids_s)

    def _prefill_after_fn(self, weights, pool: PrefixPool, tokens_1t, start, length, table_n, rows: SamplingRows,
                          remaining, stop_ids_s):
        """`_prefill_fn` for a prompt whose first `start` tokens are cached: their rows are the pool's
        rows `table_n` (-1: none), and the rest, `tokens_1t`, is prefilled at positions start.. . The
        cache is the slot's whole length, so one program serves every cached length."""
        bucket, n = tokens_1t.shape[1], table_n.shape[0]
        blocks_n = jnp.maximum(table_n, 0)  # rows past the cached ones are read but masked off
        k = tuple(jnp.transpose(pool_k[blocks_n], (1, 2, 0, 3)).reshape(1, *pool_k.shape[1:3], n * BLOCK)[..., :self.cache_len]
                  for pool_k in pool.k)
        v = tuple(pool_v[blocks_n].reshape(1, n * BLOCK, *pool_v.shape[2:])[:, :self.cache_len] for pool_v in pool.v)
        cache = KVCache(k=k, v=v, segment_ids=(jnp.arange(self.cache_len) < start).astype(jnp.int32)[None])
        offsets_1t = jnp.arange(bucket, dtype=jnp.int32)[None]
        segments_1t = (offsets_1t < length - start).astype(jnp.int32)
        last_1 = jnp.reshape(length - start - 1, (1,))
        logits_11v, cache = forward(self.graphdef, self._state(weights), tokens_1t, start + offsets_1t, segments_1t,
                                    cache, logits_at_b=last_1)
        first = sample(logits_11v[:, 0], rows, jnp.reshape(length, (1,)), self.is_token)
        return Prefix(k=cache.k, v=cache.v, length=length, first=first, rows=rows, remaining=remaining,
                      stop_ids=stop_ids_s)

    def _store_fn(self, pool: PrefixPool, prefix_k, prefix_v, rows_n) -> PrefixPool:
        """The pool with the prefix's block i written to row `rows_n[i]` (-1: not written)."""
        n = rows_n.shape[0]
        rows_n = jnp.where(rows_n < 0, pool.k[0].shape[0], rows_n)  # out of bounds: dropped

        def put_keys(pool_k, k_1khs):
            blocks = jnp.transpose(k_1khs[0, ..., : n * BLOCK].reshape(*k_1khs.shape[1:3], n, BLOCK), (2, 0, 1, 3))
            return pool_k.at[rows_n].set(blocks.astype(pool_k.dtype), mode="drop")

        def put_values(pool_v, v_1skh):
            blocks = v_1skh[0, : n * BLOCK].reshape(n, BLOCK, *v_1skh.shape[2:])
            return pool_v.at[rows_n].set(blocks.astype(pool_v.dtype), mode="drop")

        return PrefixPool(k=tuple(map(put_keys, pool.k, prefix_k)), v=tuple(map(put_values, pool.v, prefix_v)))

    def _insert_fn(self, decode: DecodeState, prefix: Prefix, slot):
        cache = decode.cache
        zero = jnp.zeros((), jnp.int32)

        def put(layer_all, layer_prefix):  # one layer's cache, the prompt's rows at row `slot`
            prompt_rows = layer_prefix.astype(layer_all.dtype)
            return jax.lax.dynamic_update_slice(layer_all, prompt_rows, (slot, zero, zero, zero))

        k, v = tuple(map(put, cache.k, prefix.k)), tuple(map(put, cache.v, prefix.v))
        row_s = (jnp.arange(self.cache_len) < prefix.length).astype(jnp.int32)
        segment_ids = cache.segment_ids.at[slot].set(row_s)  # the old request's rows are masked off
        first_token = prefix.first.tokens[0]
        done = _stopped(first_token[None], prefix.remaining[None], prefix.length[None] - 1,
                        prefix.stop_ids[None], self.cache_len)[0]
        rows = jax.tree.map(lambda all_rows, row: all_rows.at[slot].set(row[0]), decode.rows, prefix.rows)
        return DecodeState(
            cache=KVCache(k=k, v=v, segment_ids=segment_ids),
            tokens=decode.tokens.at[slot].set(first_token),
            positions=decode.positions.at[slot].set(prefix.length),
            remaining=decode.remaining.at[slot].set(prefix.remaining),
            stop_ids=decode.stop_ids.at[slot].set(prefix.stop_ids),
            active=decode.active.at[slot].set(~done),
            rows=rows,
        )

    def _step_fn(self, weights, all_slots: DecodeState, live_b):
        decode = _first_slots(all_slots, live_b.shape[0])
        active_b = decode.active & live_b
        logits_b1v, cache = forward(self.graphdef, self._state(weights), decode.tokens[:, None], decode.positions[:, None],
                                    active_b[:, None].astype(jnp.int32), decode.cache)
        out = sample(logits_b1v[:, 0], decode.rows, decode.positions + 1, self.is_token)
        remaining_b = decode.remaining - active_b
        stopped_b = _stopped(out.tokens, remaining_b, decode.positions, decode.stop_ids, self.cache_len)
        decode = decode.replace(
            cache=cache,
            tokens=jnp.where(active_b, out.tokens, decode.tokens),
            positions=decode.positions + active_b,
            remaining=remaining_b,
            active=active_b & ~stopped_b,
        )
        return _put_first_slots(all_slots, decode), (out, active_b, stopped_b)

    def _state(self, weights: list[jax.Array]) -> nnx.State:
        return jax.tree.unflatten(self._weights_def, weights)

    # ---- host side ----------------------------------------------------------------------------
    def load_weights(self, graphdef: nnx.GraphDef, state: nnx.State) -> None:
        """Decode with new weights of the same model (the evaluation's, after more training): nothing recompiles."""
        with jax.set_mesh(self.mesh):
            _, state = prepare_for_decoding(self.cfg, graphdef, state, self.int8_weights)
        weights, weights_def = jax.tree.flatten(state)
        if weights_def != self._weights_def:
            raise ValueError("load_weights takes weights of the model the engine was built for")
        self.weights = weights
        if self.prefix_cache is not None:  # keys and values of the old weights
            self.prefix_cache.clear()

    def lower_step(self) -> jax.stages.Lowered:
        """The step for every slot, lowered (compile-only checks: serving/compile_only.py)."""
        with jax.set_mesh(self.mesh):
            return self._step.lower(self.weights, self.decode_state, np.ones(self.slots, bool))

    def _empty_state_fn(self) -> DecodeState:
        b = self.slots
        return DecodeState(cache=KVCache.init(self.cfg, b, self.cache_len),
                           tokens=jnp.zeros((b,), jnp.int32), positions=jnp.zeros((b,), jnp.int32),
                           remaining=jnp.zeros((b,), jnp.int32),
                           stop_ids=jnp.full((b, MAX_STOP_IDS), -1, jnp.int32), active=jnp.zeros((b,), bool),
                           rows=SamplingRows.zeros(b))

    def _empty_pool_fn(self) -> PrefixPool:
        blocks, cfg, dtype = self.prefix_cache.capacity, self.cfg, self.cfg.compute_dtype
        return PrefixPool(k=tuple(jnp.zeros((blocks, cfg.num_kv_heads, cfg.head_dim, BLOCK), dtype) for _ in range(cfg.num_layers)),
                          v=tuple(jnp.zeros((blocks, BLOCK, cfg.num_kv_heads, cfg.head_dim), dtype) for _ in range(cfg.num_layers)))

    @property
    def prefix_cache_bytes_per_device(self) -> int:
        """What the prefix cache's pool holds on one device (the compile-only report counts it)."""
        if self.prefix_cache is None:
            return 0
        return sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize for a in jax.tree.leaves(self.pool))

    def reset(self) -> None:
        """Every slot empty, the cache cleared, the prefix cache emptied."""
        with jax.set_mesh(self.mesh):
            self.decode_state = self._empty_state()
            if self.prefix_cache is not None:
                self.pool = self._empty_pool()
                self.prefix_cache.clear()

    def bucket_for(self, length: int) -> int:
        for size in self.buckets:
            if length <= size:
                return size
        raise ValueError(f"prompt of {length} tokens exceeds serve.max_cache_len={self.cache_len}")

    def rows_for(self, params: SamplingParams) -> tuple[SamplingRows, np.ndarray]:
        stop = (self.eos_id, *params.stop_ids)
        if len(stop) > MAX_STOP_IDS:
            raise ValueError(f"at most {MAX_STOP_IDS - 1} stop ids besides <eos>, got {len(params.stop_ids)}")
        allowed = params.allowed or (0, self.real_vocab)
        rows = SamplingRows(temperature=np.array([params.temperature], np.float32),
                            top_k=np.array([min(params.top_k, self.real_vocab)], np.int32), top_p=np.array([params.top_p], np.float32),
                            seed=np.array([params.seed % 2**32], np.uint32), allowed=np.array([allowed], np.int32),
                            report=np.array([params.logprobs]))
        return rows, np.array(stop + (-1,) * (MAX_STOP_IDS - len(stop)), np.int32)

    def prefill(self, prompt: np.ndarray, params: SamplingParams, plan: Plan | None = None) -> Prefix:
        """The prompt's cache rows and first token (device arrays: nothing waits for them). With a
        prefix cache's `plan`, the cached blocks are reused and the new ones stored."""
        prompt = np.asarray(prompt, np.int32).reshape(-1)
        if prompt.size == 0:
            raise ValueError("a prompt needs at least one token")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {params.max_tokens}")
        start = plan.reused_tokens if plan is not None else 0
        bucket = self.bucket_for(prompt.size - start)
        tokens = np.zeros((1, bucket), np.int32)
        tokens[0, : prompt.size - start] = prompt[start:]
        rows, stop = self.rows_for(params)
        with jax.set_mesh(self.mesh):
            if start:
                table = np.full(-(-self.cache_len // BLOCK), -1, np.int32)
                table[: len(plan.reused)] = plan.reused
                prefix = self._prefill_after(self.weights, self.pool, tokens, np.int32(start), np.int32(prompt.size),
                                             table, rows, np.int32(params.max_tokens - 1), stop)
            else:
                prefix = self._prefill(self.weights, tokens, np.int32(prompt.size), rows,
                                       np.int32(params.max_tokens - 1), stop)
            if plan is not None and plan.stored:
                where = np.full(prefix.k[0].shape[-1] // BLOCK, -1, np.int32)
                where[plan.start: plan.start + len(plan.stored)] = plan.stored
                self.pool = self._store(self.pool, prefix.k, prefix.v, where)
        return prefix

    def insert(self, prefix: Prefix, slot: int) -> None:
        with jax.set_mesh(self.mesh):
            self.decode_state = self._insert(self.decode_state, prefix, np.int32(slot))

    def step(self, live: np.ndarray):
        """Dispatch one step for the slots up to the last live one, rounded up to a compiled width;
        returns (Sampled, active, stopped) for those slots, still on the device."""
        live = np.asarray(live, bool)
        in_use = int(np.flatnonzero(live)[-1]) + 1 if live.any() else 1
        width = next(w for w in self.widths if w >= in_use)
        with jax.set_mesh(self.mesh):
            self.decode_state, out = self._step(self.weights, self.decode_state, live[:width])
        return out

    def warm_up(self) -> None:
        """Compile every bucket's prefill (with a prefix cache: and its prefill after cached blocks,
        and its store), the insert and every width's step now, so no request waits for a compile."""
        params = SamplingParams(max_tokens=2)
        for bucket in self.buckets:
            prefix = self.prefill(np.zeros(bucket, np.int32), params)
            self.insert(prefix, 0)
            if self.prefix_cache is not None:  # pool row -1: nothing is read from or written to the pool
                self.prefill(np.zeros(bucket, np.int32), params, Plan((), (-1,), (b"",)))  # store, this length
                rest = min(bucket, self.cache_len - BLOCK)  # after a cached block, the rest padded to this bucket
                if rest >= 1 and self.bucket_for(rest) == bucket:
                    self.insert(self.prefill(np.zeros(BLOCK + rest, np.int32), params, Plan((-1,), (), ())), 0)
        for width in self.widths:  # slot `width - 1` live (and idle): the step of that width
            jax.block_until_ready(self.step(np.arange(self.slots) == width - 1))
        self.reset()

