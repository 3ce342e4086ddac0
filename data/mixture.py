"""The configured mixture (`data.sources`, configs/sources.py) as data sources the pipeline draws from.

    make_sources(cfg.data, workdir)          once, by one process: the world generated, manifests prepared
    encode_sources(cfg, workdir, vocab)      once, by one process, after the tokenizer stage: media -> codes
    open_mixture(cfg, workdir, "train")      every process: {stream: source}, readers, weights

The world enters as its four kinds (its weight split by `data.world_mixture`); a manifest as the
prepared ArrayRecord folder (a `.jsonl` is prepared into `<workdir>/data/<name>` first, again
when the manifest changes); a tfds dataset through its feature mapping. Every check that can fail
(a missing file or folder, a misspelt dataset or feature, an empty split) fails here, naming the
source, before any model is built or compiled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grain
import jax
from jax.experimental import multihost_utils

from configs.base import Config, DataConfig
from configs.sources import SourceSpec
from configs.tokenizers import VideoConfig
from data.encode import encode_prepared, encoded_folder, is_current
from data.manifest import AUDIO_RATE, Record, segments_of
from data.prepare import prepare
from data.sources import FeatureMapping, open_source, read_world, world_by_kind
from data import world as world_kinds
from data.vocab import Vocabulary
from data.world_builder import build_world
from data.world_chat import WorldConversations

PREPARED_REPORT = "prepared.json"
CONVERSATIONS = {"train": 10**6, "validation": 1000}  # the world's conversations per split (rendered, never stored)


@dataclasses.dataclass
class Mixture:
    """One split of every source: `sources` and `readers` keyed by stream name, `weights` for training.

    A stream is a source, or one of the world's kinds (`world/caption`, ...); `source_of` maps a
    stream back to the source it came from, for metrics kept per source."""

    sources: dict
    readers: dict
    weights: dict[str, float]
    source_of: dict[str, str]


class PreparedReader:
    """A prepared record's bytes -> (kind, segments), pictures at the image tokenizer's size, videos
    sampled as `tokenizers.video` says."""

    def __init__(self, image_size: int, sample_rate: int = AUDIO_RATE, video: VideoConfig = VideoConfig()):
        self.image_size, self.sample_rate, self.video = image_size, sample_rate, video

    def __call__(self, data: bytes):
        return segments_of(Record.from_bytes(data), self.image_size, self.sample_rate, self.video)


def prepared_folder(spec: SourceSpec, workdir: Path) -> Path:
    """Where a manifest source's prepared records are: its own folder, or the run's copy of a `.jsonl`."""
    where = Path(spec.where).expanduser()
    return where if not where.suffix == ".jsonl" else Path(workdir).absolute() / "data" / spec.name


def make_sources(cfg: DataConfig, workdir: Path, log=print, world: bool = True) -> None:
    """Generate what the sources need on disk (call it from one process): the world's records under
    `<workdir>/data` (unless `world` is False: a caller with its own), and every `.jsonl` manifest
    prepared (strictly: a bad line stops the run)."""
    for spec in cfg.source_specs():
        if spec.kind == "world" and world:
            build_world(str(Path(workdir).absolute() / "data"))
        elif spec.kind == "manifest" and spec.where.endswith(".jsonl"):
            manifest, folder = Path(spec.where).expanduser().absolute(), prepared_folder(spec, workdir)
            if not manifest.is_file():
                raise FileNotFoundError(f"data.sources {spec.name!r}: no manifest at {manifest}")
            report = folder / PREPARED_REPORT
            if report.exists() and report.stat().st_mtime >= manifest.stat().st_mtime:
                continue
            log(f"data.sources {spec.name!r}: preparing {manifest} into {folder}")
            try:
                prepare(manifest, folder, log=log)
            except ValueError as error:
                raise ValueError(f"data.sources {spec.name!r}: {error}; or prepare it yourself, "
                                 f"`python -m data.prepare {manifest} --out DIR --skip-bad`, "
                                 f"and name DIR as the source") from None


def ready_sources(cfg: Config, workdir: Path, log=print) -> None:
    """Make what the sources need (process 0, the others wait) and open every one's train split:
    what train.py does first, so a source that cannot be read stops the run before any work."""
    if jax.process_index() == 0:
        make_sources(cfg.data, workdir, log)
    multihost_utils.sync_global_devices("data sources made")
    open_mixture(cfg, workdir, "train")


def encode_sources(cfg: Config, workdir: Path, vocab: Vocabulary, log=print) -> None:
    """Encode every manifest source's pictures and sound with the run's tokenizers (data/encode.py),
    unless its codes are current; call it from one process, after the tokenizer stage."""
    for spec in cfg.data.source_specs():
        if spec.kind != "manifest":
            continue
        prepared, out = prepared_folder(spec, workdir), encoded_folder(workdir, spec.name)
        if not is_current(out, workdir, prepared):
            encode_prepared(prepared, out, vocab, cfg.tokenizers.audio.sample_rate, workdir, log=log,
                            video=cfg.tokenizers.video, image_size=cfg.tokenizers.image.image_size)


def open_prepared(folder: Path, split: str, name: str):
    """The split of a prepared folder as a random-access source of record bytes."""
    if not (folder / PREPARED_REPORT).exists():
        raise FileNotFoundError(f"data.sources {name!r}: {folder} is not a prepared dataset (no {PREPARED_REPORT}); "
                                f"run `python -m data.prepare MANIFEST --out {folder}`, or name the .jsonl manifest")
    shards = sorted(folder.glob(f"{split}-*.array_record"))
    report = json.loads((folder / PREPARED_REPORT).read_text())
    if not shards or not report["records"].get(split):
        return None
    return grain.sources.ArrayRecordDataSource([str(path) for path in shards])


def _tfds_split(spec: SourceSpec, split: str):
    """(data source, reader) of a tfds source's split; (None, None) when it has no held-out split."""
    name = spec.option(f"{split}_split", split)
    if name == "none":
        return None, None
    try:
        mapping = FeatureMapping(kind=spec.option("kind"), text=spec.option("text", "text"),
                                 image=spec.option("image"), audio=spec.option("audio"),
                                 sample_rate=int(spec.option("sample_rate", "16000")))
        return open_source(spec.where, name, spec.option("data_dir"), mapping)
    except ValueError as error:
        if split == "validation" and spec.option("validation_split") is None and "has no split" in str(error):
            return None, None  # no held-out split unless one was named
        raise ValueError(f"data.sources {spec.name!r}: {error}") from None


