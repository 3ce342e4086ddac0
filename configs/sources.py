"""The data mixture's spelling: `data.sources` lists sources as `KIND:WHERE:WEIGHT` strings.

    world:1                                        the procedural world (its kinds weighted by data.world_mixture)
    manifest:/data/digits.jsonl:2                  a manifest (prepared into the run's workdir on first use)
    manifest:/data/digits_prepared:2               ... or a folder `python -m data.prepare` wrote
    tfds:coco_captions?kind=caption&image=image&text=captions/text:1
                                                   a tensorflow-datasets dataset (a catalog name, or the
                                                   folder of one a user prepared), with its feature mapping

The weight is optional (1). A tfds source's options, after `?`: kind (caption, audio or text),
text, image, audio (the features that hold them; nested ones as `a/b`), sample_rate (of the audio
feature), data_dir, train_split (default train), validation_split (default validation; `none` for
no held-out split). Only the spelling is checked here, when the config is made; whether the
files, datasets and features exist is checked by data/mixture.py before anything compiles.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from pathlib import PurePath

SOURCE_KINDS = ("world", "manifest", "tfds")
TFDS_OPTIONS = ("kind", "text", "image", "audio", "sample_rate", "data_dir", "train_split", "validation_split")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    kind: str  # "world" | "manifest" | "tfds"
    where: str  # the manifest's path or prepared folder, the tfds name or folder; "" for the world
    weight: float
    options: tuple[tuple[str, str], ...] = ()  # tfds: the feature mapping and splits

    @property
    def name(self) -> str:
        """How metrics and logs name the source: world, the manifest's stem, the dataset's name."""
        if self.kind == "world":
            return "world"
        path = PurePath(self.where.rstrip("/"))
        if self.kind == "tfds" and re.fullmatch(r"\d+\.\d+\.\d+", path.name):  # a prepared dataset's version folder
            path = path.parent
        stem = path.name.removesuffix(".jsonl") if self.kind == "manifest" else path.name.split(":")[0]
        return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or self.kind

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)


def parse_source(spec: str) -> SourceSpec:
    """`KIND[:WHERE][:WEIGHT]` -> SourceSpec; ValueError naming what is wrong (caught by DataConfig)."""
    kind, _, rest = spec.partition(":")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"{spec!r}: a source starts with one of {', '.join(SOURCE_KINDS)} (e.g. world:1, "
                         f"manifest:/data/digits.jsonl:2, tfds:NAME?kind=caption&image=image&text=caption:1)")
    number = r"[0-9]*\.?[0-9]+(e-?[0-9]+)?"
    if kind == "world":
        if rest and not re.fullmatch(number, rest):
            raise ValueError(f"{spec!r}: the world takes only a weight, as world:2")
        where, weight = "", float(rest or 1)
    else:
        where, weight = rest, 1.0
        head, colon, tail = rest.rpartition(":")
        if colon and re.fullmatch(number, tail):
            where, weight = head, float(tail)
    if weight <= 0:
        raise ValueError(f"{spec!r}: the weight must be positive")
    if kind == "world":
        return SourceSpec("world", "", weight)
    if not where:
        raise ValueError(f"{spec!r}: name the {'manifest or prepared folder' if kind == 'manifest' else 'dataset'}, "
                         f"as {kind}:WHERE:WEIGHT")
    options: tuple = ()
    if kind == "tfds":
        where, _, query = where.partition("?")
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        unknown = sorted({k for k, _ in pairs} - set(TFDS_OPTIONS))
        if unknown:
            raise ValueError(f"{spec!r}: unknown option {unknown}; a tfds source takes {', '.join(TFDS_OPTIONS)}")
        options = tuple(pairs)
        if dict(options).get("kind") not in ("caption", "audio", "text"):
            raise ValueError(f"{spec!r}: a tfds source needs ?kind=caption, audio or text, and the features that "
                             f"hold them (e.g. tfds:{where}?kind=caption&image=image&text=caption)")
    return SourceSpec(kind, where, weight, options)
