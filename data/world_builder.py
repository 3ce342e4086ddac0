"""The world as a tfds dataset (ArrayRecord), so one pipeline reads it and the catalog datasets.

Only `Tensor` and `Text` features: tfds's `Image` and `Audio` features need TensorFlow, which
this project never imports. A record flattens an example's segment list into parallel fields:

    kind           str                  "caption" | "audio" | "document" | "video"
    modalities     int32 [S]            per segment: 0 text, 1 image, 2 audio, 3 video (data.segments)
    texts          str [T]              the text segments, in order
    images         uint8 [I, 32, 32, 3] the image segments' pictures and the video segments' frames, in order
    video_lengths  int32 [V]            frames per video segment
    audio          int16 [sum(lengths)] the audio segments' 16 kHz PCM, concatenated
    audio_lengths  int32 [A]            samples per audio segment

Records are stored in index order (record i of a split is `world.make_example(seed, split, i)`);
strings read back as bytes. `decode_segments` turns a record back into the segment list.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from data import world
from data.segments import IMAGE, TEXT, VIDEO, Audio, Image, Segment, Text, Video

# Pixels and PCM as raw bytes, not one proto int per value: 4x faster to build, 2x to read. (ArrayRecord
# already compresses, so zlib on top gains nothing.)
RAW = tfds.features.Encoding.BYTES
DEFAULT_SIZES = {"train": 24_000, "validation": 1_000, "compositional": 1_000}


def encode_segments(kind: str, segments: list[Segment]) -> dict[str, object]:
    """One record's fields; audio is stored as int16 PCM (half the bytes, inaudible loss)."""
    texts = [s.text for s in segments if isinstance(s, Text)]
    images = [frame for s in segments for frame in ([s.pixels] if isinstance(s, Image) else
                                                    s.frames if isinstance(s, Video) else [])]
    clips = [s.waveform for s in segments if isinstance(s, Audio)]
    size = world.IMAGE_SIZE
    return {
        "kind": kind,
        "modalities": np.array([s.modality for s in segments], np.int32),
        "texts": np.array(texts, dtype=object),
        "images": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        "audio": np.round(np.concatenate([np.zeros(0, np.float32), *clips]) * 32767).astype(np.int16),
        "audio_lengths": np.array([len(a) for a in clips], np.int32),
        "video_lengths": np.array([len(s.frames) for s in segments if isinstance(s, Video)], np.int32),
    }


def decode_segments(record: dict) -> list[Segment]:
    """A record, as the data source reads it, back to the segment list (audio as float32)."""
    texts = iter(Text(t.decode() if isinstance(t, bytes) else str(t)) for t in record["texts"])
    pictures, frames = np.asarray(record["images"]), iter(record["video_lengths"])
    ends = np.cumsum(record["audio_lengths"])
    pcm = np.split(np.asarray(record["audio"], np.float32) / 32767, ends[:-1]) if len(ends) else []
    clips = iter(Audio(waveform=w) for w in pcm)
    segments, used = [], 0
    for modality in record["modalities"]:
        if modality in (IMAGE, VIDEO):
            count = 1 if modality == IMAGE else int(next(frames))
            segments.append(Image(pixels=pictures[used]) if modality == IMAGE else Video(frames=pictures[used : used + count]))
            used += count
        else:
            segments.append(next(texts) if modality == TEXT else next(clips))
    return segments


@dataclasses.dataclass(eq=False)
class WorldConfig(tfds.core.BuilderConfig):
    """Which world: its seed and how many examples each split holds."""

    seed: int = 0
    train: int = DEFAULT_SIZES["train"]
    validation: int = DEFAULT_SIZES["validation"]
    compositional: int = DEFAULT_SIZES["compositional"]


class World(tfds.core.GeneratorBasedBuilder):
    """Coloured shapes with captions, DTMF clips with transcripts, captioned clips of moving shapes,
    and documents mixing them."""

    VERSION = tfds.core.Version("2.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.", "2.0.0": "Clips (kind video, field video_lengths).",
                     "2.1.0": "A clip where a shape appears names the first shape first (\"... is joined by ...\")."}
    BUILDER_CONFIGS = [WorldConfig(name="default", description="24k / 1k / 1k examples, seed 0.")]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """None: nothing is downloaded, so there is no checksums file to look for beside the code.

        tfds 4.9.10 finds that file through `importlib_resources`, which it does not install on
        Python >= 3.9 (tensorflow/datasets#11212); not looking avoids the ModuleNotFoundError.
        """
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        size = world.IMAGE_SIZE
        return self.dataset_info_from_configs(
            description=__doc__,
            disable_shuffling=True,  # record i is example i: kinds stay interleaved, readers shuffle
            features=tfds.features.FeaturesDict(
                {
                    "kind": tfds.features.Text(),
                    "modalities": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "texts": tfds.features.Tensor(shape=(None,), dtype=np.object_),
                    "images": tfds.features.Tensor(shape=(None, size, size, 3), dtype=np.uint8, encoding=RAW),
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=RAW),
                    "audio_lengths": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "video_lengths": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in world.SPLITS}

    def _generate_examples(self, split: str):
        config = self.builder_config
        for index in range(getattr(config, split)):
            yield index, encode_segments(*world.make_example(config.seed, split, index))


def build_world(
    data_dir: str,
    *,
    seed: int = 0,
    train: int = DEFAULT_SIZES["train"],
    validation: int = DEFAULT_SIZES["validation"],
    compositional: int = DEFAULT_SIZES["compositional"],
) -> World:
    """The builder of that world under `data_dir`, generated first if it is not there yet.

    Non-default seeds or sizes get their own config name, hence their own directory.
    """
    sizes = dict(train=train, validation=validation, compositional=compositional)
    if seed == 0 and sizes == DEFAULT_SIZES:
        config = "default"
    else:
        name = f"seed{seed}_" + "_".join(str(n) for n in sizes.values())
        config = WorldConfig(name=name, description=f"seed {seed}, sizes {sizes}", seed=seed, **sizes)
    builder = World(data_dir=data_dir, config=config, file_format="array_record")
    builder.download_and_prepare()  # a no-op when the data is already there
    return builder
