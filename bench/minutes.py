"""What this machine's slow and fast minutes change: the decode roofline beside the work it bounds.

    python bench/minutes.py [--seconds 600]

The weight read that bench/decode.py sets a batch-1 step against swings from ~7 ms to ~4 ms
between minutes on this shared 2-core machine. This samples, every second or so, that read and
the pieces of a decode step at the bench shape, each the median of 20 calls (model/hardware.py):
  - read_s: a jitted sum of an array the size of the weights (253.8 MB);
  - matmul_peak_flops: a [2048, 2048] product (model/hardware.py);
  - batch32_product_flops: a [2048, 512] weight times 32 activation rows, as a batch-32 step's MLP;
  - batch1_product_bytes_per_s: one activation row times a [512, 2048] weight, as a batch-1 step's;
  - batch32_attention_s: multi-query attention of 32 rows over 256 cached keys (8 query heads, 64 wide);
  - batch32_top_k_s: the 64 largest of 32 rows of 32,768 logits.
Prints one JSON line per sample, then one per kind of minute (reads under 4.6 ms: fast) with the
medians. The README's "Measured" reads it: in fast minutes the read runs ~1.7x faster while the
compute-bound pieces run slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from model.attention import grouped_attention
from model.hardware import call_seconds, matmul_peak_flops, read_seconds

WEIGHT_BYTES = 253_790_208  # the bench shape's weights (bench/decode.py's roofline line)
FAST_READ_S = 0.0046  # the slowest read seen in a fast minute


def sample(pieces) -> dict:
    seconds = {name: call_seconds(fn, *args, repeats=20, statistic=statistics.median)
               for name, (fn, args) in pieces.items()}
    return {
        "time": time.strftime("%H:%M:%S"),
        "read_s": read_seconds(WEIGHT_BYTES, repeats=5, statistic=statistics.median),
        "matmul_peak_flops": matmul_peak_flops(repeats=3),
        "batch32_product_flops": 2 * 32 * 2048 * 512 / seconds["batch32_product"],
        "batch1_product_bytes_per_s": 4 * 512 * 2048 / seconds["batch1_product"],
        "batch32_attention_s": seconds["batch32_attention"],
        "batch32_top_k_s": seconds["batch32_top_k"],
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
    samples, end = [], time.time() + args.seconds
    while time.time() < end:
        samples.append(sample(pieces))
        print(json.dumps({"bench": "minute_sample", **_rounded(samples[-1])}), flush=True)
    for kind, chosen in (("fast", [s for s in samples if s["read_s"] < FAST_READ_S]),
                         ("slow", [s for s in samples if s["read_s"] >= FAST_READ_S])):
        if chosen:
            medians = {key: statistics.median(s[key] for s in chosen) for key in chosen[0] if key != "time"}
            summary = {"bench": "minutes", "kind": kind, "samples": len(chosen), **_rounded(medians)}
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
