"""Catalog datasets by name: a feature mapping turns their records into templated examples; bad names fail clearly."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.base import DataConfig
from data.pipeline import PipelineStats, packed_batches
from data.segments import Audio, Image, Text
from data.sources import FeatureMapping, open_source


class ToyCaptions(tfds.core.GeneratorBasedBuilder):
    """A stand-in for a captioning catalog dataset: any-size RGB images, nested caption text."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # nothing downloaded, no checksums file (see data/world_builder.py)
        return None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="bytes"),
            "captions": {"text": tfds.features.Tensor(shape=(None,), dtype=np.object_)},
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(12):
            size = 24 + 8 * (i % 3)  # not the tokenizer's 32x32: the codec's input handling resizes
            yield i, {"image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                      "captions": {"text": np.array([f"picture number {i}", "another caption"], dtype=object)}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("catalog")
    ToyCaptions(data_dir=str(path), file_format="array_record").download_and_prepare()
    return str(path)


MAPPING = FeatureMapping(kind="caption", image="image", text="captions/text")


def test_a_catalog_dataset_opens_by_name_and_reads_through_its_mapping(data_dir):
    source, read = open_source("toy_captions", "train", data_dir, MAPPING)
    kind, segments = read(source[3])
    assert kind == "caption" and isinstance(segments[0], Image) and isinstance(segments[1], Text)
    number = int(segments[1].text.removeprefix("picture number "))  # the first of the record's captions
    size = 24 + 8 * (number % 3)
    assert segments[0].pixels.shape == (size, size, 3)


def test_catalog_examples_flow_through_the_pipeline_as_captioning_and_drawing(data_dir, vocab):
    source, read = open_source("toy_captions", "train", data_dir, MAPPING)
    stats = PipelineStats()
    batch = next(iter(packed_batches({"toy": source}, vocab, DataConfig(seq_len=256, global_batch_size=2, prefetch=0),
                                     0, 1, stats=stats, readers={"toy": read})))
    assert batch["inputs"].shape == (2, 256) and set(stats.tasks) <= {"captioning", "drawing"} and stats.examples > 0


def test_an_unknown_dataset_or_a_missing_feature_is_named(data_dir):
    with pytest.raises(ValueError, match="no tensorflow-datasets dataset is named 'no_such_dataset_xyz'"):
        open_source("no_such_dataset_xyz", "train", data_dir, MAPPING)
    with pytest.raises(ValueError, match=r"has no feature \['caption'\]; it has \['captions', 'captions/text', 'image'\]"):
        open_source("toy_captions", "train", data_dir, FeatureMapping(kind="caption", image="image", text="caption"))
    with pytest.raises(ValueError, match="must name its audio feature"):
        FeatureMapping(kind="audio", text="transcript")


def test_an_audio_mapping_resamples_to_16k_mono():
    mapping = FeatureMapping(kind="audio", audio="speech", text="text", sample_rate=8000)
    record = {"speech": (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440) * 20000).astype(np.int16), "text": b"hello"}
    kind, (audio, text) = mapping.read(record)
    assert kind == "audio" and isinstance(audio, Audio) and audio.waveform.shape == (16000,) and text.text == "hello"
