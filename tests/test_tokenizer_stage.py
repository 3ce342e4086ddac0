"""The tokenizer stage, short: trains all three, saves them, loads them back as one Vocabulary.

The full stage (`python train.py --config tiny --stage tokenizers`) must reach PSNR >= 28 dB and
>= 95% DTMF keys; this short run (a few hundred steps) checks lower bars named below.
"""

import dataclasses
import json

import numpy as np
import pytest

from configs import get_config
from data import world
from data.segments import Audio, Image, Text
from checkpoints import load_vocabulary, tokenizers_exist
from training.tokenizer_stage import train_tokenizers

SHORT_IMAGE_PSNR_DB = 20.0  # the full stage: 28 (this run measured 25.6)
SHORT_AUDIO_SYMBOL_ACCURACY = 0.8  # the full stage: 0.95 (this run measured 0.98)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = get_config("tiny")
    tok = cfg.tokenizers
    short = dataclasses.replace(
        tok, text_examples=300, eval_images=200, eval_clips=20,
        image=dataclasses.replace(tok.image, steps=300), audio=dataclasses.replace(tok.audio, steps=350),
    )
    cfg = dataclasses.replace(cfg, tokenizers=short)
    workdir = tmp_path_factory.mktemp("run")
    metrics = train_tokenizers(cfg, workdir, log=print)
    return cfg, workdir, metrics


@pytest.mark.slow  # the `trained` fixture trains all three tokenizers (~60 s)
def test_short_stage_learns_past_named_bars_and_saves_its_metrics(trained):
    cfg, workdir, metrics = trained
    assert metrics["image"]["psnr_db"] >= SHORT_IMAGE_PSNR_DB, metrics["image"]
    assert metrics["image"]["codes_used_fraction"] > 0.1, metrics["image"]
    assert metrics["audio"]["symbol_accuracy"] >= SHORT_AUDIO_SYMBOL_ACCURACY, metrics["audio"]
    assert tokenizers_exist(workdir)
    assert json.loads((workdir / "tokenizers" / "metrics.json").read_text())["image"]["psnr_db"] == metrics["image"]["psnr_db"]


@pytest.mark.slow  # the `trained` fixture trains all three tokenizers (~60 s)
def test_saved_tokenizers_load_as_one_vocabulary_that_round_trips_a_world_document(trained):
    cfg, workdir, _ = trained
    vocab = load_vocabulary(cfg, workdir)
    image = world.render_image(np.random.default_rng(0), "circle", "red", "large", "top left")
    clip = world.render_dtmf(np.random.default_rng(1), "15#")
    encoded = vocab.encode([Text("Here is a picture:"), Image(pixels=image), Text("and a sound:"), Audio(waveform=clip)])
    assert encoded.ids.max() < vocab.size
    assert (encoded.modality == 1).sum() == 64 and (encoded.modality == 2).sum() == 25  # 8x8 image, 1 s at 25/s

    decoded = vocab.decode(encoded.ids)
    assert [type(s) for s in decoded] == [Text, Image, Text, Audio]
    assert decoded[0].text == "Here is a picture:" and decoded[2].text == "and a sound:"
    assert decoded[1].pixels.shape == (32, 32, 3) and decoded[1].pixels.dtype == np.uint8
    assert decoded[3].waveform.shape == (16000,)
    # Codes survive exactly; the signals come back through the trained decoders.
    assert np.array_equal(vocab.encode([decoded[1]], bos=False, eos=False).ids[1:-1],
                          encoded.ids[encoded.modality == 1])


def test_loading_before_training_names_the_command_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="--stage tokenizers"):
        load_vocabulary(get_config("tiny"), tmp_path)
