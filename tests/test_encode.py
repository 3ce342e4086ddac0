"""The encode pass: media become codes once, batched, with exactly the codes one-at-a-time encoding
gives, and the pipeline then makes the same rows from the codes as from the media."""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from configs.tokenizers import AudioTokenizerConfig, ImageTokenizerConfig
from data.encode import encoded_folder, is_current
from data.mixture import encode_sources, open_mixture
from data.pipeline import PipelineStats, packed_batches
from data.prepare import prepare
from data.segments import Audio, Image
from tests.test_manifest import every_kind, manifest_config
from tokenization.audio import AudioCodec, AudioTokenizer
from tokenization.image import ImageCodec, ImageTokenizer


@pytest.mark.slow  # compiles the image tokenizer at several shapes (~6 s)
def test_batched_image_codes_equal_one_at_a_time():
    codec = ImageCodec(ImageTokenizer(ImageTokenizerConfig.tiny(), nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8) for size in (16, 32, 40, 24, 32)]
    batched = codec.encode_batch(images, batch_size=2)
    assert all(np.array_equal(b, codec.encode(image)) for b, image in zip(batched, images, strict=True))


@pytest.mark.slow  # compiles the audio tokenizer at several shapes (~5 s)
def test_batched_audio_codes_equal_one_at_a_time_for_clips_of_any_length():
    codec = AudioCodec(AudioTokenizer(AudioTokenizerConfig.tiny(), nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.1, n).astype(np.float32) for n in (3200, 3000, 6400, 3200, 640, 5000)]
    batched = codec.encode_batch(clips, batch_size=2)
    assert [len(c) for c in batched] == [5, 5, 10, 5, 1, 8]
    assert all(np.array_equal(b, codec.encode(clip)) for b, clip in zip(batched, clips, strict=True))


def test_encoded_records_hold_codes_and_pack_into_the_rows_the_media_make(tmp_path, vocab):
    prepare(every_kind(tmp_path, copies=2), tmp_path / "prepared", workers=1, log=lambda m: None)
    cfg = manifest_config(f"manifest:{tmp_path / 'prepared'}")
    raw = open_mixture(cfg, tmp_path / "run", "train")
    encode_sources(cfg, tmp_path / "run", vocab, log=lambda m: None)
    assert is_current(encoded_folder(tmp_path / "run", "prepared"), tmp_path / "run", tmp_path / "prepared")
    encoded = open_mixture(cfg, tmp_path / "run", "train")
    report = json.loads((encoded_folder(tmp_path / "run", "prepared") / "prepared.json").read_text())
    assert report["images"] == 8 and report["clips"] == 8 and report["records"]["train"] == 10

    kind, segments = encoded.readers["prepared"](encoded.sources["prepared"][0])
    _, media = raw.readers["prepared"](raw.sources["prepared"][0])
    for coded, signal in zip(segments, media, strict=True):
        if isinstance(coded, Image):
            assert coded.pixels is None and np.array_equal(coded.codes, vocab.image.encode(signal.pixels))
        if isinstance(coded, Audio):
            assert coded.waveform is None and np.array_equal(coded.codes, vocab.audio.encode(signal.waveform))

    data = dataclasses.replace(cfg.data, global_batch_size=2)
    rows = [iter(packed_batches(m.sources, vocab, data, 0, 1, PipelineStats(), m.weights, m.readers)) for m in (raw, encoded)]
    for _ in range(3):
        from_media, from_codes = next(rows[0]), next(rows[1])
        assert all(np.array_equal(from_media[k], from_codes[k]) for k in from_media)
    assert open_mixture(cfg, tmp_path / "run", "train", raw=True).readers["prepared"](raw.sources["prepared"][0])[1][0].pixels is not None


def test_codes_made_by_other_tokenizers_are_not_read(tmp_path, vocab):
    prepare(every_kind(tmp_path), tmp_path / "prepared", workers=1, log=lambda m: None)
    cfg = manifest_config(f"manifest:{tmp_path / 'prepared'}")
    encode_sources(cfg, tmp_path / "run", vocab, log=lambda m: None)
    (tmp_path / "run" / "tokenizers").mkdir()
    (tmp_path / "run" / "tokenizers" / "metrics.json").write_text("{}")  # the tokenizers were trained again
    assert not is_current(encoded_folder(tmp_path / "run", "prepared"), tmp_path / "run", tmp_path / "prepared")
    mixture = open_mixture(cfg, tmp_path / "run", "train")
    assert mixture.readers["prepared"](mixture.sources["prepared"][0])[1][0].pixels is not None
