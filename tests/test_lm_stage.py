"""The LM stage's loop: metrics per step, checkpoints, SIGTERM saves, a re-run resumes exactly."""

import dataclasses
import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from checkpoints import restore_params
from configs import get_config
from data.world_builder import build_world
from parallel.sharding import make_mesh
from tests.helpers import WORLD_MODEL
from training.lm_stage import train_lm

pytestmark = pytest.mark.slow  # trains

STEPS = 6


def small_config():
    cfg = get_config("tiny")
    return dataclasses.replace(
        cfg, model=WORLD_MODEL, serve=dataclasses.replace(cfg.serve, max_cache_len=256),
        data=dataclasses.replace(cfg.data, seq_len=128, global_batch_size=2, packing_bins=2),
        train=dataclasses.replace(cfg.train, steps=STEPS, warmup_steps=2, checkpoint_every=2, eval_every=4,
                                  eval_examples=2),
    )


class PreemptedAfter:
    """A data source that sends this process SIGTERM once `reads` records have been read."""

    def __init__(self, source, reads):
        self.source, self.reads, self.count = source, reads, 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        self.count += 1
        if self.count == self.reads:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.source[index]


def test_sigterm_saves_and_a_rerun_resumes_to_the_uninterrupted_result(tmp_path, vocab):
    cfg = small_config()
    splits = build_world(str(tmp_path / "world"), seed=2, train=60, validation=8, compositional=6).as_data_source()
    logs = []

    straight = train_lm(cfg, tmp_path / "straight", vocab, splits, log=logs.append)
    lines = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))
    assert {"loss", "grad_norm", "learning_rate", "tokens_per_s", "data_wait_s"} <= set(lines[0])
    assert sorted(os.listdir(tmp_path / "straight" / "checkpoints")) == ["2", "4", "6"]
    evals = [line for line in lines if "eval/caption_accuracy" in line]
    assert [line["step"] for line in evals] == [4, 6]  # every eval_every steps, and the last
    assert {f"eval/{task}_accuracy" for task in ("caption", "transcription", "drawing", "compositional_caption")} \
        <= set(evals[0])
    assert 0 < lines[0]["mfu"] < 1
    assert list((tmp_path / "straight" / "tensorboard").glob("events.out.tfevents.*"))

    interrupted = train_lm(cfg, tmp_path / "run", vocab, {**splits, "train": PreemptedAfter(splits["train"], 8)},
                           log=logs.append)
    assert any("SIGTERM" in line for line in logs) and interrupted["step"] < STEPS
    resumed = train_lm(cfg, tmp_path / "run", vocab, splits, log=logs.append)
    assert any(line.startswith("resumed") for line in logs)
    assert resumed["step"] == STEPS and resumed["loss"] == straight["loss"]
    # Bit-identical: every step's loss (before and after the interruption) and the final evals.
    run_lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {line["step"]: line["loss"] for line in run_lines} == {line["step"]: line["loss"] for line in lines}
    assert {k: v for k, v in resumed.items() if k.endswith("_accuracy")} == \
        {k: v for k, v in straight.items() if k.endswith("_accuracy")}
    assert lines[-1]["loss"] < lines[0]["loss"]  # a tiny run learns


def test_serving_restores_the_trained_parameters_and_refuses_a_different_model(tmp_path, vocab):
    cfg = dataclasses.replace(small_config(), train=dataclasses.replace(small_config().train, steps=2, eval_every=100))
    splits = build_world(str(tmp_path / "world"), seed=2, train=20, validation=8, compositional=6).as_data_source()
    train_lm(cfg, tmp_path / "run", vocab, splits, log=lambda message: None)

    _, params, step = restore_params(cfg, tmp_path / "run", make_mesh(cfg.mesh))
    saved = ocp.StandardCheckpointer().restore(tmp_path / "run" / "checkpoints" / "2" / "state")["params"]
    assert step == 2
    for restored, trained in zip(jax.tree.leaves(params), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(restored), np.asarray(trained))

    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_layers=3))
    with pytest.raises(ValueError, match="model.num_layers: checkpoint 2, config 3"):
        restore_params(other, tmp_path / "run", make_mesh(cfg.mesh))
