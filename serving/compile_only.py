"""`serve.py --compile-only --topology NAME`: the engine's decode step, compiled for a TPU topology from abstract weights.

The engine is built as serve.py builds it (one module per layer, weights in the compute dtype or int8,
the KV cache for `serve.slots` x `serve.max_cache_len` split over the mesh), from shapes with
shardings instead of arrays, and its step for every slot is lowered and compiled. The prefix
cache's block pool (`serve.prefix_cache_tokens`) is held beside the step and counted with it. The step has
no loop (the layers run unrolled), so XLA's FLOP count of it is the step's.
"""

from __future__ import annotations

import dataclasses

import jax

from configs.base import Config, MeshConfig
from model.costs import decode_flops_per_step
from model.transformer import abstract_model
from parallel.aot import ChipReport, compile_for, hlo_flops
from parallel.sharding import make_mesh
from parallel.topologies import Topology
from serving.engine import Engine


def abstract_engine(cfg: Config, mesh: jax.sharding.Mesh) -> Engine:
    graphdef, state = abstract_model(cfg.model, mesh)
    return Engine(cfg.model, graphdef, state, mesh, cfg.serve.slots, cfg.serve.max_cache_len, eos_id=0,
                  real_vocab=cfg.model.vocab_size, int8_weights=cfg.serve.int8_weights,
                  prefix_cache_tokens=cfg.serve.prefix_cache_tokens)


def compile_decode_step(cfg: Config, topology: Topology) -> ChipReport:
    mesh = make_mesh(cfg.mesh, topology.devices())
    one_device = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices("cpu")[:1])
    flops = hlo_flops(abstract_engine(cfg, one_device).lower_step())
    analytic = decode_flops_per_step(cfg.model, cfg.serve.slots, cfg.serve.max_cache_len)
    engine = abstract_engine(cfg, mesh)
    report = compile_for(engine.lower_step(), preset=cfg.name,
                         program=f"decode step ({cfg.serve.slots} slots x {cfg.serve.max_cache_len} tokens"
                                 f"{', int8 weights' if cfg.serve.int8_weights else ''})",
                         topology=topology, mesh=mesh, analytic_flops_per_chip=analytic / topology.chips,
                         counted_flops_per_chip=flops / topology.chips)
    # The prefix cache's pool is no argument of the step, but it lives on the chip beside it.
    return dataclasses.replace(report, resident_bytes=engine.prefix_cache_bytes_per_device)
