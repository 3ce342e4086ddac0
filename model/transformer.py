"""The decoder: embedding -> a stack of pre-norm blocks -> final norm -> logits.

The stack has one of two layouts, chosen when the model is made (`layout`):

  "stacked"    every parameter has a leading `layers` axis (built with `nnx.vmap`), applied with
               `jax.lax.scan`: compile time stays flat in depth, the body is rematerialised by the
               config's policy. Training and scoring; no KV cache.
  "per_layer"  one module per layer, applied in a Python loop, with a KV cache array per layer
               written in place: anything that decodes. `prepare_for_decoding` makes it from a
               trained (stacked) state; `to_stacked` goes back.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from configs.base import ModelConfig
from model import weights
from model.attention import Attention, KVCache, write_positions
from model.layers import Embedding, GatedMLP, RMSNorm, project
from model.weights import DENSE_OUTPUT, param
from parallel.sharding import abstract_sharded, constrain, init_sharded

Layout = Literal["stacked", "per_layer"]

_policies = jax.checkpoint_policies
# Float products are dots the dots policies cannot see (a custom VJP: model/weights.py), so both
# policies also save them by name: the same residuals as plain einsums would leave.
REMAT_POLICIES = {
    "full": _policies.nothing_saveable,
    "dots_saveable": _policies.save_from_both_policies(_policies.dots_saveable, _policies.save_only_these_names(DENSE_OUTPUT)),
    "dots_with_no_batch_dims_saveable": _policies.save_from_both_policies(
        _policies.dots_with_no_batch_dims_saveable, _policies.save_only_these_names(DENSE_OUTPUT)),
}


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attention_norm = RMSNorm(cfg.d_model, "embed", cfg.norm_eps, cfg.param_dtype, cfg.norm_offset)
        self.attention = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, "embed", cfg.norm_eps, cfg.param_dtype, cfg.norm_offset)
        self.mlp = GatedMLP(cfg.d_model, cfg.mlp_dim, cfg.param_dtype, rngs, cfg.mlp_activation)

    def __call__(self, x_btd, positions_bt, segment_ids_bt, layer_cache, cache_segment_ids_bs):
        h_btd, layer_cache = self.attention(
            self.attention_norm(x_btd), positions_bt, segment_ids_bt, layer_cache, cache_segment_ids_bs
        )
        x_btd = x_btd + h_btd
        x_btd = x_btd + self.mlp(self.mlp_norm(x_btd))
        return constrain(x_btd, ("batch", "length", None)), layer_cache


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, layout: Layout = "stacked"):
        if layout not in ("stacked", "per_layer"):
            raise ValueError(f"layout must be 'stacked' or 'per_layer', got {layout!r}")
        self.cfg, self.layout = cfg, layout
        code_ranges = tuple((first, levels) for first, levels in (
            (cfg.text_vocab_size, cfg.image_code_levels), (cfg.text_vocab_size + cfg.image_vocab_size, cfg.audio_code_levels),
        ) if levels)
        self.embedding = Embedding(cfg.vocab_size, cfg.d_model, cfg.param_dtype, rngs, code_ranges)
        if layout == "per_layer":
            self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        else:
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_blocks(rngs: nnx.Rngs) -> Block:
                return Block(cfg, rngs)

            self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(cfg.d_model, "embed", cfg.norm_eps, cfg.param_dtype, cfg.norm_offset)
        if not cfg.tie_embeddings:
            self.unembed_dv = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.d_model**-0.5,
                                    cfg.param_dtype, contract=(0,))

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
        (default: all 1). cache: the per-layer layout only. logits_at_b: one position per row,
        where the logits are wanted ([batch, 1, vocab] out): a prefill reads only its last prompt
        token's, and the head over a whole prompt is its largest product (at nano's 8k tokens x
        335k ids, 11 GB of float32).
        """
        cfg = self.cfg
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1], dtype=jnp.int32), tokens_bt.shape)
        if segment_ids_bt is None:
            segment_ids_bt = jnp.ones(tokens_bt.shape, jnp.int32)
        x_btd = self.embedding.encode(tokens_bt, cfg.compute_dtype)
        if cfg.embed_scale:  # in the compute dtype, as Gemma rounds it
            x_btd = x_btd * jnp.asarray(cfg.d_model**0.5, x_btd.dtype)
        x_btd = constrain(x_btd, ("batch", "length", None))

        if self.layout == "stacked":
            if cache is not None:
                raise ValueError("the stacked layout scores whole sequences; decode with the per-layer layout "
                                 "(prepare_for_decoding)")
            return self._logits(self._scan(x_btd, positions_bt, segment_ids_bt), logits_at_b), None

        cache_segment_ids_bs = None
        if cache is not None:
            where_bt = write_positions(positions_bt, segment_ids_bt, cache.length)
            batch_b1 = jnp.arange(tokens_bt.shape[0])[:, None]
            cache_segment_ids_bs = cache.segment_ids.at[batch_b1, where_bt].set(segment_ids_bt, mode="drop")
        new_k, new_v = [], []
        for index, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache.k[index], cache.v[index])
            x_btd, layer_cache = block(x_btd, positions_bt, segment_ids_bt, layer_cache, cache_segment_ids_bs)
            if layer_cache is not None:
                new_k.append(layer_cache[0])
                new_v.append(layer_cache[1])
        if cache is not None:
            cache = KVCache(k=tuple(new_k), v=tuple(new_v), segment_ids=cache_segment_ids_bs)
        return self._logits(x_btd, logits_at_b), cache

    def _scan(self, x_btd, positions_bt, segment_ids_bt) -> jax.Array:
        cfg = self.cfg
        blocks_graph, blocks_state = nnx.split(self.blocks)

        def layer(x_btd, block_state):
            block = nnx.merge(blocks_graph, block_state)
            return block(x_btd, positions_bt, segment_ids_bt, None, None)[0], None

        if cfg.remat_policy != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
        x_btd, _ = jax.lax.scan(layer, x_btd, blocks_state, unroll=cfg.scan_unroll)
        return x_btd

    def _logits(self, x_btd: jax.Array, at_b: jax.Array | None) -> jax.Array:
        if at_b is not None:
            x_btd = jnp.take_along_axis(x_btd, at_b[:, None, None], axis=1)
        x_btd = self.final_norm(x_btd)
        if self.cfg.tie_embeddings:
            logits_btv = self.embedding.decode(x_btd)
        else:
            logits_btv = project(x_btd, self.unembed_dv, out_dtype=jnp.float32)
        return constrain(logits_btv, ("batch", "length", "vocab"))


