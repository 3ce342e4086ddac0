"""`train.py --compile-only --topology NAME`: the real train step, compiled for a TPU topology from abstract state.

Nothing is allocated and nothing runs: the parameters and optimizer state are shapes with
shardings (`jax.eval_shape` of the same initialisers training uses), the batch is the configured
global batch, and the step is the same jitted, donated `train_step` the LM stage runs.

XLA's cost analysis counts a loop's body once, and the train step loops twice: over layers (the
scan) and over micro-batches (gradient accumulation). Its FLOPs are therefore counted on two
probes with the layers unrolled, at 1 and 2 layers and one micro-batch, lowered for one CPU
device (the whole step's arithmetic): the step costs micro-batches x (one-layer probe +
(layers - 1) x (two-layer probe - one-layer probe)), shared evenly by the chips.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from configs.base import Config, MeshConfig
from data.pipeline import BATCH_FIELDS
from model.costs import train_flops_per_token
from model.transformer import abstract_model
from parallel.aot import ChipReport, compile_for, hlo_flops
from parallel.sharding import logical_to_spec, make_mesh
from parallel.topologies import Topology
from training.train_step import make_optimizer, opt_state_shardings, train_step


def abstract_train_state(cfg: Config, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, dict]:
    graphdef, model_state = abstract_model(cfg.model, mesh)
    params = nnx.state(nnx.merge(graphdef, model_state), nnx.Param)
    tx = make_optimizer(cfg.train)
    opt_state = jax.eval_shape(jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params, mesh)), params)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
    return graphdef, {"params": params, "opt_state": opt_state, "step": step}


def lower_train_step(cfg: Config, mesh: jax.sharding.Mesh) -> jax.stages.Lowered:
    graphdef, state = abstract_train_state(cfg, mesh)
    batch_sharding = NamedSharding(mesh, logical_to_spec(("batch", "length")))
    shape = (cfg.data.global_batch_size, cfg.data.seq_len)
    batch = {name: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding) for name in BATCH_FIELDS}
    step = jax.jit(train_step(graphdef, make_optimizer(cfg.train), cfg.train), donate_argnums=0)
    with jax.set_mesh(mesh):
        return step.lower(state, batch)


def counted_flops(cfg: Config) -> float:
    """XLA's count of the step's FLOPs (all chips), from unrolled probes (see the module's docstring)."""
    micro = cfg.train.grad_accum_steps
    one_device = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices("cpu")[:1])
    probes = []
    for layers in (1, 2):
        probe = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, num_layers=layers, scan_unroll=layers),
            data=dataclasses.replace(cfg.data, global_batch_size=cfg.data.global_batch_size // micro),
            train=dataclasses.replace(cfg.train, grad_accum_steps=1))
        probes.append(hlo_flops(lower_train_step(probe, one_device)))
    return micro * (probes[0] + (cfg.model.num_layers - 1) * (probes[1] - probes[0]))


def compile_train_step(cfg: Config, topology: Topology) -> ChipReport:
    mesh = make_mesh(cfg.mesh, topology.devices())
    tokens = cfg.data.global_batch_size * cfg.data.seq_len
    return compile_for(lower_train_step(cfg, mesh), preset=cfg.name, program="train step", topology=topology,
                       mesh=mesh, analytic_flops_per_chip=train_flops_per_token(cfg.model, cfg.data.seq_len) * tokens / topology.chips,
                       counted_flops_per_chip=counted_flops(cfg) / topology.chips)
