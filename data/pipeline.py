"""tfds data source -> grain: template, tokenize, pack, batch; sharded per process, resumable.

    source[i]                         a record, random access (tfds ArrayRecord data source)
      -> this process's share         indices process_index, process_index + count, ...
      -> shuffle, repeat              grain index shuffling: nothing is buffered, so it resumes exactly
      -> mix                          several named sources by weight (grain's deterministic mix)
      -> template + encode            world record -> segments with loss marks -> ids (data/vocab.py)
      -> overlong: truncate or drop   counted in `PipelineStats`
      -> first-fit packing            rows of seq_len; segment ids 1..k, positions restart per segment
      -> batch                        this process's rows of the global batch
      -> prefetch                     a background thread keeps `data.prefetch` batches ready

Each training row carries `inputs`, `targets` (inputs shifted by one), `loss_mask` (the target
is one the template says the model must produce), `modality` (of the target), and the packing's
`segment_ids` / `positions`. The iterator's `get_state()` / `set_state()` resume it exactly.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from configs.base import DataConfig
from data import templates
from data.segments import TEXT
from data.sources import Reader, read_world
from data.vocab import Vocabulary
from parallel.sharding import logical_to_spec

FEATURES = ("inputs", "targets", "loss_mask", "modality")
BATCH_FIELDS = FEATURES + ("segment_ids", "positions")  # what a packed batch holds: int32 [rows, seq_len] each


@dataclasses.dataclass
class PipelineStats:
    """What the pipeline did to examples, counted in this process."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tasks: dict = dataclasses.field(default_factory=dict)
    sources: dict = dataclasses.field(default_factory=dict)


def process_share(source, process_index: int, process_count: int) -> grain.MapDataset:
    """This process's records: every `process_count`-th, starting at `process_index` (disjoint, covering)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
    if len(source) == 0:
        raise ValueError("the data source is empty: nothing to train on")
    return grain.MapDataset.source(source)[process_index::process_count]


def training_example(named_record, index: int, vocab: Vocabulary, cfg: DataConfig, stats: PipelineStats,
                     readers: dict[str, Reader]) -> dict | None:
    """One (source name, record) -> one unpacked training sequence; None when too long and cfg says drop."""
    name, record = named_record
    stats.sources[name] = stats.sources.get(name, 0) + 1
    task, segments = templated(readers[name], record, index, cfg)
    stats.tasks[task] = stats.tasks.get(task, 0) + 1
    return sequence(segments, vocab, cfg, stats)


def templated(reader: Reader, record, index: int, cfg: DataConfig) -> tuple[str, list]:
    """(task, segments with loss marks) of one record; the template's choices are seeded by the index."""
    kind, segments = reader(record)
    return templates.apply(kind, segments, np.random.default_rng([cfg.seed, index]), cfg.captioning_share)


def sequence(segments: list, vocab: Vocabulary, cfg: DataConfig, stats: PipelineStats) -> dict | None:
    """Templated segments -> ids, shifted targets, loss mask and modality; None when too long and cfg says drop."""
    encoded = vocab.encode(segments)
    stats.examples += 1
    length = len(encoded.ids) - 1  # inputs and targets are the ids shifted against each other
    if length > cfg.seq_len:
        if cfg.overlong == "drop":
            stats.dropped += 1
            if stats.dropped == stats.examples >= 100:  # filtering would spin forever on an endless stream
                raise ValueError(f"config field `data.seq_len`: all {stats.examples} examples so far are longer "
                                 f"than {cfg.seq_len} tokens, and data.overlong='drop' skips every one")
            return None
        stats.truncated += 1
    keep = min(length, cfg.seq_len)
    return {
        "inputs": encoded.ids[:keep],
        "targets": encoded.ids[1 : keep + 1],
        "loss_mask": encoded.loss_mask[1 : keep + 1].astype(np.int32),
        "modality": encoded.modality[1 : keep + 1].astype(np.int32),
    }