def _layer_of(variable: nnx.Variable, index: int) -> nnx.Variable:
    """Layer `index` of a stacked parameter (or of its shape): the `layers` axis dropped from its
    value, its sharding and its logical names."""
    array = variable.get_value()
    names = variable.get_metadata().get("out_sharding")
    names = names[1:] if names and names[0] == "layers" else names
    if isinstance(array, jax.ShapeDtypeStruct):
        sharding = array.sharding
        if sharding is not None:
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[1:]))
        return variable.replace(jax.ShapeDtypeStruct(array.shape[1:], array.dtype, sharding=sharding), out_sharding=names)
    return variable.replace(array[index], out_sharding=names)


def to_per_layer(graphdef: nnx.GraphDef, state: nnx.State) -> tuple[nnx.GraphDef, nnx.State]:
    """The same model in the per-layer layout: each layer's weights their own arrays (a decode step
    reads them in place; sliced out of a stack inside a scan, they are copied first). Each keeps its
    sharding, less the layers axis. `state` may be abstract (shapes with shardings)."""
    model = nnx.merge(graphdef, state)
    if model.layout == "per_layer":
        return graphdef, state
    blocks_graph, blocks_state = nnx.split(model.blocks)
    is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    model.blocks = nnx.List([nnx.merge(blocks_graph, jax.tree.map(lambda v: _layer_of(v, i), blocks_state, is_leaf=is_variable))
                             for i in range(model.cfg.num_layers)])
    model.layout = "per_layer"
    return nnx.split(model)


def to_stacked(graphdef: nnx.GraphDef, state: nnx.State) -> tuple[nnx.GraphDef, nnx.State]:
    """The inverse of `to_per_layer`: the layers' weights stacked on a leading `layers` axis."""
    model = nnx.merge(graphdef, state)
    if model.layout == "stacked":
        return graphdef, state
    per_layer = [jax.tree.leaves(nnx.split(block)[1]) for block in model.blocks]
    stacked = nnx.eval_shape(lambda: Transformer(model.cfg, rngs=nnx.Rngs(0)))
    blocks_graph, blocks_shapes = nnx.split(stacked.blocks)
    leaves = [jnp.stack(layers) for layers in zip(*per_layer)]
    stacked.blocks = nnx.merge(blocks_graph, jax.tree.unflatten(jax.tree.structure(blocks_shapes), leaves))
    stacked.embedding, stacked.final_norm = model.embedding, model.final_norm
    if not model.cfg.tie_embeddings:
        stacked.unembed_dv = model.unembed_dv
    return nnx.split(stacked)


def prepare_for_decoding(cfg: ModelConfig, graphdef: nnx.GraphDef, state: nnx.State, int8: bool = False
                         ) -> tuple[nnx.GraphDef, nnx.State]:
    """Trained weights as a decode step reads them: the per-layer layout, and every matrix in the
    compute dtype (float32 parameters in a bfloat16 model would double what each step reads) or,
    with `int8`, as int8 with per-channel scales (model/weights.py). The serving engine calls this,
    and so does the held-out evaluation, which decodes through the engine. `state` may be abstract."""
    graphdef, state = to_per_layer(graphdef, state)
    return graphdef, weights.quantize(state) if int8 else weights.cast(state, cfg.compute_dtype)


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
