"""The machine's own ceilings, measured in the same run: matmul FLOP/s, and the time to read the weights.

MFU and roofline figures divide by these, so a figure taken on a busy or throttled machine is
still a fair ratio. On an accelerator the measured peak is likewise what the chip really gives
for a large matmul in the compute dtype, not the vendor's sheet.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def call_seconds(fn, *args, repeats: int, statistic: Callable[[Sequence[float]], float] = min) -> float:
    """Seconds per call of a jitted `fn`, compiled and warmed first: `statistic` (by default the best)
    of `repeats` calls."""
    jax.block_until_ready(fn(*args))  # compile and warm the caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistic(times)


def matmul_peak_flops(size: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` jitted [size, size] @ [size, size] products (2 size^3 FLOPs each)."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    return 2 * size**3 / call_seconds(jax.jit(jnp.matmul), a, b, repeats=repeats)


def read_seconds(nbytes: int, repeats: int = 10, statistic: Callable[[Sequence[float]], float] = min) -> float:
    """Seconds to stream `nbytes` of float32 through the cores once (a jitted sum; by default the
    best of `repeats`; pass `statistic=statistics.median` to set it beside a median).

    The decode roofline: a one-token step must read every weight. Measure at the weights' own size:
    a 63M-parameter model (253 MB) fits in a large server L3, and a DRAM-sized array would understate
    what the step can do.
    """
    x = jnp.ones((nbytes // 4,), jnp.float32)
    return call_seconds(jax.jit(jnp.sum), x, repeats=repeats, statistic=statistic)
