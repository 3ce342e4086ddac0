"""An imported model's vocabulary, extended to ours: its SentencePiece model (or Hugging Face
tokenizer.json) gains our control symbols after its own ids, the image and audio codes follow, and
the new embedding rows are drawn by a rule.

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

from typing import Callable

import numpy as np
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Tokenizer

from open_weights.tensors import Checkpoint
from tokenization.text import BOS, CONTROL, EOS, PAD, JsonTokenizer

CONTROL_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL  # never produced from text

CHUNK_ROWS = 4096  # rows read at a time for the statistics: the table is never read whole


def extend_sentencepiece(model_proto: bytes) -> bytes:
    """`model_proto` with a <pad> (if it has no pad id) and our control symbols it lacks appended as
    control pieces after its own, so every id it had keeps its meaning."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_proto)
    have = {piece.piece: index for index, piece in enumerate(model.pieces)}
    if model.trainer_spec.pad_id < 0:
        if PAD not in have:
            model.pieces.add(piece=PAD, score=0.0, type=CONTROL_PIECE)
            have[PAD] = len(model.pieces) - 1
        model.trainer_spec.pad_id = have[PAD]
    for symbol in CONTROL:
        if symbol not in have:
            model.pieces.add(piece=symbol, score=0.0, type=CONTROL_PIECE)
    return model.SerializeToString()


def extend_json_tokenizer(tokenizer_json: str, config: dict) -> JsonTokenizer:
    """A Hugging Face tokenizer.json (Llama 3's byte-level BPE) with a <pad> (if `config`, its
    tokenizer_config.json, names none) and our control symbols it lacks added as special tokens
    after its own ids; its bos and eos are the ones `config` names."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    name = lambda token: token["content"] if isinstance(token, dict) else token  # noqa: E731
    specials = {BOS: name(config["bos_token"]), EOS: name(config["eos_token"]), PAD: name(config.get("pad_token") or PAD)}
    have = tokenizer.get_vocab(with_added_tokens=True)
    missing = [symbol for symbol in (specials[PAD], *CONTROL) if symbol not in have]
    tokenizer.add_special_tokens([AddedToken(symbol, special=True, normalized=False) for symbol in missing])
    return JsonTokenizer(tokenizer.to_str(), specials)


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
