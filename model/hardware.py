"""The machine's own ceilings, measured in the same run: matmul FLOP/s, and the time to read the weights.

MFU and roofline figures divide by these, so a figure taken on a busy or throttled machine is
still a fair ratio. On an accelerator the measured peak is likewise what the chip really gives
for a large matmul in the compute dtype, not the vendor's sheet.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def _best_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm the caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_flops(size: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` jitted [size, size] @ [size, size] products (2 size^3 FLOPs each)."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    return 2 * size**3 / _best_seconds(jax.jit(jnp.matmul), a, b, repeats=repeats)


def read_seconds(nbytes: int, repeats: int = 10) -> float:
    """Seconds to stream `nbytes` of float32 through the cores once (a jitted sum; best of `repeats`).

    The decode roofline: a one-token step must read every weight. Measure at the weights' own size:
    a 63M-parameter model (253 MB) fits in a large server L3, and a DRAM-sized array would understate
    what the step can do.
    """
    x = jnp.ones((nbytes // 4,), jnp.float32)
    return _best_seconds(jax.jit(jnp.sum), x, repeats=repeats)
