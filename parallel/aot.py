"""Compile a jitted program for a TPU topology without one, and report what one chip holds and does.

The compiled executable's memory analysis is the TPU compiler's own per-chip account (the
program after SPMD partitioning is one chip's). FLOPs are XLA's count of the program
(`hlo_flops`), shared evenly by the chips. From the chip's documented peaks follow a lower bound
on the step time and a ceiling on MFU. A program that does not fit fails to compile;
`DoesNotFit` says so with the compiler's figures.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Callable

import jax

from configs.base import Config
from parallel.topologies import GiB, Topology, parse_topology

SPARE_WANTED = 0.10  # each preset's plan keeps at least this share of HBM free


class DoesNotFit(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class ChipReport:
    """One compiled program on one chip of `topology`."""

    preset: str
    program: str  # "train step" or "decode step"
    topology: str
    chips: int
    mesh: dict
    argument_bytes: int  # inputs resident on the chip: parameters, optimizer state, batch or cache
    output_bytes: int
    alias_bytes: int  # outputs written into donated inputs: counted once
    temp_bytes: int  # the compiler's scratch (the TPU compiler reports it only within the peak)
    code_bytes: int
    peak_bytes: int  # the compiler's peak HBM use over the program, everything above included
    hbm_bytes: int  # the chip's capacity
    xla_flops: float  # per chip per step, XLA's count of the program (`hlo_flops`)
    analytic_flops: float  # per chip per step, from the model's arithmetic (model/costs.py)
    peak_flops: float
    hbm_bytes_per_s: float
    pallas_kernels: int = 0  # Pallas (Mosaic) kernel calls in the compiled program: splash attention's
    row_tokens: int = 0  # the longest sequence the program holds: a training row, or a decode slot's cache
    clip_tokens: int = 0  # one clip at the preset's frame budget (tokenizers.video)
    resident_bytes: int = 0  # held on the chip beside the program and not in it: serving's prefix cache

    @property
    def holds_a_clip(self) -> bool:
        return self.clip_tokens <= self.row_tokens

    @property
    def total_bytes(self) -> int:
        listed = self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes
        return max(self.peak_bytes, listed) + self.resident_bytes

    @property
    def scratch_bytes(self) -> int:
        """Activations, gradients, collectives' buffers: the peak less what is resident throughout."""
        return (self.total_bytes - self.resident_bytes - self.argument_bytes - (self.output_bytes - self.alias_bytes)
                - self.code_bytes)

    @property
    def spare(self) -> float:
        return 1 - self.total_bytes / self.hbm_bytes

    @property
    def fits_with_margin(self) -> bool:
        return self.spare >= SPARE_WANTED

    @property
    def step_lower_bound_s(self) -> float:
        """No faster than the chip's peak FLOP/s allows for the step's FLOPs, nor than its HBM
        bandwidth allows for reading what the chip holds (weights, optimizer state or cache) once."""
        return max(self.xla_flops / self.peak_flops, self.argument_bytes / self.hbm_bytes_per_s)

    @property
    def mfu_ceiling(self) -> float:
        """The model's FLOPs over what the chip could do in the lower-bound time: recompute (remat),
        extra elementwise work and a memory-bound step all pull it below 1."""
        return self.analytic_flops / (self.step_lower_bound_s * self.peak_flops)

    def as_json(self) -> dict:
        gib = lambda n: round(n / GiB, 3)  # noqa: E731
        return {
            "preset": self.preset, "program": self.program, "topology": self.topology, "chips": self.chips,
            "mesh": self.mesh,
            "per_chip_gib": {"arguments": gib(self.argument_bytes), "outputs_not_aliased": gib(self.output_bytes - self.alias_bytes),
                             "temporaries": gib(self.scratch_bytes), "code": gib(self.code_bytes),
                             "beside_the_program": gib(self.resident_bytes), "total": gib(self.total_bytes),
                             "capacity": gib(self.hbm_bytes)},
            "spare": round(self.spare, 3), "fits_with_margin": self.fits_with_margin,
            "flops_per_chip": {"xla": self.xla_flops, "analytic": self.analytic_flops},
            "step_lower_bound_s": round(self.step_lower_bound_s, 6), "mfu_ceiling": round(self.mfu_ceiling, 3),
            "pallas_kernels": self.pallas_kernels,
            "row_tokens": self.row_tokens, "clip_tokens": self.clip_tokens, "holds_a_clip": self.holds_a_clip,
        }

    def table(self) -> str:
        """A human-readable account, for the command line."""
        used = self.total_bytes / GiB
        lines = [
            f"{self.preset} {self.program} on {self.topology} ({self.chips} chips), mesh "
            + (" x ".join(f"{axis} {size}" for axis, size in self.mesh.items() if size > 1) or "of one chip"),
            f"  per chip HBM: {self.argument_bytes / GiB:.2f} GiB arguments + {self.scratch_bytes / GiB:.2f} GiB temporaries"
            f" + {(self.output_bytes - self.alias_bytes + self.code_bytes) / GiB:.2f} GiB outputs and code"
            + (f" + {self.resident_bytes / GiB:.2f} GiB prefix cache" if self.resident_bytes else "")
            + f" = {used:.2f} of {self.hbm_bytes / GiB:.2f} GiB ({self.spare:.0%} spare)",
            f"  FLOPs per chip per step: {self.xla_flops:.4g} (XLA's count), {self.analytic_flops:.4g} (analytic)",
            f"  step time >= {self.step_lower_bound_s * 1e3:.2f} ms at {self.peak_flops / 1e12:.0f} TFLOP/s and "
            f"{self.hbm_bytes_per_s / 1e12:.2f} TB/s; MFU ceiling {self.mfu_ceiling:.1%}",
            f"  Pallas TPU kernel calls in the program: {self.pallas_kernels}",
            f"  a row of {self.row_tokens} tokens {'holds' if self.holds_a_clip else 'does NOT hold'} a clip of "
            f"{self.clip_tokens} tokens (tokenizers.video)",
        ]
        return "\n".join(lines)


