"""Prepare a manifest (data/manifest.py) as an ArrayRecord dataset the training pipeline reads by random access.

    python -m data.prepare MANIFEST --out DIR [--skip-bad] [--validation-fraction 0.05] [--workers N]

Every line is checked (its files read and decoded) and written, as one record, to the train or
the validation split: the split a line pins, or else a hash of the line's content, so the same
line always lands in the same split. The output:

    DIR/train-00000.array_record ...        records, a new shard every --records-per-shard
    DIR/validation-00000.array_record ...
    DIR/prepared.json                       the report: records per split and kind, bad lines

A bad line (a missing or unreadable file, an undecodable image or audio file, an empty text)
stops the run with an error naming the line, and DIR is left as it was; with --skip-bad it is
skipped, counted and listed in the report. The corpus is streamed: at most one batch of lines
and their files is in memory at once. The work is written to DIR.partial and renamed when done.
A corpus too big for one machine: the same checks and records on Apache Beam (data/prepare_beam.py).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import tyro
from array_record.python.array_record_module import ArrayRecordWriter

from data.manifest import KINDS, SPLITS, BadRecord, check_line, split_of

REPORTED_ERRORS = 100  # bad lines listed by number and reason in the report; all are counted
WRITER_OPTIONS = "group_size:1"  # one record per chunk: random access reads only the record asked for


@dataclasses.dataclass(frozen=True)
class PrepareFlags:
    manifest: tyro.conf.Positional[str]
    """the manifest: one JSON object per line (data/manifest.py)"""
    out: str
    """the folder to write the prepared dataset to (replaced when the run succeeds)"""
    validation_fraction: float = 0.05
    """share of the lines that pin no split which go to validation (by a hash of the line)"""
    skip_bad: bool = False
    """skip lines that fail their checks, and count and list them in the report, instead of stopping"""
    workers: int = 0
    """processes that read and check files (0: one per core)"""
    records_per_shard: int = 50_000
    """records per ArrayRecord file"""
    max_audio_seconds: float = 30.0
    """a longer clip is a bad record"""
    batch_lines: int = 512
    """lines read, checked and written together: what the run holds in memory at once"""


class ShardedWriter:
    """Writes one split's records into numbered ArrayRecord files of at most `per_shard` records."""

    def __init__(self, folder: Path, split: str, per_shard: int):
        self.folder, self.split, self.per_shard = folder, split, per_shard
        self.count, self.writer = 0, None

    def write(self, data: bytes) -> None:
        if self.count % self.per_shard == 0:
            self.close()
            self.writer = ArrayRecordWriter(str(self.folder / f"{self.split}-{self.count // self.per_shard:05d}.array_record"),
                                            WRITER_OPTIONS)
        self.writer.write(data)
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _check(numbered_line: tuple[int, str], base: Path, validation_fraction: float, max_audio_seconds: float):
    """(line number, split, kind, record bytes) or (line number, None, None, error message)."""
    number, text = numbered_line
    try:
        record, split = check_line(text, base, max_audio_seconds)
        return number, split or split_of(text, validation_fraction), record.kind, record.to_bytes()
    except BadRecord as error:
        return number, None, None, str(error)


def prepare(manifest: str | Path, out: str | Path, validation_fraction: float = 0.05, skip_bad: bool = False,
            workers: int = 0, records_per_shard: int = 50_000, max_audio_seconds: float = 30.0,
            batch_lines: int = 512, log=print) -> dict:
    """Check and write every line of `manifest` to `out`; returns the report (also `out/prepared.json`)."""
    manifest, out = Path(manifest).absolute(), Path(out).absolute()
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest at {manifest}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction must lie in [0, 1), got {validation_fraction}")
    started = time.perf_counter()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    writers = {split: ShardedWriter(partial, split, records_per_shard) for split in SPLITS}
    kinds = {split: dict.fromkeys(KINDS, 0) for split in SPLITS}
    bad, errors = 0, []
    check = functools.partial(_check, base=manifest.parent, validation_fraction=validation_fraction,
                              max_audio_seconds=max_audio_seconds)
    workers = workers or os.cpu_count() or 1
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        with open(manifest, encoding="utf-8") as lines:
            numbered = ((n, text) for n, text in enumerate(lines, 1) if text.strip())
            while batch := list(itertools.islice(numbered, batch_lines)):
                for number, split, kind, data in (pool.map(check, batch) if pool else map(check, batch)):
                    if split is None:
                        if not skip_bad:
                            raise BadRecord(f"{manifest}:{number}: {data} (--skip-bad skips and counts such lines)")
                        bad += 1
                        if len(errors) < REPORTED_ERRORS:
                            errors.append({"line": number, "error": data})
                        continue
                    writers[split].write(data)
                    kinds[split][kind] += 1
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        for writer in writers.values():
            writer.close()
        if pool is not None:
            pool.terminate()
    report = {"manifest": str(manifest), "records": {split: w.count for split, w in writers.items()},
              "kinds": {split: {k: n for k, n in counts.items() if n} for split, counts in kinds.items()},
              "bad_lines": bad, "errors": errors, "validation_fraction": validation_fraction,
              "seconds": round(time.perf_counter() - started, 2)}
    if not sum(report["records"].values()):
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"{manifest}: no usable records ({bad} bad lines)")
    (partial / "prepared.json").write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    log(f"prepared {report['records']} records of {manifest.name} into {out}"
        + (f"; skipped {bad} bad lines (listed in prepared.json)" if bad else ""))
    return report


def main() -> None:
    flags = tyro.cli(PrepareFlags, prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    try:
        prepare(**dataclasses.asdict(flags))
    except (BadRecord, ValueError, FileNotFoundError) as error:
        sys.exit(f"data.prepare: {error}")


if __name__ == "__main__":
    main()
