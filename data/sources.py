"""Where examples come from: the world, or any tensorflow-datasets dataset by name or folder.

A source is a random-access data source (tfds ArrayRecord, read without TensorFlow) and a reader
that turns one of its records into `(kind, segments)` for the templates:

    open_source("world", "train", data_dir)                                   # our procedural world
    open_source("coco_captions", "train", data_dir,                           # a catalog dataset
                FeatureMapping(kind="caption", image="image", text="captions/text"))

A mapping names the features that hold the text, the image and the audio; `kind` picks the
template (caption: captioning and drawing; audio: transcription; text: plain text). Nested
features are named with `/`; a list-valued text feature contributes its first entry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import tensorflow_datasets as tfds

from data import world
from data.media import prepare_audio
from data.segments import Audio, Image, Segment, Text
from data.world_builder import build_world, decode_segments

Reader = Callable[[dict], tuple[str, list[Segment]]]


def read_world(record: dict) -> tuple[str, list[Segment]]:
    kind = record["kind"]
    return (kind.decode() if isinstance(kind, bytes) else str(kind)), decode_segments(record)


class WorldKind:
    """The examples of one kind in a world split, as a data source of their own: the world's kinds
    take turns by index (`world.example_kind`), so kind k of n is every n-th record from k."""

    def __init__(self, source, kind: str, split: str = "train"):
        kinds = world.SPLIT_KINDS[split]
        self.source, self.offset, self.every = source, kinds.index(kind), len(kinds)

    def __len__(self) -> int:
        return max(0, len(self.source) - self.offset + self.every - 1) // self.every

    def __getitem__(self, index: int):
        return self.source[self.offset + index * self.every]


def world_by_kind(source, split: str = "train") -> dict:
    """{kind: WorldKind} for a world split, to mix its kinds by weight in the pipeline."""
    return {kind: WorldKind(source, kind, split) for kind in world.SPLIT_KINDS[split]}


@dataclasses.dataclass(frozen=True)
class FeatureMapping:
    """Which features of a catalog dataset hold an example's text, image and audio."""

    kind: Literal["caption", "audio", "text"]
    text: str
    image: str | None = None
    audio: str | None = None
    sample_rate: int = 16_000  # of the audio feature

    def __post_init__(self):
        needs = {"caption": "image", "audio": "audio"}.get(self.kind)
        if needs and getattr(self, needs) is None:
            raise ValueError(f"a {self.kind!r} mapping must name its {needs} feature")

    def features(self) -> list[str]:
        return [f for f in (self.text, self.image, self.audio) if f is not None]

    def read(self, record: dict) -> tuple[str, list[Segment]]:
        text = _first(_get(record, self.text))
        text = text.decode() if isinstance(text, bytes) else str(text)
        if self.kind == "caption":
            return "caption", [Image(pixels=np.asarray(_get(record, self.image))), Text(text)]
        if self.kind == "audio":
            waveform = prepare_audio(np.asarray(_get(record, self.audio)), self.sample_rate)
            return "audio", [Audio(waveform=waveform), Text(text)]
        return "text", [Text(text)]


def _get(record: dict, path: str):
    for key in path.split("/"):
        record = record[key]
    return record


def _first(value):
    array = np.asarray(value, dtype=object) if not isinstance(value, (bytes, str)) else None
    return array.reshape(-1)[0] if array is not None and array.ndim else value


def _feature_names(features, prefix: str = "") -> set[str]:
    names = set()
    for key, feature in features.items():
        names.add(prefix + key)
        if hasattr(feature, "items"):
            names |= _feature_names(feature, prefix + key + "/")
    return names


def open_source(name: str, split: str, data_dir: str | None, mapping: FeatureMapping | None = None):
    """(data source, reader) for the world or a tfds dataset (a catalog name, or the folder a user
    prepared one into); a bad name, a missing split or feature, an empty split fail clearly."""
    if name == "world":
        return build_world(data_dir).as_data_source()[split], read_world
    if mapping is None:
        raise ValueError(f"the dataset {name!r} needs a FeatureMapping naming its text/image/audio features")
    try:
        if Path(name).expanduser().is_dir():
            builder = tfds.builder_from_directory(str(Path(name).expanduser()))
        else:
            builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"no tensorflow-datasets dataset is named {name!r} (see `tfds.list_builders()`)") from None
    if not builder.is_prepared():
        raise ValueError(f"dataset {name!r} is not prepared under {builder.data_dir}: prepare it in the ArrayRecord "
                         f"format first (`tfds build {name} --file_format=array_record`)")
    if split not in builder.info.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}")
    available = _feature_names(builder.info.features)
    missing = [f for f in mapping.features() if f not in available]
    if missing:
        raise ValueError(f"dataset {name!r} has no feature {missing}; it has {sorted(available)}")
    source = builder.as_data_source(split=split)
    if len(source) == 0:
        raise ValueError(f"dataset {name!r} split {split!r} is empty")
    return source, mapping.read