def packed_batches(
    sources,
    vocab: Vocabulary,
    cfg: DataConfig,
    process_index: int | None = None,
    process_count: int | None = None,
    stats: PipelineStats | None = None,
    weights: dict[str, float] | None = None,
    readers: dict[str, Reader] | None = None,
) -> grain.IterDataset:
    """Batches of packed rows for this process: dicts of int32 [rows, seq_len] arrays.

    `sources`: one data source, or a dict name -> data source mixed by `weights` (default equal);
    `readers`: name -> record reader (data/sources.py), the world's by default.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if cfg.global_batch_size % process_count:
        raise ValueError(f"config field `data.global_batch_size`: {cfg.global_batch_size} does not split over "
                         f"{process_count} processes")
    sources = sources if isinstance(sources, dict) else {"main": sources}
    weights = weights or {name: 1.0 for name in sources}
    readers = {name: (readers or {}).get(name, read_world) for name in sources}
    if set(weights) != set(sources) or min(weights.values()) <= 0:
        raise ValueError(f"mixture weights {weights} must be positive and name exactly the sources {sorted(sources)}")
    stats = PipelineStats() if stats is None else stats
    streams = [
        process_share(source, process_index, process_count)
        .shuffle(seed=cfg.seed + i)
        .repeat()
        .map(lambda record, name=name: (name, record))
        for i, (name, source) in enumerate(sources.items())
    ]
    mixed = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, [weights[n] for n in sources])
    examples = mixed.map_with_index(lambda index, named: training_example(named, index, vocab, cfg, stats, readers)).filter(
        lambda example: example is not None
    )
    packed = grain.experimental.FirstFitPackIterDataset(
        examples.to_iter_dataset(),
        length_struct={name: cfg.seq_len for name in FEATURES},
        num_packing_bins=cfg.packing_bins,
        seed=cfg.seed,
    )
    batches = packed.map(_rename_packing_fields).batch(cfg.global_batch_size // process_count)
    if cfg.prefetch:
        batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=cfg.prefetch)
    return batches


def held_out_batches(source, reader: Reader, vocab: Vocabulary, cfg: DataConfig, examples: int) -> tuple[list[dict], int]:
    """(batches, text bytes) of the first `examples` records of a held-out source, templated and
    packed as training packs them but in order (no shuffle, no repeat), overlong ones truncated, as
    full batches of `cfg.global_batch_size` rows (the last padded with empty rows): the same rows at
    every eval, so held-out losses compare across steps. The text bytes are the UTF-8 bytes of
    the text the rows train (for bits per byte)."""
    cfg = dataclasses.replace(cfg, overlong="truncate")
    stats, text_bytes = PipelineStats(), [0]

    def example(index: int, record) -> dict:
        _, segments = templated(reader, record, index, cfg)
        text_bytes[0] += sum(len(s.text.encode()) for s in segments if s.modality == TEXT and s.loss)
        return sequence(segments, vocab, cfg, stats)

    records = grain.MapDataset.source(source)[: min(examples, len(source))]
    packed = grain.experimental.FirstFitPackIterDataset(
        records.map_with_index(example).to_iter_dataset(), length_struct={name: cfg.seq_len for name in FEATURES},
        num_packing_bins=cfg.packing_bins, seed=cfg.seed)
    rows = [_rename_packing_fields(row) for row in packed]
    rows += [{name: np.zeros(cfg.seq_len, np.int32) for name in BATCH_FIELDS}] * (-len(rows) % cfg.global_batch_size)
    size = cfg.global_batch_size
    batches = [{name: np.stack([row[name] for row in rows[i : i + size]]) for name in BATCH_FIELDS}
               for i in range(0, len(rows), size)]
    return batches, text_bytes[0]


def _rename_packing_fields(row: dict) -> dict:
    """Grain writes segment ids and positions per feature; every feature shares the inputs' ones."""
    out = {name: row[name] for name in FEATURES}
    out["segment_ids"], out["positions"] = row["inputs_segment_ids"], row["inputs_positions"]
    return out


def packing_efficiency(batch: dict) -> float:
    """The share of positions that hold a real token rather than padding."""
    return float(np.mean(np.asarray(batch["segment_ids"]) != 0))


def to_global(batch: dict, mesh: Mesh) -> dict:
    """This process's rows -> global arrays split over the mesh's batch axes."""
    sharding = NamedSharding(mesh, logical_to_spec(("batch", "length")))
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for name, value in batch.items()}
