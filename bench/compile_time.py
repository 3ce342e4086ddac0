"""Compile time against depth: the scanned stack should compile in about the same time at 2 and 16 layers.

    python bench/compile_time.py            # prints one JSON line per (what, layers) and a summary line

Times are wall-clock seconds of lower + compile of the jitted forward (and of the gradient,
which is what training compiles), for the tiny preset's width, batch 8 x 512.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

from configs import get_config
from model.loss import cross_entropy
from model.transformer import Transformer, forward


def compile_seconds(cfg, what: str, batch: int, seq: int) -> float:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)

    def loss(state, tokens):
        logits, _ = forward(graphdef, state, tokens)
        return cross_entropy(logits[:, :-1], tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))[0]

    fn = (lambda s, t: forward(graphdef, s, t)[0]) if what == "forward" else jax.grad(loss)
    start = time.perf_counter()
    jax.jit(fn).lower(state, tokens).compile()
    return time.perf_counter() - start


def main() -> None:
    base = get_config("tiny")
    results = {}
    for what in ("forward", "grad"):
        for layers in (2, 16):
            cfg = dataclasses.replace(base.model, num_layers=layers)
            compile_seconds(cfg, what, 2, 16)  # warm the tracing machinery once per shape family
            seconds = min(compile_seconds(cfg, what, base.data.global_batch_size, base.data.seq_len) for _ in range(3))
            results[(what, layers)] = seconds
            print(json.dumps({"bench": "compile_time", "what": what, "layers": layers, "d_model": cfg.d_model,
                              "compile_s": round(seconds, 3)}))
    for what in ("forward", "grad"):
        ratio = results[(what, 16)] / results[(what, 2)]
        print(json.dumps({"bench": "compile_time", "what": what, "ratio_16_over_2_layers": round(ratio, 3),
                          "within_1_5x": ratio <= 1.5, "jax": jax.__version__, "backend": jax.default_backend()}))


if __name__ == "__main__":
    main()
