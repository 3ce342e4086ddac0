"""Logical axis names -> mesh axes, mesh building, and initialising modules straight into shards.

Model code names only logical axes (`embed`, `heads`, ...). This table is the one place
they meet the mesh: changing the parallelism is changing the table.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs.base import MeshConfig

MESH_AXES = MeshConfig.AXES  # ("dcn_data", "data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),  # FSDP: weights split on their model dimension, gathered per layer
    ("heads", "tensor"),
    ("kv", None),  # multi-query has one kv head: it cannot split, so it is replicated
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),  # the scanned stack's leading axis
    # activations (their model dimension is written as None in model code)
    ("batch", ("dcn_data", "data", "fsdp")),
    ("length", None),
)
_RULES = dict(LOGICAL_RULES)


def logical_to_spec(names: tuple[str | None, ...]) -> PartitionSpec:
    """PartitionSpec for a tuple of logical names; an unknown name is an error, not a silent replica."""
    unknown = [n for n in names if n is not None and n not in _RULES]
    if unknown:
        raise KeyError(f"logical axis {unknown} has no rule in parallel/sharding.py LOGICAL_RULES")
    return PartitionSpec(*(None if n is None else _RULES[n] for n in names))


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Pin an activation's layout under the active mesh (`jax.set_mesh`); a no-op without one."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """The device mesh; raises naming the `mesh.*` fields when they do not cover the devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = cfg.resolve(len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    # Slices (or, without slice ids, hosts) talk over the slower data-centre network: only the
    # dcn_data axis crosses it. With a single granule (one host, simulated devices) it is local.
    by_process = not hasattr(devices[0], "slice_index")
    granules = len({d.process_index if by_process else d.slice_index for d in devices})
    if sizes["dcn_data"] > 1 and granules > 1:
        if granules != sizes["dcn_data"]:
            _fail_dcn(granules, sizes["dcn_data"], "processes" if by_process else "slices")
        device_array = mesh_utils.create_hybrid_device_mesh(
            (1,) + shape[1:], (shape[0], 1, 1, 1), devices, process_is_granule=by_process,
            allow_split_physical_axes=True,
        )
    else:
        device_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(np.asarray(device_array), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _fail_dcn(granules: int, dcn_data: int, what: str) -> None:
    raise ValueError(f"config field `mesh.dcn_data`: {dcn_data}, but the devices span {granules} {what}")


def state_shardings(abstract_state: nnx.State, mesh: Mesh):
    """NamedSharding for every variable, from the logical names it was created with."""

    def sharding(variable):
        names = variable.get_metadata().get("out_sharding") or (None,) * variable.get_value().ndim
        return NamedSharding(mesh, logical_to_spec(tuple(names)))

    return jax.tree.map(sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _sharded_initializer(make_module: Callable[[], nnx.Module], mesh: Mesh):
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make_module))
    shardings = state_shardings(abstract_state, mesh)
    return graphdef, jax.jit(lambda: nnx.split(make_module())[1], out_shardings=shardings)


def init_sharded(make_module: Callable[[], nnx.Module], mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """Build a module with every parameter created directly in its shard: no full copy on any device."""
    graphdef, init = _sharded_initializer(make_module, mesh)
    with jax.set_mesh(mesh):
        state = init()
    return graphdef, state


def abstract_sharded(make_module: Callable[[], nnx.Module], mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
    """The same module's state as shapes, dtypes and shardings only: no memory on any device, so it
    stands for a pod-sized model, and for compile-only devices that run nothing (parallel/topologies.py)."""
    graphdef, init = _sharded_initializer(make_module, mesh)
    return graphdef, jax.eval_shape(init)
