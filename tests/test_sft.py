"""The SFT stage: from the LM's checkpoint, into <workdir>/sft/, resumable exactly like the LM stage."""

import dataclasses
import json
import os
import signal

import pytest

from data import world_chat
from data.world_builder import build_world
from tests.test_lm_stage import small_config
from training.lm_stage import train_lm

pytestmark = pytest.mark.slow  # trains

SFT_STEPS = 4


def sft_config(**fields):
    cfg = small_config()
    sft = dataclasses.replace(cfg.sft, steps=SFT_STEPS, warmup_steps=1, checkpoint_every=2, eval_every=4, **fields)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, eval_every=2), sft=sft)


def test_sft_starts_from_the_lm_and_a_preempted_run_resumes_to_the_uninterrupted_result(tmp_path, vocab, monkeypatch):
    splits = build_world(str(tmp_path / "world"), seed=2, train=60, validation=8, compositional=6).as_data_source()
    cfg, logs = sft_config(), []
    train_lm(cfg, tmp_path / "a", vocab, splits, log=logs.append)
    straight = train_lm(cfg, tmp_path / "a", vocab, splits, log=logs.append, stage="sft")
    assert straight["step"] == SFT_STEPS and any(line.startswith("SFT starts from the LM checkpoint at step 2")
                                                 for line in logs)
    lines = [json.loads(line) for line in (tmp_path / "a" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, SFT_STEPS + 1))
    assert sorted(os.listdir(tmp_path / "a" / "sft" / "checkpoints")) == ["2", "4"]
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["2"]  # the LM's own are untouched
    assert {"eval/chat/caption_accuracy", "eval/chat/follow_up_accuracy", "eval/chat/transcript_accuracy",
            "eval/caption_accuracy"} <= set(lines[-1])  # beside the pre-training tasks: what tuning costs them

    # Another run tunes the first run's LM (`sft.init_from`), is preempted, and resumes.
    reads = {"count": 0}
    read = world_chat.WorldConversations.read

    def preempting(self, index):  # training's reads only: the held-out ones come before the handler is set
        reads["count"] += self.split == "train"
        if reads["count"] == 6 and self.split == "train":
            os.kill(os.getpid(), signal.SIGTERM)
        return read(self, index)

    other = sft_config(init_from=str(tmp_path / "a"))
    monkeypatch.setattr(world_chat.WorldConversations, "read", preempting)
    interrupted = train_lm(other, tmp_path / "b", vocab, splits, log=logs.append, stage="sft")
    monkeypatch.setattr(world_chat.WorldConversations, "read", read)
    assert interrupted.get("preempted") and interrupted["step"] < SFT_STEPS
    resumed = train_lm(other, tmp_path / "b", vocab, splits, log=logs.append, stage="sft")
    assert resumed["step"] == SFT_STEPS and not (tmp_path / "b" / "checkpoints").exists()
    run_lines = [json.loads(line) for line in (tmp_path / "b" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert {line["step"]: line["loss"] for line in run_lines} == {line["step"]: line["loss"] for line in lines}
