"""Run in a subprocess with 8 simulated CPU devices: splash attention (Pallas interpret mode) under a
data=2 x tensor=4 mesh, each device running the kernel on its shard, against XLA's attention on
whole arrays; values and gradients. Prints one JSON object of facts.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=. python tests/splash_sharded_check.py
"""

import json

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from configs.base import MeshConfig
from parallel.sharding import logical_to_spec, make_mesh
from model.splash import splash_attention
from tests.test_splash import packed_inputs, real_loss, reference_attention


def main() -> dict:
    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=4))
    facts = {"mesh": dict(mesh.shape)}
    for kv_heads in (1, 2):  # multi-query, and grouped-query with the query heads split across kv groups
        q, k, v, segments = packed_inputs(batch=4, length=256, heads=8, kv_heads=kv_heads, head_dim=32)
        put = lambda x, names: jax.device_put(x, NamedSharding(mesh, logical_to_spec(names)))  # noqa: E731
        sharded = (put(q, ("batch", "length", "heads", "head_dim")), put(k, ("batch", "length", "kv", "head_dim")),
                   put(v, ("batch", "length", "kv", "head_dim")), put(segments, ("batch", "length")))
        kernel = lambda q, k, v, s: splash_attention(q, k, v, s, interpret=True)  # noqa: E731
        with jax.set_mesh(mesh):
            out = jax.jit(kernel)(*sharded)
            grads = jax.jit(jax.grad(real_loss(kernel), argnums=(0, 1, 2)))(*sharded)
        want = reference_attention(q, k, v, segments)
        want_grads = jax.grad(real_loss(reference_attention), argnums=(0, 1, 2))(q, k, v, segments)
        real = segments != 0
        facts[f"kv{kv_heads}"] = {
            "output_shards": len({str(s.index) for s in out.addressable_shards}),
            "max_diff": float(jnp.max(jnp.abs(out - want)[real])),
            "max_grad_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(grads, want_grads)),
        }
    return facts


if __name__ == "__main__":
    print(json.dumps(main()))
