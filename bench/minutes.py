"""What this machine's slow and fast minutes change: the decode roofline beside the work it bounds.

    python bench/minutes.py [--seconds 600]

The weight read that bench/decode.py sets a batch-1 step against swings from ~7 ms to ~4 ms
between minutes on this shared 2-core machine. This samples, every second or so, that read and
the pieces of a decode step at the bench shape, each the median of 20 calls (parallel/hardware.py):
  - read_s: a jitted sum of an array the size of the weights (253.8 MB);
  - matmul_peak_flops: a [2048, 2048] product (parallel/hardware.py);
  - batch32_product_flops: a [2048, 512] weight times 32 activation rows, as a batch-32 step's MLP;
  - batch1_product_bytes_per_s: one activation row times a [512, 2048] weight, as a batch-1 step's;
  - batch32_attention_s: multi-query attention of 32 rows over 256 cached keys (8 query heads, 64 wide);
  - batch32_top_k_s: the 64 largest of 32 rows of 32,768 logits;
  - batch1_step_s, batch32_step_s: the decode engine's step (serving/engine.py, bench/decode.py's
    shape: 128-token prompts in a 256-position cache), the median of 20 steps, each read back one
    step behind as the scheduler does; and batch32_over_batch1, the tokens/s ratio they make
    (32 x batch1_step_s / batch32_step_s), both timed within the same second.
Prints one JSON line per sample, then one per kind of minute (reads under 4.6 ms: fast) with the
medians. docs/performance.md reads it: in fast minutes the read runs ~1.7x faster while the
compute-bound pieces run slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.decode import bench_model
from model.attention import grouped_attention
from parallel.hardware import call_seconds, matmul_peak_flops, read_seconds
from serving.engine import Engine, SamplingParams

WEIGHT_BYTES = 253_790_208  # the bench shape's weights (bench/decode.py's roofline line)
FAST_READ_S = 0.0046  # the slowest read seen in a fast minute


def decoding_engine(batch: int) -> Engine:
    """bench/decode.py's engine at `batch`, every slot holding a 128-token prompt. Once a slot fills
    its cache it stops, but a step computes every slot of its width all the same."""
    cfg, graphdef, state, mesh = bench_model()
    engine = Engine(cfg, graphdef, state, mesh, slots=batch, cache_len=256, eos_id=-1, real_vocab=cfg.vocab_size)
    engine.warm_up()
    prompts = np.random.default_rng(0).integers(10, cfg.vocab_size, (batch, 128))
    for slot, prompt in enumerate(prompts):
        engine.insert(engine.prefill(prompt, SamplingParams(max_tokens=128)), slot)
    return engine


def step_seconds(engine: Engine, steps: int = 20) -> float:
    """The median step, one step in flight as the scheduler keeps it (bench/decode.py's loop)."""
    live, times, previous = np.ones(engine.slots, bool), [], engine.step(np.ones(engine.slots, bool))
    last = time.perf_counter()
    for _ in range(steps):
        out = engine.step(live)
        jax.device_get(previous)
        now = time.perf_counter()
        times.append(now - last)
        last, previous = now, out
    jax.device_get(previous)
    return statistics.median(times)


def sample(pieces, engines: dict[int, Engine]) -> dict:
    seconds = {name: call_seconds(fn, *args, repeats=20, statistic=statistics.median)
               for name, (fn, args) in pieces.items()}
    steps = {batch: step_seconds(engine) for batch, engine in engines.items()}
    return {
        "time": time.strftime("%H:%M:%S"),
        "read_s": read_seconds(WEIGHT_BYTES, repeats=5, statistic=statistics.median),
        "matmul_peak_flops": matmul_peak_flops(repeats=3),
        "batch32_product_flops": 2 * 32 * 2048 * 512 / seconds["batch32_product"],
        "batch1_product_bytes_per_s": 4 * 512 * 2048 / seconds["batch1_product"],
        "batch32_attention_s": seconds["batch32_attention"],
        "batch32_top_k_s": seconds["batch32_top_k"],
        "batch1_step_s": steps[1],
        "batch32_step_s": steps[32],
        "batch32_over_batch1": 32 * steps[1] / steps[32],
    }


def _rounded(sample: dict) -> dict:
    return {key: float(f"{value:.4g}") if isinstance(value, float) else value for key, value in sample.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to sample")
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(0), 7)
    pieces = {
        "batch32_product": (jax.jit(jnp.matmul), (jax.random.normal(keys[0], (2048, 512)),
                                                  jax.random.normal(keys[1], (512, 32)))),
        "batch1_product": (jax.jit(jnp.matmul), (jax.random.normal(keys[2], (1, 512)),
                                                 jax.random.normal(keys[3], (512, 2048)))),
        "batch32_attention": (jax.jit(grouped_attention), (  # the keys length-last, as the cache holds them
            jax.random.normal(keys[4], (32, 1, 8, 64)), jax.random.normal(keys[5], (32, 1, 64, 256)),
            jax.random.normal(keys[6], (32, 256, 1, 64)), jnp.ones((32, 1, 256), bool))),
        "batch32_top_k": (jax.jit(lambda logits: jax.lax.top_k(logits, 64)),
                          (jax.random.normal(keys[0], (32, 32768)),)),
    }
    engines = {batch: decoding_engine(batch) for batch in (1, 32)}
    samples, end = [], time.time() + args.seconds
    while time.time() < end:
        samples.append(sample(pieces, engines))
        print(json.dumps({"bench": "minute_sample", **_rounded(samples[-1])}), flush=True)
    for kind, chosen in (("fast", [s for s in samples if s["read_s"] < FAST_READ_S]),
                         ("slow", [s for s in samples if s["read_s"] >= FAST_READ_S])):
        if chosen:
            medians = {key: statistics.median(s[key] for s in chosen) for key in chosen[0] if key != "time"}
            summary = {"bench": "minutes", "kind": kind, "samples": len(chosen), **_rounded(medians)}
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
