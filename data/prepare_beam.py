"""`data.prepare` for a corpus too big for one machine: the same checks and records, on Apache Beam.

    python -m data.prepare_beam MANIFEST --out DIR [--skip-bad] [--validation-fraction 0.05] [BEAM OPTIONS]

Runs locally on Beam's DirectRunner by default; any Beam runner unchanged, e.g.
`--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp` (or Flink, Spark).
Needs the `beam` extra (`pip install -e '.[beam]'`).

Each line is checked by `data.manifest.check_line` and lands in the split `data.manifest.split_of`
gives it, so the records are those `python -m data.prepare` writes (in other shards and another
order). Beam's ArrayRecord sink (array_record.beam) writes the shards, `train-00000-of-00008.array_record`
..., and a last step writes `prepared.json`. A bad line fails the pipeline with its error (Beam
reads lines without their numbers, so the error quotes the line); with --skip-bad it is counted
and the first 100 are listed in the report. Written to DIR.partial and renamed when done, so DIR
must be a filesystem the launching machine sees as local (a disk, NFS, gcsfuse).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from array_record.beam.arrayrecordio import WriteToArrayRecord

from data.manifest import KINDS, SPLITS, BadRecord, check_line, split_of
from data.prepare import REPORTED_ERRORS


class CheckLine(beam.DoFn):
    """A manifest line -> (split, kind, record bytes); a bad one to the "bad" output, or an error."""

    def __init__(self, base: str, validation_fraction: float, max_audio_seconds: float, skip_bad: bool):
        self.base, self.validation_fraction = base, validation_fraction
        self.max_audio_seconds, self.skip_bad = max_audio_seconds, skip_bad

    def process(self, text: str):
        try:
            record, split = check_line(text, Path(self.base), self.max_audio_seconds)
        except BadRecord as error:
            message = f"line {text.strip()[:80]!r}: {error}"
            if not self.skip_bad:
                raise BadRecord(f"{message} (--skip-bad skips and counts such lines)") from None
            yield beam.pvalue.TaggedOutput("bad", message)
            return
        yield split or split_of(text, self.validation_fraction), record.kind, record.to_bytes()


def build(pipeline: beam.Pipeline, manifest: Path, out: Path, validation_fraction: float, skip_bad: bool,
          max_audio_seconds: float, started: float) -> None:
    """The preparation as Beam transforms on `pipeline`, writing into `out`."""
    lines = pipeline | "Read" >> beam.io.ReadFromText(str(manifest)) | "Not blank" >> beam.Filter(str.strip)
    checked = lines | "Check" >> beam.ParDo(
        CheckLine(str(manifest.parent), validation_fraction, max_audio_seconds, skip_bad)).with_outputs("bad", main="good")
    for split in SPLITS:
        (checked.good
         | f"In {split}" >> beam.Filter(lambda record, split=split: record[0] == split)
         | f"Bytes of {split}" >> beam.Map(lambda record: record[2])
         | f"Write {split}" >> WriteToArrayRecord(str(out / split), file_name_suffix=".array_record"))
    counts = (checked.good | "Split and kind" >> beam.Map(lambda record: (record[0], record[1]))
              | "Count" >> beam.combiners.Count.PerElement() | "All counts" >> beam.combiners.ToList())
    errors = checked.bad | "Bad lines" >> beam.combiners.ToList()
    (pipeline | "Once" >> beam.Create([None])
     | "Report" >> beam.Map(_write_report, beam.pvalue.AsSingleton(counts), beam.pvalue.AsSingleton(errors),
                            str(manifest), str(out), validation_fraction, started))


def _write_report(_, counts, errors, manifest, out, validation_fraction, started) -> None:
    kinds = {split: dict.fromkeys(KINDS, 0) for split in SPLITS}
    for (split, kind), count in counts:
        kinds[split][kind] += count
    report = {"manifest": manifest, "records": {split: sum(kinds[split].values()) for split in SPLITS},
              "kinds": {split: {k: n for k, n in c.items() if n} for split, c in kinds.items()},
              "bad_lines": len(errors), "errors": [{"error": e} for e in sorted(errors)[:REPORTED_ERRORS]],
              "validation_fraction": validation_fraction, "seconds": round(time.perf_counter() - started, 2),
              "engine": "beam"}
    (Path(out) / "prepared.json").write_text(json.dumps(report, indent=1) + "\n")


def prepare_beam(manifest: str | Path, out: str | Path, validation_fraction: float = 0.05, skip_bad: bool = False,
                 max_audio_seconds: float = 30.0, beam_args: list[str] | None = None, log=print) -> dict:
    """Run the preparation on Beam (the DirectRunner unless `beam_args` name another); returns the report."""
    manifest, out = Path(manifest).absolute(), Path(out).absolute()
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest at {manifest}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.perf_counter()
    try:
        with beam.Pipeline(options=PipelineOptions(beam_args or [])) as pipeline:
            build(pipeline, manifest, partial, validation_fraction, skip_bad, max_audio_seconds, started)
    except Exception as error:
        shutil.rmtree(partial, ignore_errors=True)
        cause = error
        while cause.__cause__ is not None or cause.__context__ is not None:  # the runner wraps the DoFn's error
            if isinstance(cause, BadRecord):
                break
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, BadRecord):
            raise BadRecord(f"{manifest}: {cause}") from None
        raise
    report = json.loads((partial / "prepared.json").read_text())
    if not sum(report["records"].values()):
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"{manifest}: no usable records ({report['bad_lines']} bad lines)")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    log(f"prepared {report['records']} records of {manifest.name} into {out} on Beam")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m data.prepare_beam", description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="the manifest: one JSON object per line (data/manifest.py)")
    parser.add_argument("--out", required=True, help="the folder to write the prepared dataset to")
    parser.add_argument("--validation-fraction", type=float, default=0.05,
                        help="share of the lines that pin no split which go to validation (by a hash of the line)")
    parser.add_argument("--skip-bad", action="store_true", help="skip, count and list bad lines instead of failing")
    parser.add_argument("--max-audio-seconds", type=float, default=30.0, help="a longer clip is a bad record")
    args, beam_args = parser.parse_known_args()
    try:
        prepare_beam(args.manifest, args.out, args.validation_fraction, args.skip_bad, args.max_audio_seconds, beam_args)
    except (BadRecord, ValueError, FileNotFoundError) as error:
        sys.exit(f"data.prepare_beam: {error}")


if __name__ == "__main__":
    main()
