"""Train the model: `python train.py --config tiny [--workdir runs/tiny] [--stage all] [--train.steps 300 ...]`.

The data: the mixture `--data.sources` names (default `world:1`, the procedural world; a manifest
of your own files, a tfds dataset: configs/sources.py), made ready first: the world generated,
manifests prepared (data/mixture.py). A source that cannot be read stops the run here, naming it.

Stages, in order (`--stage all` runs the tokenizers when they are missing, then the LM, then SFT
when `--sft.steps` is above 0):
  tokenizers  SentencePiece, image and audio tokenizers on the mixture            (training/tokenizer_stage.py)
  lm          the decoder on packed, templated examples of the mixture: sharded   (training/lm_stage.py)
              jitted steps, orbax checkpoints, metrics.jsonl + TensorBoard, a
              progress bar and held-out evals (per-source losses; tasks answered
              through the serving engine: training/evaluate.py); re-running resumes
  sft         the same loop on conversations (data/conversation.py's template:    (training/lm_stage.py)
              the world's, data/world_chat.py, and `--sft.sources` manifests),
              from the LM's checkpoint, into <workdir>/sft/
Then a summary of each stage (<workdir>/summary.json, <workdir>/sft/summary.json): its last losses and eval accuracies, and the
wall-clock time. A run that SIGTERM (a preemption) stopped saves its checkpoint, says so in the
summary (`"preempted": true` and its step) and exits with status 143 (128 + SIGTERM, what a shell
reports for a process SIGTERM killed), not 0: re-running the same command resumes it.

`--compile-only --topology v5p-1024` compiles the real train step for a TPU slice on this machine
and reports per-chip HBM, FLOPs, the step-time bound and the MFU ceiling (training/compile_only.py).

Several hosts: run the same command on every host. On a Cloud TPU VM pod (or under Slurm / Open MPI)
jax finds the other processes itself; elsewhere name them, e.g. two processes on one machine:
  python train.py --stage lm --coordinator localhost:1234 --num-processes 2 --process-id 0 &
  python train.py --stage lm --coordinator localhost:1234 --num-processes 2 --process-id 1
The workdir must be one filesystem every host sees (checkpoints are written by all of them), and the
tokenizers must be trained beforehand, by one process (`--stage tokenizers`).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import jax
import tyro
from jax.experimental import multihost_utils

from checkpoints import adopt_tokenizers, load_vocabulary, tokenizers_exist
from configs.base import Config
from configs.cli import parse
from data.mixture import ready_sources
from parallel.aot import compile_on_cpu, compile_only
from parallel.host_memory import reuse_freed_memory
from parallel.sharding import make_mesh
from training.compile_only import compile_train_step
from open_weights.load import run_config
from training.lm_stage import stage_config, train_lm
from training.tokenizer_stage import train_tokenizers

PREEMPTED = 128 + signal.SIGTERM  # 143: the exit status of a run SIGTERM stopped short


@dataclasses.dataclass(frozen=True)
class TrainFlags:
    """train.py's own flags; every config field is a flag too (configs/cli.py)."""

    workdir: Annotated[str | None, tyro.conf.arg(help_behavior_hint="(default: runs/<preset>)")] = None
    """where the tokenizers, checkpoints, metrics and summary go"""
    stage: Literal["all", "tokenizers", "lm", "sft"] = "all"
    """which stage to run; `all` trains the tokenizers only when they are missing, and SFT when sft.steps > 0"""
    coordinator: str | None = None
    """multi-host without cluster detection: host:port of process 0"""
    num_processes: int | None = None
    """multi-host without cluster detection: how many processes there are"""
    process_id: int | None = None
    """multi-host without cluster detection: this process's index, from 0"""
    topology: str | None = None
    """a TPU slice, e.g. v5p-1024 or `2x v5e-256`: use the preset's plan for it; with --compile-only, compile for it"""
    init_from: str | None = None
    """hf:DIR: the LM starts from a Hugging Face Llama or Gemma checkpoint (the same as --train.init-from)"""
    compile_only: tyro.conf.FlagCreatePairsOff[bool] = False
    """compile the train step for --topology (needs the `tpu` extra), print per-chip memory and FLOPs, and exit"""


