"""Run in a subprocess with 8 simulated CPU devices: greedy decoding through the engine on a
data=2 x tensor=4 mesh against the same engine on one device. Prints one JSON object of facts.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=. python tests/serving_sharded_check.py
"""

import json

import jax

from configs.base import MeshConfig
from model.sharding import make_mesh
from tests.serving_helpers import make_engine, prompt_of, request, running, served_model


def decode_all(engine) -> list[list[int]]:
    with running(engine, max_queue=10) as scheduler:
        sinks = []
        for i in range(6):  # more requests than slots: inserts into slots on every data shard
            req, sink = request(prompt_of(4 + 7 * i, seed=i), 6 + i)
            scheduler.submit(req)
            sinks.append(sink)
        return [sink.wait().tokens for sink in sinks]


def main() -> dict:
    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=4))
    graphdef, state = served_model(mesh=mesh)
    sharded = make_engine(graphdef, state, mesh=mesh)
    one = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    single = make_engine(graphdef, jax.device_put(jax.device_get(state), one.devices.flat[0]), mesh=one)
    up = state["blocks"]["mlp"]["up_dm"][...]
    return {
        "mesh": dict(mesh.shape),
        "mlp_weight_shards": len({str(s.index) for s in up.addressable_shards}),
        "sharded_tokens": decode_all(sharded),
        "single_device_tokens": decode_all(single),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
