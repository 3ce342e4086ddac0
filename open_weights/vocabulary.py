"""An imported model's vocabulary, extended to ours: its SentencePiece model gains our control symbols
after its own pieces, the image and audio codes follow, and the new embedding rows are drawn by a rule.

No id of the checkpoint's changes, so a text-only prompt gets the same logits for the checkpoint's
own ids after the extension as before it (tested).

The rule for a new row (a control symbol, an image or audio code, the table's padding), in the
input table and, untied, in the output head alike: the mean of the checkpoint's rows plus Gaussian
noise with their per-dimension standard deviation (Hewitt, "Initializing new word embeddings for
pretrained language models", 2021). A new row then looks like an ordinary row of the checkpoint's:
its logit starts near the average one rather than dominating, and distinct codes start distinct.
The noise of row i is drawn from (seed, i), so any host makes any row without the others.
"""

from __future__ import annotations

import struct
from typing import Callable

import numpy as np
import sentencepiece as spm

from open_weights.tensors import Checkpoint
from tokenization.text import CONTROL, PAD

CONTROL_TYPE = 3  # SentencePiece's ModelProto.SentencePiece.Type.CONTROL: never produced from text
CHUNK_ROWS = 4096  # rows read at a time for the statistics: the table is never read whole


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _control_piece(text: str) -> bytes:
    """ModelProto field 1 (pieces): a SentencePiece {piece: text, score: 0, type: CONTROL}."""
    piece = _field(1, text.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", 0.0) + _varint(3 << 3) + _varint(CONTROL_TYPE)
    return _field(1, piece)


def extend_sentencepiece(model_proto: bytes) -> bytes:
    """`model_proto` with a <pad> (if it has no pad id) and our control symbols it lacks appended as
    control pieces after its own, so every id it had keeps its meaning.

    Appending serialised fields is how protobuf merges: the extra pieces parse after the others (the
    next ids), and a second trainer_spec holding only pad_id merges into the first. This spares the
    generated `sentencepiece_model_pb2`, which needs a newer protobuf runtime than Beam allows."""
    processor = spm.SentencePieceProcessor(model_proto=model_proto)
    unk, size = processor.unk_id(), processor.get_piece_size()
    missing = [symbol for symbol in CONTROL if processor.piece_to_id(symbol) == unk]
    extra = b""
    if processor.pad_id() < 0:
        if processor.piece_to_id(PAD) == unk:
            missing.insert(0, PAD)
            pad = size
        else:
            pad = processor.piece_to_id(PAD)
        extra += _field(2, _varint(43 << 3) + _varint(pad))  # TrainerSpec.pad_id = 43
    return model_proto + b"".join(_control_piece(symbol) for symbol in missing) + extra


def new_rows(checkpoint: Checkpoint, seed: int = 0) -> Callable[[str, int, int], np.ndarray]:
    """`extra_rows` for open_weights.tensors.import_params: rows first..stop of a table (by its tensor
    name) that the checkpoint lacks, by the rule above. Each tensor's statistics are read once, in
    chunks of rows."""
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def moments(name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in stats:
            rows, width = checkpoint.shape(name)
            total, squares = np.zeros(width), np.zeros(width)
            for start in range(0, rows, CHUNK_ROWS):
                chunk = checkpoint.read(name, (slice(start, min(rows, start + CHUNK_ROWS)), slice(0, width)))
                chunk = chunk.astype(np.float64)
                total += chunk.sum(0)
                squares += (chunk * chunk).sum(0)
            mean = total / rows
            stats[name] = (mean, np.sqrt(np.maximum(squares / rows - mean * mean, 0.0)))
        return stats[name]

    def rows(name: str, first: int, stop: int) -> np.ndarray:
        mean, std = moments(name)
        return np.stack([mean + std * np.random.default_rng([seed, row]).standard_normal(mean.size)
                         for row in range(first, stop)]).astype(np.float32)

    return rows
