"""Multi-host training, shown on one machine: two CPU processes train in lockstep to one process's losses.

Design. Two processes (tests/multihost_check.py, one CPU device each) join through
`jax.distributed.initialize` (train.py's `join_other_processes`, a local coordinator port) and run
`train_lm` on a mesh of data=2 spanning both. Each reads its own share of the records
(`jax.process_index()` of `jax.process_count()`) and packs its own row; `to_global` makes the two
rows one global batch, process 0's row first. The reference is one process with two simulated
devices and the same mesh, fed by the same pipeline called for share 0 and share 1 and the two
batches concatenated: the same global batch each step, so the same loss, up to the order of float
sums. Both processes return their last metrics (they must agree: lockstep), process 0 alone writes
metrics.jsonl (the per-step losses compared), and each then restores the last checkpoint it wrote
with the other.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multihost_check import PROCESSES, STEPS, world_splits

pytestmark = pytest.mark.slow  # processes that start JAX and train

TESTS = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(args: list[str], devices: int) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(TESTS.parent),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, str(TESTS / "multihost_check.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=900)  # a hang guard: on a loaded 2-core machine these take minutes
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])  # the last line: gloo prints to stdout too


@pytest.fixture(scope="module")
def runs(tmp_path_factory, vocab):
    workdir = tmp_path_factory.mktemp("multihost")
    vocab.text.save(workdir / "text.model")
    world_splits(workdir)  # generated here once, so the processes only read it
    coordinator = f"localhost:{free_port()}"
    processes = [launch([str(workdir), "--coordinator", coordinator, "--process-id", str(i)], devices=1)
                 for i in range(PROCESSES)]
    try:
        reference = result(launch([str(workdir), "--reference"], devices=2))
        workers = [result(p) for p in processes]
    finally:
        for p in processes:  # one that failed leaves the other waiting for it
            p.kill()
    lines = lambda run: [json.loads(line) for line in (workdir / run / "metrics.jsonl").read_text().splitlines()]
    return {"workers": workers, "reference": reference, "run": lines("run"), "reference_lines": lines("reference"),
            "workdir": workdir}


def test_two_processes_form_one_mesh_of_their_devices(runs):
    assert [w["process_index"] for w in runs["workers"]] == [0, 1]
    assert all(w["process_count"] == 2 and w["devices"] == 2 and w["local_devices"] == 1 for w in runs["workers"])
    assert runs["reference"]["process_count"] == 1 and runs["reference"]["devices"] == 2


def test_both_processes_step_in_lockstep_to_the_same_metrics(runs):
    first, second = (w["last"] for w in runs["workers"])
    assert first["step"] == second["step"] == STEPS
    for name in ("loss", "nll", "z_loss", "grad_norm", "learning_rate"):
        assert first[name] == second[name], name
    # The held-out eval at the last step runs on the global (sharded) parameters in both processes.
    evals = [name for name in first if name.startswith("eval/") and name.endswith("_accuracy")]
    # caption, transcription, drawing, compositional caption; video caption, shapes, motion, and the
    # same three on compositional clips
    assert len(evals) == 10 and all(first[name] == second[name] for name in evals)


def test_two_processes_train_to_the_losses_of_one_process_on_the_same_global_batches(runs):
    run, reference = runs["run"], runs["reference_lines"]
    assert [line["step"] for line in run] == [line["step"] for line in reference] == list(range(1, STEPS + 1))
    for mine, theirs in zip(run, reference):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6), mine["step"]
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5), mine["step"]
    assert run[-1]["loss"] < run[0]["loss"]  # it trains


def test_process_0_alone_writes_metrics_and_every_process_checkpoints_its_part(runs):
    assert len(runs["run"]) == STEPS  # one line a step, not one per process
    step = runs["workdir"] / "run" / "checkpoints" / str(STEPS)
    assert sorted(os.listdir(step.parent)) == ["2", "4"]
    assert sorted(os.listdir(step / "data")) == ["commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
    # Re-run: both processes restore that checkpoint together and find nothing left to train.
    assert all(w["again"] == {} for w in runs["workers"])
