"""Training on a user's data, end to end: the tokenizer stage on a manifest's pictures, sound and text;
the LM on a mixture without the world, evaluated per source and resumed exactly after SIGTERM; a tfds
dataset with a feature mapping through train.py."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import training.lm_stage
from checkpoints import load_vocabulary
from configs import get_config
from data.media import prepare_image
from data.mixture import open_mixture
from data.prepare import prepare
from tests.test_lm_stage import PreemptedAfter, small_config
from tests.test_manifest import every_kind
from tests.test_sources import ToyCaptions
from configs.tokenizers import ImageTokenizerConfig
from tokenization.image import ImageCodec
from training import fit_image_tokenizer
from training.tokenizer_stage import MixtureMedia, train_tokenizers

ROOT = Path(__file__).resolve().parents[1]


def test_the_tokenizers_draw_the_manifests_pictures_and_windows_of_its_sound(tmp_path):
    prepare(every_kind(tmp_path), tmp_path / "prepared", workers=1, log=lambda m: None)
    cfg = dataclasses.replace(get_config("tiny"), data=dataclasses.replace(
        get_config("tiny").data, sources=(f"manifest:{tmp_path / 'prepared'}",)))
    media = MixtureMedia(open_mixture(cfg, tmp_path / "run", "train"), 32, 16_000)
    images = media.images(np.random.default_rng(0), 6)
    files = [prepare_image((tmp_path / "media" / name).read_bytes(), 32) for name in ("wide.png", "square.png")]
    assert images.shape == (6, 32, 32, 3) and all(any((image == f).all() for f in files) for image in images)
    clips = media.clips(np.random.default_rng(0), 4)
    assert clips.shape == (4, 16_000) and np.all(clips[:, 8_000:] == 0)  # half-second tones, zero-padded
    assert media.holds("image") and media.holds("audio")


@pytest.mark.slow  # trains three tokenizers for a few steps
def test_the_tokenizer_stage_trains_on_a_manifest_and_measures_its_held_out_records(tmp_path):
    prepare(every_kind(tmp_path, copies=3), tmp_path / "prepared", workers=1, log=lambda m: None)
    cfg = get_config("tiny")
    tok = cfg.tokenizers
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, sources=(f"manifest:{tmp_path / 'prepared'}",)),
        tokenizers=dataclasses.replace(tok, text_examples=50, eval_images=8, eval_clips=8,
                                       image=dataclasses.replace(tok.image, steps=5, batch_size=4),
                                       audio=dataclasses.replace(tok.audio, steps=5, batch_size=4)))
    metrics = train_tokenizers(cfg, tmp_path / "run", log=print)
    assert metrics["sources"] == ["prepared"]
    assert metrics["image"]["held_out"] > 0 and metrics["image"]["psnr_db"] > 0 and metrics["image"]["steps"] == 5
    assert metrics["audio"]["held_out"] > 0 and metrics["audio"]["mel_l1"] > 0 and "symbol_accuracy" not in metrics["audio"]
    vocab = load_vocabulary(cfg, tmp_path / "run")
    assert vocab.text.decode(vocab.text.encode("def f1(x):")) == "def f1(x):"  # code text the pieces learnt


@pytest.mark.slow  # trains
def test_a_mixture_without_the_world_is_evaluated_per_source_and_resumes_exactly(tmp_path, vocab, monkeypatch):
    prepare(every_kind(tmp_path, copies=3), tmp_path / "prepared", workers=1, log=lambda m: None)
    cfg = small_config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=(f"manifest:{tmp_path / 'prepared'}",)))
    straight = training.lm_stage.train_lm(cfg, tmp_path / "straight", vocab, log=lambda m: None)
    assert straight["eval/prepared/loss/text"] > 0 and straight["eval/prepared/text_bits_per_byte"] > 0
    assert {"eval/prepared/loss/image", "eval/prepared/caption_accuracy",  # held-out sound is only heard, not trained
            "eval/prepared/caption_word_error_rate", "eval/prepared/transcription_accuracy"} <= set(straight)
    assert not any(name.startswith("eval/world") or name == "eval/drawing_accuracy" for name in straight)

    opened = training.lm_stage.open_mixture

    def preempted(cfg, workdir, split="train", world=None, **options):
        mixture = opened(cfg, workdir, split, world, **options)
        if split == "train":
            mixture.sources["prepared"] = PreemptedAfter(mixture.sources["prepared"], 8)
        return mixture

    logs = []
    monkeypatch.setattr(training.lm_stage, "open_mixture", preempted)
    interrupted = training.lm_stage.train_lm(cfg, tmp_path / "run", vocab, log=logs.append)
    monkeypatch.setattr(training.lm_stage, "open_mixture", opened)
    assert any("SIGTERM" in line for line in logs) and interrupted["step"] < cfg.train.steps
    resumed = training.lm_stage.train_lm(cfg, tmp_path / "run", vocab, log=logs.append)
    lines = lambda run: {line["step"]: line["loss"] for line in map(json.loads, (tmp_path / run / "metrics.jsonl").open())}  # noqa: E731
    assert lines("run") == lines("straight")
    evals = lambda last: {k: v for k, v in last.items() if k.startswith("eval/") and k != "eval/seconds"}  # noqa: E731
    assert evals(resumed) == evals(straight)


@pytest.mark.slow  # starts train.py
def test_a_tfds_dataset_with_a_feature_mapping_trains_through_train_py(tmp_path):
    ToyCaptions(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    dataset = tmp_path / "tfds" / "toy_captions" / "1.0.0"
    source = f"tfds:{dataset}?kind=caption&image=image&text=captions/text&validation_split=none"
    workdir = tmp_path / "run"
    command = [sys.executable, "train.py", "--config", "tiny", "--workdir", str(workdir), "--data.sources", source,
               "--data.seq-len", "128", "--data.global-batch-size", "2", "--train.steps", "2",
               "--train.eval-every", "100", "--sft.steps", "0", "--tokenizers.text-examples", "20",
               "--tokenizers.image.steps", "2", "--tokenizers.audio.steps", "2", "--tokenizers.eval-images", "4",
               "--tokenizers.eval-clips", "4"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 2 and summary["loss"] > 0
    assert json.loads((workdir / "tokenizers" / "metrics.json").read_text())["sources"] == ["toy_captions"]

    bad = subprocess.run([*command[:6], "--data.sources", source.replace("captions/text", "caption/txt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "has no feature ['caption/txt']" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow  # compiles the 256x256 tokenizer
def test_the_scale_presets_image_tokenizer_trains_on_a_manifests_pictures_through_the_same_code(tmp_path):
    prepare(every_kind(tmp_path), tmp_path / "prepared", workers=1, log=lambda m: None)
    cfg = get_config("nano1")  # a scale preset: its image tokenizer reads 256x256 pictures
    assert cfg.tokenizers.image == ImageTokenizerConfig.for_scale()
    image_cfg = dataclasses.replace(cfg.tokenizers.image, batch_size=2, warmup_steps=1)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=(f"manifest:{tmp_path / 'prepared'}",)))
    media = MixtureMedia(open_mixture(cfg, tmp_path / "run", "train", raw=True), image_cfg.image_size, 16_000)
    assert media.images(np.random.default_rng(0), 2).shape == (2, 256, 256, 3)  # 48x24 and 32x32 files, cropped and resized
    model, metrics = fit_image_tokenizer.train_image_tokenizer(image_cfg, media.images, steps=2)
    assert metrics["steps"] == 2 and np.isfinite(metrics["final_loss"])
    assert ImageCodec(model).encode((tmp_path / "media" / "wide.png").read_bytes()).shape == (256,)
