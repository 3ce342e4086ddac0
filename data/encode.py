"""The encode pass: every prepared record's pictures, sound and videos turned into codes once, after the
tokenizer stage, so the LM's input pipeline does no media decoding or tokenizer work per step.

    <workdir>/data/encoded/<source>/train-00000.array_record ...   the records, media as codes
    <workdir>/data/encoded/<source>/prepared.json                  the prepared report, plus what
                                                                   encoded it (the tokenizers' stamp)

Records are read in chunks; their pictures and clips go through the tokenizers' `encode_batch`
(jitted, a batch at a time, on whatever device there is); each record is written back with
`image_codes` / `audio_codes` / `video_codes` (a frame's codes each, the frames sampled as
`tokenizers.video` says) parts in place of the media. A source's codes are current while
the run's tokenizers are the ones that made them (their metrics.json, written last by the
tokenizer stage, is the stamp) and its prepared records are unchanged; otherwise they are made again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import grain
import numpy as np

from configs.tokenizers import VideoConfig
from data.manifest import CODES, SPLITS, Part, Record, video_frames, waveform
from data.prepare import ShardedWriter
from data.vocab import Vocabulary

REPORT = "prepared.json"
CHUNK_RECORDS = 512  # records read, encoded and written together


def encoded_folder(workdir: Path, name: str) -> Path:
    return Path(workdir).absolute() / "data" / "encoded" / name


def stamp(workdir: Path, prepared: Path) -> dict:
    """What the codes depend on: the run's tokenizers and the prepared records."""
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "absent"

    return {"tokenizers": digest(Path(workdir).absolute() / "tokenizers" / "metrics.json"),
            "prepared": digest(prepared / REPORT)}


def is_current(folder: Path, workdir: Path, prepared: Path) -> bool:
    report = folder / REPORT
    return report.exists() and json.loads(report.read_text()).get("encoded_from") == stamp(workdir, prepared)


def encode_prepared(prepared: Path, out: Path, vocab: Vocabulary, sample_rate: int, workdir: Path,
                    records_per_shard: int = 50_000, log=print, video: VideoConfig = VideoConfig(),
                    image_size: int = 32) -> dict:
    """Encode every record of the prepared folder `prepared` into `out`; returns `out`'s report."""
    started = time.perf_counter()
    report = json.loads((prepared / REPORT).read_text())
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    counts = {"images": 0, "clips": 0, "videos": 0}
    for split in SPLITS:
        shards = sorted(prepared.glob(f"{split}-*.array_record"))
        if not shards:
            continue
        source = grain.sources.ArrayRecordDataSource([str(p) for p in shards])
        writer = ShardedWriter(partial, split, records_per_shard)
        for start in range(0, len(source), CHUNK_RECORDS):
            records = [Record.from_bytes(source[i]) for i in range(start, min(start + CHUNK_RECORDS, len(source)))]
            images = [p.payload for r in records for p in r.parts if p.modality == "image"]
            clips = [waveform(p, sample_rate) for r in records for p in r.parts if p.modality == "audio"]
            videos = [video_frames(p, image_size, video) for r in records for p in r.parts
                      if p.modality in ("video", "video_frames")]
            frame_codes = iter(vocab.image.encode_batch([f for frames in videos for f in frames]) if videos else [])
            codes = {"image": iter(vocab.image.encode_batch(images) if images else []),
                     "audio": iter(vocab.audio.encode_batch(clips) if clips else []),
                     "video": iter([[next(frame_codes) for _ in frames] for frames in videos])}
            counts["images"] += len(images)
            counts["clips"] += len(clips)
            counts["videos"] += len(videos)
            for record in records:
                writer.write(dataclasses.replace(record, parts=tuple(_encoded(p, codes) for p in record.parts)).to_bytes())
        writer.close()
    report = {**report, "encoded_from": stamp(workdir, prepared), **counts,
              "encode_seconds": round(time.perf_counter() - started, 2)}
    (partial / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    log(f"encoded {counts['images']} pictures, {counts['clips']} clips and {counts['videos']} videos of {prepared.name} in "
        f"{report['encode_seconds']:.0f}s")
    return report


def _encoded(part: Part, codes: dict) -> Part:
    if part.modality in ("video", "video_frames"):
        return Part("video_codes", [np.asarray(frame, CODES).tobytes() for frame in next(codes["video"])], part.role)
    if part.modality not in ("image", "audio"):
        return part
    return Part(f"{part.modality}_codes", np.asarray(next(codes[part.modality]), CODES).tobytes(), part.role)