def join_other_processes(flags) -> None:
    """`jax.distributed.initialize()` when launched as one of several processes, before any device is touched.

    Explicit flags name the processes; without them jax's cluster detection decides (a Cloud TPU VM,
    Slurm or Open MPI fills everything in), and where it finds no cluster this is a single process.
    `flags`: anything with `coordinator`, `num_processes` and `process_id` attributes (a TrainFlags).
    """
    if flags.num_processes is not None:
        jax.distributed.initialize(flags.coordinator, flags.num_processes, flags.process_id)
        return
    try:
        jax.distributed.initialize()
    except ValueError:  # no cluster detected: no coordinator or process count to join
        pass


def main() -> None:
    started = time.perf_counter()
    reuse_freed_memory()  # before jax runs anything (parallel/host_memory.py)
    cfg, flags = parse(prog="train.py", flags=TrainFlags, program="train")
    if flags.compile_only:  # parallel/aot.py, training/compile_only.py
        compile_on_cpu()
        sys.exit(compile_only(compile_train_step, cfg, flags.topology))
    workdir = Path(flags.workdir or f"runs/{cfg.name}")
    join_other_processes(flags)
    try:  # a mesh that does not fit the devices stops here, naming the field, before any work or compile
        if flags.init_from:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=flags.init_from))
        cfg = run_config(cfg, workdir)  # a run from open weights takes the checkpoint's architecture
        make_mesh(cfg.mesh)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"train.py: {error}")
    if flags.stage == "sft" and not cfg.sft.steps:
        sys.exit("train.py: --stage sft needs --sft.steps above 0")
    stages = [stage for stage in ("lm", "sft") if flags.stage in (stage, "all") and (stage == "lm" or cfg.sft.steps)]
    try:  # a source that cannot be read stops here, naming it, before any tokenizer or model trains
        for stage in ("lm", *stages):
            ready_sources(stage_config(cfg, stage), workdir)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"train.py: {error}")
    if cfg.sft.init_from and "sft" in stages:  # tune another run's LM, with the tokenizers it was trained with
        try:
            if jax.process_index() == 0:
                print(adopt_tokenizers(Path(cfg.sft.init_from), workdir))
            multihost_utils.sync_global_devices("tokenizers adopted")
        except (ValueError, FileNotFoundError) as error:
            sys.exit(f"train.py: {error}")
        stages = ["sft"]  # this run's own LM would not be the one tuned
    if jax.process_count() > 1 and (flags.stage == "tokenizers" or not tokenizers_exist(workdir)):
        # Every process would train them at once into the same directory.
        sys.exit(f"{workdir}/tokenizers: train the tokenizers first, in one process (--stage tokenizers)")

    if flags.stage == "tokenizers" or (flags.stage == "all" and not tokenizers_exist(workdir)):
        train_tokenizers(cfg, workdir)
    elif flags.stage == "all" and jax.process_index() == 0:
        print(f"tokenizers: found under {workdir}/tokenizers, not retrained")

    for stage in stages:
        try:
            last = train_lm(cfg, workdir, load_vocabulary(cfg, workdir), stage=stage)
        except FileNotFoundError as error:  # SFT with no LM checkpoint to start from
            sys.exit(f"train.py: {error}")
        if jax.process_index() == 0:  # process 0 reports for all of them
            report(cfg, workdir, stage, last, time.perf_counter() - started)
        if last.get("preempted"):
            sys.exit(PREEMPTED)


def report(cfg: Config, workdir: Path, stage: str, last: dict, seconds: float) -> None:
    """Write the stage's summary.json (<workdir>/, or <workdir>/sft/) from its last metrics and print it."""
    steps = f"train.steps={cfg.train.steps}" if stage == "lm" else f"sft.steps={cfg.sft.steps}"
    if not last:
        print(f"the {stage.upper()} stage is already trained to {steps}; raise it to train further")
        return
    if stage == "sft":
        workdir = workdir / "sft"
    if last.get("preempted"):
        print(f"preempted (SIGTERM) at step {last['step']} ({steps}), its checkpoint saved: exit status "
              f"{PREEMPTED}; run the same command again to resume")
    summary = {"preset": cfg.name, "wall_clock_s": round(seconds, 1),
               **{k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()}}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("summary:", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
