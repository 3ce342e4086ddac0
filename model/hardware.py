"""The machine's own ceiling, measured in the same run: matmul FLOP/s.

MFU figures divide by it, so a figure taken on a busy or throttled machine is
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