_NEEDED = re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")


def hlo_flops(lowered: jax.stages.Lowered) -> float:
    """FLOPs of a program lowered for one CPU device, by XLA's cost analysis of its HLO.

    That count is exact for dots (2 x M x N x K, recomputation under remat included) but counts a
    loop's body once whatever its trip count, so a scanned program is counted through unrolled
    probes (training/compile_only.py). The TPU executable's own cost analysis is not used: on the
    compile-only devices its dot FLOPs came out below the model's forward + backward arithmetic,
    and lower for two layers than for one.
    """
    return float(lowered.cost_analysis()["flops"])


def compile_for(lowered: jax.stages.Lowered, *, preset: str, program: str, topology: Topology, mesh: jax.sharding.Mesh,
                analytic_flops_per_chip: float, counted_flops_per_chip: float) -> ChipReport:
    """Compile `lowered` (traced with shardings on `topology`'s devices) and account for one chip.

    Raises DoesNotFit, naming the preset, the program and the memory, when the compiler runs out
    of HBM; a program that compiles but leaves less than `SPARE_WANTED` free says so in its report.
    """
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        message = str(error)
        if "RESOURCE_EXHAUSTED" not in message:
            raise
        needed = _NEEDED.search(message)
        amount = (f"its temporaries alone need {needed[1]}{needed[2]}, against {needed[3]}{needed[4]} available"
                  if needed else "the compiler ran out of HBM")
        raise DoesNotFit(f"{preset} {program} does not fit {topology.name} ({topology.hbm_bytes / GiB:.1f} GiB HBM a chip): "
                         f"{amount}. Compiler: {message.splitlines()[0][:400]}") from None
    memory = compiled.memory_analysis()
    return ChipReport(
        preset=preset, program=program, topology=topology.name, chips=topology.chips, mesh=dict(mesh.shape),
        argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes, peak_bytes=getattr(memory, "peak_memory_in_bytes", 0),
        hbm_bytes=topology.hbm_bytes,
        xla_flops=float(counted_flops_per_chip), analytic_flops=float(analytic_flops_per_chip), peak_flops=topology.chip.peak_bf16_flops,
        hbm_bytes_per_s=topology.chip.hbm_bytes_per_s,
        pallas_kernels=compiled.as_text().count('custom_call_target="tpu_custom_call"'),
    )


def compile_only(compile_program: Callable[[Config, Topology], ChipReport], cfg: Config, topology_name: str | None) -> int:
    """The scripts' `--compile-only`: compile for the topology, print the report; the exit status
    says whether the program fits with `SPARE_WANTED` of HBM to spare."""
    if not topology_name:
        print("--compile-only needs --topology, e.g. --topology v5e-16", file=sys.stderr)
        return 2
    try:
        report = compile_program(cfg, parse_topology(topology_name))
    except (ValueError, RuntimeError) as error:  # a bad name, libtpu missing, a mesh that does not cover it, DoesNotFit
        print(f"{cfg.name}: {error}", file=sys.stderr)
        return 1
    row = cfg.data.seq_len if report.program == "train step" else cfg.serve.max_cache_len
    report = dataclasses.replace(report, row_tokens=row,
                                 clip_tokens=cfg.tokenizers.video.tokens(cfg.tokenizers.image.tokens_per_image))
    print(report.table())
    print(json.dumps(report.as_json()))
    if not report.holds_a_clip:
        print(f"{cfg.name} {report.program}: a clip of {report.clip_tokens} tokens (tokenizers.video.max_frames="
              f"{cfg.tokenizers.video.max_frames}) does not fit its {row}-token rows", file=sys.stderr)
        return 1
    if not report.fits_with_margin:
        print(f"{cfg.name} {report.program} leaves {report.spare:.0%} of HBM free on {report.topology}, under the "
              f"{SPARE_WANTED:.0%} wanted", file=sys.stderr)
        return 1
    return 0


def compile_on_cpu() -> None:
    """Compile-only runs touch no local device: keep jax off any local accelerator (on a TPU VM,
    another process may hold the chips). Call before anything initialises a backend."""
    jax.config.update("jax_platforms", "cpu")
