"""Run in a subprocess with 8 simulated CPU devices; prints one JSON object of facts to check.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=. python tests/sharded_check.py
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from configs.base import MeshConfig, TrainConfig
from data.pipeline import to_global
from parallel.sharding import init_sharded, logical_to_spec, make_mesh, state_shardings
from model.transformer import Transformer, forward
from tests.helpers import small_model_config
from tests.test_train_step import batch_of
from training.train_step import init_opt_state, make_optimizer, train_step


def main() -> dict:
    assert jax.device_count() == 8, f"expected 8 simulated devices, got {jax.device_count()} ({os.environ.get('XLA_FLAGS')})"
    cfg = small_model_config(d_model=128, num_heads=4, num_kv_heads=1, head_dim=32, mlp_dim=512, tie_embeddings=False)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    make = lambda: Transformer(cfg, rngs=nnx.Rngs(0))

    # 1. What the compiled initialiser holds per device, against a full copy of the parameters.
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make))
    shardings = state_shardings(abstract_state, mesh)
    with jax.set_mesh(mesh):
        compiled = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings).lower().compile()
    memory = compiled.memory_analysis()
    full_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))

    # 2. The real initialised state: where each large weight lives.
    graphdef, state = init_sharded(make, mesh)
    weights = {}
    for path, variable in jax.tree.leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        array = variable[...]
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        weights[name] = {
            "global_shape": list(array.shape),
            "shard_shape": list(array.addressable_shards[0].data.shape),
            "spec": str(array.sharding.spec),
            "expected_spec": str(logical_to_spec(tuple(variable.get_metadata()["out_sharding"]))),
            "devices_holding_a_shard": len({s.device for s in array.addressable_shards}),
        }

    # 3. Sharded forward == single-device forward, same parameters.
    tokens = jax.random.randint(jax.random.key(1), (4, 24), 0, cfg.vocab_size)
    host_state = jax.device_get(state)
    single, _ = jax.jit(forward, static_argnums=0)(graphdef, host_state, tokens)
    with jax.set_mesh(mesh):
        batch_sharding = NamedSharding(mesh, logical_to_spec(("batch", "length")))
        sharded, _ = jax.jit(forward, static_argnums=0)(graphdef, state, jax.device_put(tokens, batch_sharding))

    # 4. A mesh with a data axis across (simulated) slices: same parameters, same logits.
    dcn_mesh = make_mesh(MeshConfig(dcn_data=2, data=1, fsdp=2, tensor=2))
    _, dcn_state = init_sharded(make, dcn_mesh)
    init_diff = max(float(jnp.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(jax.tree.leaves(dcn_state), jax.tree.leaves(host_state)))
    with jax.set_mesh(dcn_mesh):
        dcn_tokens = jax.device_put(tokens, NamedSharding(dcn_mesh, logical_to_spec(("batch", "length"))))
        dcn_logits, _ = jax.jit(forward, static_argnums=0)(graphdef, dcn_state, dcn_tokens)

    # 5. This process's rows of a batch laid onto the mesh as one global array.
    local = {"inputs": np.arange(8 * 6, dtype=np.int32).reshape(8, 6)}
    global_inputs = to_global(local, mesh)["inputs"]

    # 6. Real train steps (AdamW, clipping, z-loss), set up as training/lm_stage.py does: on the
    #    8-device mesh, the same losses and parameters as on a mesh of one device.
    train_cfg = TrainConfig(steps=3, learning_rate=1e-2, warmup_steps=1)
    tx = make_optimizer(train_cfg)
    batches = [batch_of(rows=8, length=24, seed=seed) for seed in range(train_cfg.steps)]

    def train(mesh, model_state):
        with jax.set_mesh(mesh):
            params = nnx.state(nnx.merge(graphdef, model_state), nnx.Param)
            state = {"params": params, "opt_state": init_opt_state(tx, params, mesh), "step": jnp.zeros((), jnp.int32)}
            opt_bytes = [sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state["opt_state"])),
                         sum(x.nbytes for x in jax.tree.leaves(state["opt_state"]))]
            step = jax.jit(train_step(graphdef, tx, train_cfg), donate_argnums=0)
            losses = []
            for batch in batches:
                state, metrics = step(state, to_global(batch, mesh))
                losses.append(float(metrics["loss"]))
        return losses, state["params"], opt_bytes

    one_device = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    single_losses, single_params, _ = train(one_device, init_sharded(make, one_device)[1])
    sharded_losses, sharded_params, (opt_bytes_per_device, opt_full_bytes) = train(mesh, state)
    # The update must leave each weight split as its logical names say (no silent gather or replica).
    specs_kept = all(
        v[...].sharding.is_equivalent_to(NamedSharding(mesh, logical_to_spec(tuple(v.get_metadata()["out_sharding"]))),
                                         v[...].ndim)
        for v in jax.tree.leaves(sharded_params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    param_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                     for a, b in zip(jax.tree.leaves(sharded_params), jax.tree.leaves(single_params)))

    return {
        "train_losses_single": single_losses,
        "train_losses_sharded": sharded_losses,
        "train_params_max_abs_diff": param_diff,
        "train_params_max_abs": max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(single_params)),
        "train_params_keep_their_shards": specs_kept,
        "opt_state_bytes_per_device": opt_bytes_per_device,
        "opt_state_full_bytes": opt_full_bytes,
        "global_batch_spec": str(global_inputs.sharding.spec),
        "global_batch_rows_per_device": int(global_inputs.addressable_shards[0].data.shape[0]),
        "global_batch_equals_local": bool(np.array_equal(np.asarray(global_inputs), local["inputs"])),
        "dcn_mesh": dict(dcn_mesh.shape),
        "dcn_init_max_abs_diff": init_diff,
        "dcn_forward_max_abs_diff": float(jnp.abs(np.asarray(dcn_logits) - np.asarray(single)).max()),
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "full_param_bytes": int(full_bytes),
        "init_output_bytes_per_device": int(memory.output_size_in_bytes),
        "init_temp_bytes_per_device": int(memory.temp_size_in_bytes),
        "weights": weights,
        "forward_max_abs_diff": float(jnp.abs(np.asarray(sharded) - np.asarray(single)).max()),
        "forward_max_abs_logit": float(jnp.abs(single).max()),
        "logits_spec": str(sharded.sharding.spec),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
