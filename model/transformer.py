"""The decoder: embedding -> a scanned stack of pre-norm blocks -> final norm -> logits.

The stack is built with `nnx.vmap` (every parameter gains a leading `layers` axis) and applied
with `jax.lax.scan`, so compile time does not grow with depth (`model.scan_unroll` unrolls a
shallow stack, for speed). The block body is wrapped in `jax.checkpoint` with the config's named
remat policy. The serving engine stores the stack as one module per layer instead
(`unstack_blocks`), with a KV cache array per layer, which decodes faster on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from configs.base import ModelConfig
from model.attention import Attention, KVCache, write_positions
from model.layers import DENSE_OUTPUT, Embedding, GatedMLP, RMSNorm, param, project
from model.sharding import abstract_sharded, constrain, init_sharded

_policies = jax.checkpoint_policies
# `dense` products are dots without batch dims that the dots policies cannot see (a custom VJP), so
# both save them by name: the same residuals as when the projections were einsums.
REMAT_POLICIES = {
    "full": _policies.nothing_saveable,
    "dots_saveable": _policies.save_from_both_policies(_policies.dots_saveable, _policies.save_only_these_names(DENSE_OUTPUT)),
    "dots_with_no_batch_dims_saveable": _policies.save_from_both_policies(
        _policies.dots_with_no_batch_dims_saveable, _policies.save_only_these_names(DENSE_OUTPUT)),
}


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attention_norm = RMSNorm(cfg.d_model, "embed", cfg.norm_eps, cfg.param_dtype)
        self.attention = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, "embed", cfg.norm_eps, cfg.param_dtype)
        self.mlp = GatedMLP(cfg.d_model, cfg.mlp_dim, cfg.param_dtype, rngs)

    def __call__(self, x_btd, positions_bt, segment_ids_bt, layer_cache, cache_segment_ids_bs):
        h_btd, layer_cache = self.attention(
            self.attention_norm(x_btd), positions_bt, segment_ids_bt, layer_cache, cache_segment_ids_bs
        )
        x_btd = x_btd + h_btd
        x_btd = x_btd + self.mlp(self.mlp_norm(x_btd))
        return constrain(x_btd, ("batch", "length", None)), layer_cache


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        code_ranges = tuple((first, levels) for first, levels in (
            (cfg.text_vocab_size, cfg.image_code_levels), (cfg.text_vocab_size + cfg.image_vocab_size, cfg.audio_code_levels),
        ) if levels)
        self.embedding = Embedding(cfg.vocab_size, cfg.d_model, cfg.param_dtype, rngs, code_ranges)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(cfg.d_model, "embed", cfg.norm_eps, cfg.param_dtype)
        if not cfg.tie_embeddings:
            self.unembed_dv = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.d_model**-0.5, cfg.param_dtype)

    def __call__(
        self,
        tokens_bt: jax.Array,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
        cache: KVCache | None = None,
        logits_at_b: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Float32 logits [batch, length, vocab] and the updated cache (None in, None out).

        positions: index within each packed sequence (default 0..T-1); with a cache it is also
        the cache slot written. segment_ids: which packed sequence a token belongs to; 0 = padding
        (default: all 1). logits_at_b: one position per row, where the logits are wanted
        ([batch, 1, vocab] out): a prefill reads only its last prompt token's, and the head over a
        whole prompt is its largest product and, at nano's 8k tokens x 335k ids, 11 GB of float32.
        """
        cfg = self.cfg
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1], dtype=jnp.int32), tokens_bt.shape)
        if segment_ids_bt is None:
            segment_ids_bt = jnp.ones(tokens_bt.shape, jnp.int32)
        x_btd = constrain(self.embedding.encode(tokens_bt, cfg.compute_dtype), ("batch", "length", None))

        cache_segment_ids_bs, layer_caches = None, None
        decode_layout = isinstance(self.blocks, nnx.List)
        if cache is not None and isinstance(cache.k, tuple) != decode_layout:
            raise ValueError("the decode layout (unstack_blocks) takes a per-layer cache, "
                             "KVCache.init(..., per_layer=True); the stacked model takes a stacked one")
        if cache is not None:
            where_bt = write_positions(positions_bt, segment_ids_bt, cache.length)
            batch_b1 = jnp.arange(tokens_bt.shape[0])[:, None]
            cache_segment_ids_bs = cache.segment_ids.at[batch_b1, where_bt].set(segment_ids_bt, mode="drop")
            layer_caches = (cache.k, cache.v)

        if decode_layout:  # `unstack_blocks`: a loop, no remat, and a cache array per layer
            # Each layer's rows are written into its own (donated) array in place. One stacked array,
            # sliced per layer and written back, made XLA:CPU copy the whole stack after every layer.
            new_caches = []
            for index, block in enumerate(self.blocks):
                layer_cache = None if cache is None else (layer_caches[0][index], layer_caches[1][index])
                x_btd, layer_cache = block(x_btd, positions_bt, segment_ids_bt, layer_cache, cache_segment_ids_bs)
                new_caches.append(layer_cache)
            if cache is not None:
                k, v = zip(*new_caches)
                cache = KVCache(k=k, v=v, segment_ids=cache_segment_ids_bs)
            return self._logits(x_btd, logits_at_b), cache

        blocks_graph, blocks_state = nnx.split(self.blocks)

        def layer(x_btd, block_state, layer_cache):
            block = nnx.merge(blocks_graph, block_state)
            return block(x_btd, positions_bt, segment_ids_bt, layer_cache, cache_segment_ids_bs)

        if cfg.remat_policy != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
        if cache is None:
            x_btd, _ = jax.lax.scan(
                lambda x, block_state: layer(x, block_state, None), x_btd, blocks_state, unroll=cfg.scan_unroll)
        else:
            # The whole cache rides in the carry and each layer writes its slice back in place: as the
            # scan's per-layer output instead, XLA copied all of it every step (measured: the decode
            # step at batch 32 took 34 ms, 21 ms of it the forward).
            def layer_with_cache(carry, block_state):
                x_btd, k_all, v_all, index = carry
                x_btd, (k, v) = layer(x_btd, block_state, (k_all[index], v_all[index]))
                k_all = jax.lax.dynamic_update_index_in_dim(k_all, k, index, 0)
                v_all = jax.lax.dynamic_update_index_in_dim(v_all, v, index, 0)
                return (x_btd, k_all, v_all, index + 1), None

            (x_btd, k_all, v_all, _), _ = jax.lax.scan(
                layer_with_cache, (x_btd, cache.k, cache.v, 0), blocks_state, unroll=cfg.scan_unroll)
            layer_caches = (k_all, v_all)

        if cache is not None:
            cache = KVCache(k=layer_caches[0], v=layer_caches[1], segment_ids=cache_segment_ids_bs)
        return self._logits(x_btd, logits_at_b), cache

    def init_cache(self, batch: int, length: int) -> KVCache:
        """An empty KV cache in this model's layout: one array per layer in the decode layout."""
        return KVCache.init(self.cfg, batch, length, per_layer=isinstance(self.blocks, nnx.List))

    def _logits(self, x_btd: jax.Array, at_b: jax.Array | None) -> jax.Array:
        if at_b is not None:
            x_btd = jnp.take_along_axis(x_btd, at_b[:, None, None], axis=1)
        x_btd = self.final_norm(x_btd)
        if self.cfg.tie_embeddings:
            logits_btv = self.embedding.decode(x_btd)
        else:
            logits_btv = project(x_btd, self.unembed_dv, out_dtype=jnp.float32)
        return constrain(logits_btv, ("batch", "length", "vocab"))