def world_splits(workdir: Path) -> dict:
    """The default world's splits (train, validation, compositional) under `<workdir>/data`."""
    return build_world(str(Path(workdir).absolute() / "data")).as_data_source()


def open_mixture(cfg: Config, workdir: Path, split: str = "train", world: dict | None = None,
                 raw: bool = False, conversations: bool = False, replay: float = 0.0) -> Mixture:
    """Every source's `split` ("train" or "validation"), ready for `packed_batches` or the evaluation.

    For "train" every source must have records; for "validation", a source without a held-out
    split is left out (its loss is not measured). `world`: the world's splits, when not the default
    world under `<workdir>/data`. A manifest source reads its encoded records where they are
    current (data/encode.py), its prepared media otherwise or with `raw` (the tokenizer stage).
    `conversations` (the SFT stage): the world enters as its conversations (data/world_chat.py),
    one stream, `world/conversation`, rendered as they are read, beside its pre-training examples
    with a `replay` share of the world's weight (so tuning keeps what pre-training taught)."""
    workdir = Path(workdir).absolute()
    sources, readers, weights, source_of = {}, {}, {}, {}
    for spec in cfg.data.source_specs():
        if spec.kind == "world" and conversations:
            stream = "world/conversation"
            chats = WorldConversations(cfg.data.seed, split, CONVERSATIONS[split])
            sources[stream], readers[stream], source_of[stream] = chats, chats.read, "world"
            weights[stream] = spec.weight * (1 - replay)
            if not replay:
                continue
        if spec.kind == "world":
            records = (world or world_splits(workdir))[split]
            share = sum(cfg.data.world_mixture) / (replay if conversations else 1)
            parts = dict(zip(world_kinds.KINDS, cfg.data.world_mixture))
            for kind, source in world_by_kind(records, split).items():
                stream = f"world/{kind}"
                sources[stream], readers[stream], source_of[stream] = source, read_world, "world"
                weights[stream] = spec.weight * parts[kind] / share
            continue
        if spec.kind == "manifest":
            folder = prepared_folder(spec, workdir)
            if not raw and is_current(encoded_folder(workdir, spec.name), workdir, folder):
                folder = encoded_folder(workdir, spec.name)
            reader = PreparedReader(cfg.tokenizers.image.image_size, cfg.tokenizers.audio.sample_rate,
                                    cfg.tokenizers.video)
            source = open_prepared(folder, split, spec.name)
            where = folder
        else:
            source, reader = _tfds_split(spec, split)
            where = spec.where
        if source is None or len(source) == 0:
            if split == "train":
                raise ValueError(f"data.sources {spec.name!r}: {where} holds no {split} records")
            continue
        sources[spec.name], readers[spec.name], weights[spec.name] = source, reader, spec.weight
        source_of[spec.name] = spec.name
    return Mixture(sources, readers, weights, source_of)
