"""parallel/host_memory.py: after `reuse_freed_memory`, repeated XLA:CPU runs stop faulting in fresh pages."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # two JAX subprocesses

# Each run of `step` needs a 134 MB temporary (the product x @ w, which XLA frees at the run's end);
# the child reports the minor page faults of three warm runs, in MB of 4 KiB pages.
CHILD = """
import resource, sys
from parallel.host_memory import reuse_freed_memory
took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
import jax, jax.numpy as jnp
step = jax.jit(lambda x, w: jnp.sum(jnp.tanh(x @ w) @ w.T))
x, w = jnp.ones((4096, 256)), jnp.ones((256, 8192)) / 256
step(x, w).block_until_ready(); step(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step(x, w).block_until_ready()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * 4096 / 3 / 1e6)
"""


def fault_mb_per_run(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120, check=True)
    took, megabytes = out.stdout.split()
    return took, float(megabytes)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_xla_temporaries_are_reused_instead_of_faulted_in_again():
    took, reused_mb = fault_mb_per_run("reuse")
    assert took == "True"
    assert reused_mb < 10, f"{reused_mb:.0f} MB of fresh pages a run after reuse_freed_memory()"
    _, default_mb = fault_mb_per_run("default")
    if default_mb <= 100:  # some machines' malloc keeps the block without being told (seen 2026-12-07: 14 MB)
        pytest.skip(f"without reuse_freed_memory() this machine faults in only {default_mb:.0f} MB a run: "
                    "no difference to show")
