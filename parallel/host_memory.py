"""Let XLA:CPU reuse the memory it frees, so a train step stops costing half a gigabyte of page faults.

XLA:CPU allocates each run's temporaries as one block (535 MB for a tiny-preset train step) and
frees it at the end. glibc serves a block that large with a fresh mmap and returns it with munmap,
so every step the kernel hands out and zeroes the same memory again (a third of the tiny step's
CPU time, in page faults). Two changes make a freed block stay in the heap for the next run to
reuse:

  - malloc never mmaps and never trims, so large blocks come from the heap and stay there;
  - jax runs CPU computations on the calling thread (no async dispatch). Only the main thread's
    heap can grow past 64 MB; the worker thread that runs them under async dispatch has a
    bounded heap, so there a large block is mmapped whatever the settings. Sending every thread
    to the main heap instead (one malloc arena) also works for the step, but makes the tokenizer
    stage's many-threaded small allocations contend.

For train.py, whose loop reads every step's metrics before the next step anyway, synchronous
dispatch loses no overlap. serve.py keeps async dispatch: its scheduler queues the next decode
step before reading the last. The cost: memory the process has once used stays resident (the peak).
Accelerator backends are untouched (the dispatch setting is jax's CPU one; their hosts allocate little).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import jax

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Apply the two settings above; True when malloc took them (glibc), False elsewhere (macOS, musl).

    Call before jax runs anything: the dispatch setting is read when the CPU backend starts.
    """
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
