"""TPU slices by name (`v5p-1024`, `v5e-256`, `2x v6e-256`): their chips, and compile-only devices for them.

libtpu (the `tpu` extra) builds the devices of a named topology on any machine, a CPU laptop
included, through `jax.experimental.topologies`: programs lower and compile for them exactly as
for a real slice (the TPU compiler's memory and cost analyses, an out-of-memory error included),
and nothing runs. That is how this project checks that every preset fits its pod without one.

Names follow Cloud TPU: v4 and v5p count TensorCores (two per chip, run as one "megacore"
device), v5e and v6e count chips (one core each). `N x NAME` is N slices joined over the
data-centre network. Slice sizes are powers of two.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from jax.experimental import topologies

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip as Cloud TPU documents it (cloud.google.com/tpu/docs/system-architecture-tpu-vm)."""

    generation: str  # as in the slice name
    topology_prefix: str  # as libtpu names its topologies
    hbm_bytes: int
    peak_bf16_flops: float  # dense bf16 matmul, per chip
    hbm_bytes_per_s: float
    counts_cores: bool  # the slice name counts TensorCores (two per chip), not chips
    dims: int  # the interconnect's dimensions: a 3-D torus or a 2-D one

    @property
    def chip_config(self) -> str:
        return "megacore" if self.counts_cores else "default"


CHIPS = {chip.generation: chip for chip in (
    Chip("v4", "v4", 32 * GiB, 275e12, 1.2e12, counts_cores=True, dims=3),
    Chip("v5p", "v5", 95 * 10**9, 459e12, 2.765e12, counts_cores=True, dims=3),
    Chip("v5e", "v5e", 16 * GiB, 197e12, 0.819e12, counts_cores=False, dims=2),
    Chip("v6e", "v6e", 32 * GiB, 918e12, 1.64e12, counts_cores=False, dims=2),
)}

_NAME = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(v4|v5p|v5e|v6e)-(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given, e.g. "2x v5e-256"
    chip: Chip
    chips_per_slice: int
    slices: int

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.slices

    @property
    def hbm_bytes(self) -> int:
        return self.chip.hbm_bytes

    @property
    def shape(self) -> tuple[int, ...]:
        """The slice's chip grid: the most even one, as Cloud TPU lays out power-of-two slices."""
        shape = [1] * self.chip.dims
        for _ in range(int(math.log2(self.chips_per_slice))):
            shape[shape.index(min(shape))] *= 2
        if self.chip.dims == 2 or self.chips_per_slice >= 8:
            shape.sort()  # v5e-8 is 2x4, v5p-32 is 2x4x4; a 4-chip v5p slice stays 2x2x1
        return tuple(shape)

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.shape))}"

    def devices(self) -> list:
        """Compile-only devices of the whole topology (every slice), from libtpu; they run nothing."""
        # libtpu looks for a real TPU VM's identity in these and warns at length without them.
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{self.chip.generation}-{self.chips_per_slice * (2 if self.chip.counts_cores else 1)}")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        # libtpu locks the local chips for one process at a time; compiling touches no chip, and two
        # compile-only processes (a test beside bench/pod_fit.py) would otherwise abort each other.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        shape = self.shape
        per_host = tuple(min(2, n) for n in shape[:2]) + (1,)
        # Links that close into a torus: a 3-D slice's from a 4x4x4 cube up, a 2-D slice's along a full 16-chip row.
        wrap = tuple(self.chips_per_slice >= 64 if self.chip.dims == 3 else n == 16 for n in shape)
        wrap += (False,) * (3 - len(wrap))
        try:
            description = topologies.get_topology_desc(
                self.libtpu_name, platform="tpu", chip_config_name=self.chip.chip_config,
                chips_per_host_bounds=per_host, num_slices=self.slices, wrap=wrap)
        except Exception as error:  # libtpu missing, or a name it does not know
            raise RuntimeError(f"cannot build compile-only devices for {self.name} ({self.libtpu_name}): {error}. "
                               "Compiling for TPU needs libtpu: pip install -e '.[tpu]'") from error
        return list(description.devices)


def parse_topology(name: str) -> Topology:
    """`v5p-1024`, `v5e-16`, `v6e-256`, `2x v5e-256` -> Topology; a clear error for anything else."""
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"topology {name!r}: expected a Cloud TPU slice name such as v5p-1024, v5e-256, v6e-256 "
                         f"or `2x v5e-256` for two slices; generations: {sorted(CHIPS)}")
    slices, generation, count = int(match[1] or 1), match[2], int(match[3])
    chip = CHIPS[generation]
    chips = count // 2 if chip.counts_cores else count
    if chip.counts_cores and count % 2:
        raise ValueError(f"topology {name!r}: {generation} slices count TensorCores, two per chip; {count} is odd")
    if chips < 1 or chips & (chips - 1) or (chip.counts_cores and chips < 4) or slices < 1:
        smallest = f"{generation}-8" if chip.counts_cores else f"{generation}-1"
        raise ValueError(f"topology {name!r}: slices here are powers of two from {smallest}, and at least one slice")
    return Topology(name=name.strip(), chip=chip, chips_per_slice=chips, slices=slices)
