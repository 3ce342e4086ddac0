"""Keep the host allocator's freed memory for reuse, so XLA:CPU's per-run buffers stop costing page faults.

XLA:CPU allocates each run's temporaries as one block (535 MB for a tiny-preset train step) and
frees it at the end. glibc serves a block that large with a fresh mmap and returns it with munmap,
so every step the kernel hands out and zeroes the same half gigabyte again: measured on the tiny
step, 131k page faults and 0.2 s of kernel time a step, a third of the CPU time of the step. One
arena, no mmap, and no trimming make a freed block stay in the heap and the next run reuse it
(0 faults a step; README, "Measured").

The cost is that memory the process has once used is not handed back to the OS until it exits: the
peak stays resident. On an accelerator host, which allocates little per step, this changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def reuse_freed_memory() -> bool:
    """Tune glibc's malloc as above; True when it took. Call first thing, before threads start allocating.

    A no-op (False) where the C library is not glibc (macOS, musl): there the allocator keeps its defaults.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Threads that start after this share the main arena, which alone grows without mmap'd heaps.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(param, value) == 1 for param, value in settings)
