"""Run in a subprocess with 8 simulated CPU devices: greedy decoding through the engine on a
data=2 x tensor=4 mesh against the same engine on one device, with float and with int8 weights,
and with a prefix cache (its pool split as the cache is) on prompts that share a prefix.
Prints one JSON object of facts.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=. python tests/serving_sharded_check.py
"""

import json

import jax
import numpy as np

from configs.base import MeshConfig
from parallel.sharding import make_mesh
from tests.serving_helpers import make_engine, prompt_of, request, running, served_model


PROMPTS = [prompt_of(4 + 7 * i, seed=i) for i in range(6)]  # more requests than slots: every data shard's slots
SHARED = [np.concatenate([prompt_of(40, seed=9), prompt_of(3 + 5 * i, seed=10 + i)[1:]]) for i in range(6)]


def decode_all(engine, prompts=PROMPTS) -> list[list[int]]:
    with running(engine, max_queue=10) as scheduler:
        sinks = []
        for i, prompt in enumerate(prompts):
            req, sink = request(prompt, 6 + i)
            scheduler.submit(req)
            sinks.append(sink)
        return [sink.wait().tokens for sink in sinks]


def main() -> dict:
    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=4))
    graphdef, state = served_model(mesh=mesh)
    one = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    state_on_one = jax.device_put(jax.device_get(state), one.devices.flat[0])
    up = state["blocks"]["mlp"]["up_dm"][...]
    facts = {"mesh": dict(mesh.shape), "mlp_weight_shards": len({str(s.index) for s in up.addressable_shards})}
    for name, int8_weights in (("", False), ("int8_", True)):
        sharded = make_engine(graphdef, state, mesh=mesh, int8_weights=int8_weights)
        if int8_weights:  # an int8 (d_model, mlp) matrix, split over `tensor` as its float weight is
            up_int8 = [w for w in sharded.weights if w.dtype == "int8" and w.shape == up.shape[1:]][0]
            facts["int8_mlp_weight_shards"] = len({str(s.index) for s in up_int8.addressable_shards})
        facts[f"{name}sharded_tokens"] = decode_all(sharded)
        facts[f"{name}single_device_tokens"] = decode_all(make_engine(graphdef, state_on_one, mesh=one,
                                                                      int8_weights=int8_weights))
    cached = make_engine(graphdef, state, mesh=mesh, prefix_cache_tokens=256)
    facts["prefix_cached_tokens"] = decode_all(cached, SHARED)
    facts["prefix_cache_blocks"] = cached.prefix_cache.cached_blocks
    facts["uncached_single_device_tokens"] = decode_all(make_engine(graphdef, state_on_one, mesh=one), SHARED)
    return facts


if __name__ == "__main__":
    print(json.dumps(main()))
