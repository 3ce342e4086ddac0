"""The LM stage's faults: a non-finite step, a checkpoint that cannot be written, SIGTERM, a crash
and resume. Each stops (or resumes) clearly and leaves the run's files right for the next run."""

import dataclasses
import errno
import itertools
import json
import os
import signal
import struct
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog

import train
from data.world_builder import build_world
from tests.test_lm_stage import small_config
from training import lm_stage
from training.lm_stage import CheckpointFailed, NonFiniteLoss, train_lm

pytestmark = pytest.mark.slow  # trains


def config(**train_fields):
    cfg = small_config()
    # Evals only at the (never reached) last step: none of these runs gets there.
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=12, eval_every=100, **train_fields))


@pytest.fixture
def splits(tmp_path):
    return build_world(str(tmp_path / "world"), seed=2, train=20, validation=8, compositional=6).as_data_source()


def fault_at(monkeypatch, fetch: int, fault) -> None:
    """Call `fault()` when the LM loop fetches its `fetch`-th batch (from 1) of the next run: a fault at a
    known step, whatever the data pipeline prefetches."""
    fetches, real = itertools.count(1), lm_stage.to_global

    def to_global(batch, mesh):
        if next(fetches) == fetch:
            fault()
        return real(batch, mesh)

    monkeypatch.setattr(lm_stage, "to_global", to_global)


def metric_steps(workdir) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_steps(logdir, tag: str) -> list[int]:
    """The steps TensorBoard shows for `tag`: the event files in order, a START session log discarding
    the events read before it at or past its step (TensorBoard's purge of a restarted run's events)."""
    steps = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):  # TFRecord: length (8 bytes), its CRC (4), the record, its CRC (4)
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                steps = [step for step in steps if step < event.step]
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def test_a_nan_right_after_a_checkpoint_stops_with_the_non_finite_error_and_keeps_the_last_finite_state(
        tmp_path, vocab, splits, monkeypatch):
    real = lm_stage.train_step

    def nan_loss_at_step_3(graphdef, tx, cfg):  # the train step, but step 3's loss is NaN (and it keeps its input)
        step = real(graphdef, tx, cfg)

        def poisoned(state, batch):
            new, metrics = step(state, batch)
            bad = state["step"] == 2
            new = jax.tree.map(lambda n, o: jnp.where(bad, o, n), new, state)
            loss = jnp.where(bad, jnp.nan, metrics["loss"])
            return new, {**metrics, "loss": loss, "finite": metrics["finite"] & ~bad}

        return poisoned

    monkeypatch.setattr(lm_stage, "train_step", nan_loss_at_step_3)
    # A checkpoint every step: the one at step 2, just before step 3, holds the state whose loss is NaN.
    cfg = config(checkpoint_every=1)
    for _ in range(2):  # the re-run resumes from the last good checkpoint and stops the same way
        with pytest.raises(NonFiniteLoss, match=r"step 3: the loss is nan.*last good state.*at step 1"):
            train_lm(cfg, tmp_path / "run", vocab, splits, log=lambda message: None)
        assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["1"]


def test_a_blow_up_right_after_a_checkpoint_stops_naming_the_step_and_keeps_the_last_finite_state(
        tmp_path, vocab, splits):
    # The warmup's learning rate is 0 at step 1 and 5e29 at step 2: step 2's update takes the weights to
    # ~1e29 (finite, but the next loss is not). A checkpoint every step: step 2 comes right after one.
    cfg = config(learning_rate=1e30, warmup_steps=2, checkpoint_every=1)
    for _ in range(2):  # the re-run resumes from the checkpoint and stops the same way
        with pytest.raises(NonFiniteLoss, match=r"step 2: the parameter norm is inf.*last good state.*step 1"):
            train_lm(cfg, tmp_path / "run", vocab, splits, log=lambda message: None)

    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["1"]
    saved = ocp.StandardCheckpointer().restore(checkpoints / "1" / "state")["params"]
    assert max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(saved)) < 100  # not the ~1e29 weights


def test_a_checkpoint_that_cannot_be_written_stops_the_run_at_once_naming_its_step_and_cause(
        tmp_path, vocab, splits, monkeypatch):
    written = threading.Event()

    async def disk_full(self, item, directory):  # the config item's background write fails
        written.set()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", disk_full)
    fault_at(monkeypatch, 5, lambda: written.wait(60))  # by step 5 the write has failed
    with pytest.raises(CheckpointFailed, match=r"checkpoint at step 4 .*No space left on device"):
        train_lm(config(checkpoint_every=4), tmp_path / "run", vocab, splits, log=lambda message: None)
    assert metric_steps(tmp_path / "run")[-1] < 8  # stopped before the next checkpoint, not at it


def test_a_sigterm_exits_143_saying_preempted_with_the_checkpoint_saved(tmp_path, vocab, splits, monkeypatch,
                                                                       capsys):
    workdir = tmp_path / "run"
    fault_at(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))  # during step 2
    # train.py's main as it is, on this test's small world and model; nothing else to prepare.
    cfg = config(checkpoint_every=100)
    monkeypatch.setattr(train, "train_lm", lambda _, workdir, vocab, stage="lm": train_lm(cfg, workdir, vocab, splits,
                                                                                   stage=stage))
    monkeypatch.setattr(train, "load_vocabulary", lambda *_: vocab)
    monkeypatch.setattr(train, "tokenizers_exist", lambda _: True)
    for name in ("reuse_freed_memory", "join_other_processes", "ready_sources"):
        monkeypatch.setattr(train, name, lambda *_: None)
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", "tiny", "--stage", "lm", "--workdir", str(workdir)])

    with pytest.raises(SystemExit) as stopped:
        train.main()
    assert stopped.value.code == train.PREEMPTED == 143
    assert "preempted" in capsys.readouterr().out
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["preempted"] is True and summary["step"] == 2
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]  # saved: a re-run resumes there


def test_a_resumed_run_keeps_each_steps_metrics_once_after_a_crash(tmp_path, vocab, splits, monkeypatch):
    def crash():
        raise RuntimeError("crash")

    cfg, workdir = config(checkpoint_every=2), tmp_path / "run"
    fault_at(monkeypatch, 4, crash)  # after step 3, one past the checkpoint at step 2
    with pytest.raises(RuntimeError, match="crash"):
        train_lm(cfg, workdir, vocab, splits, log=lambda message: None)
    assert metric_steps(workdir) == [1, 2, 3]

    fault_at(monkeypatch, 3, crash)  # resumed at step 2: steps 3 and 4 again, then a crash
    with pytest.raises(RuntimeError, match="crash"):
        train_lm(cfg, workdir, vocab, splits, log=lambda message: None)
    assert metric_steps(workdir) == [1, 2, 3, 4]
    assert tensorboard_steps(workdir / "tensorboard", "train/loss") == [1, 2, 3, 4]