def unstack_blocks(graphdef: nnx.GraphDef, state: nnx.State) -> tuple[nnx.GraphDef, nnx.State]:
    """The same model with its block stack stored as one module per layer: the decode layout.

    Inside a scan, XLA:CPU copies each layer's slice out of a stacked weight before using it: a
    third of a batch-1 decode step at the bench shape (8.1 -> 5.8 ms without). Separate arrays are
    read in place. The layers then run in a Python loop (compile time grows with depth; decoding
    compiles once) with no remat (nothing is differentiated). Each layer keeps its weights'
    sharding, less the layers axis. `state` may be abstract (shapes with shardings).
    """

    def layer(array, index: int):
        if isinstance(array, jax.ShapeDtypeStruct):
            sharding = array.sharding
            if sharding is not None:
                sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[1:]))
            return jax.ShapeDtypeStruct(array.shape[1:], array.dtype, sharding=sharding)
        return array[index]

    model = nnx.merge(graphdef, state)
    blocks_graph, blocks_state = nnx.split(model.blocks)
    model.blocks = nnx.List([nnx.merge(blocks_graph, jax.tree.map(lambda a: layer(a, i), blocks_state))
                             for i in range(model.cfg.num_layers)])
    return nnx.split(model)


def forward(graphdef: nnx.GraphDef, state: nnx.State, tokens_bt, positions_bt=None, segment_ids_bt=None, cache=None,
            logits_at_b=None):
    """The pure function that compute paths jit: merge the split state and run the model."""
    return nnx.merge(graphdef, state)(tokens_bt, positions_bt, segment_ids_bt, cache, logits_at_b)


def init_model(cfg: ModelConfig, mesh: jax.sharding.Mesh, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    """The decoder's parameters, created directly in their shards on `mesh`."""
    return init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)), mesh)


def abstract_model(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """`init_model`'s result as shapes with shardings: what a compile for a pod starts from."""
    return abstract_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
