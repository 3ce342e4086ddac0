"""`train.py --compile-only --topology NAME`: the real train step, compiled for a TPU topology from abstract state.

Nothing is allocated and nothing runs: the parameters and optimizer state are shapes with
shardings (`jax.eval_shape` of the same initialisers training uses), the batch is the configured
global batch, and the step is the same jitted, donated `train_step` the LM stage runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from configs.base import Config
from data.pipeline import BATCH_FIELDS
from model.aot import ChipReport, compile_for
from model.costs import train_flops_per_token
from model.sharding import logical_to_spec, make_mesh
from model.topologies import Topology
from model.transformer import abstract_model
from training.train_step import make_optimizer, opt_state_shardings, train_step


def abstract_train_state(cfg: Config, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, dict]:
    graphdef, model_state = abstract_model(cfg.model, mesh)
    params = nnx.state(nnx.merge(graphdef, model_state), nnx.Param)
    tx = make_optimizer(cfg.train)
    opt_state = jax.eval_shape(jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params, mesh)), params)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
    return graphdef, {"params": params, "opt_state": opt_state, "step": step}


def compile_train_step(cfg: Config, topology: Topology) -> ChipReport:
    mesh = make_mesh(cfg.mesh, topology.devices())
    graphdef, state = abstract_train_state(cfg, mesh)
    rows, length = cfg.data.global_batch_size, cfg.data.seq_len
    batch_sharding = NamedSharding(mesh, logical_to_spec(("batch", "length")))
    batch = {name: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=batch_sharding) for name in BATCH_FIELDS}
    step = jax.jit(train_step(graphdef, make_optimizer(cfg.train), cfg.train), donate_argnums=0)
    with jax.set_mesh(mesh):
        lowered = step.lower(state, batch)
    flops = train_flops_per_token(cfg.model, length) * rows * length / topology.chips
    return compile_for(lowered, preset=cfg.name, program="train step", topology=topology, mesh=mesh,
                       analytic_flops_per_chip=flops)
