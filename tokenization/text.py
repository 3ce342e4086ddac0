"""Text <-> ids with SentencePiece: trained by the project on its corpus, or a user's `.model` file;
or, for an imported checkpoint that has no SentencePiece model (Llama 3), its Hugging Face
`tokenizer.json` (`JsonTokenizer`). Both offer the same few methods; `load_text_tokenizer` reads
either from a run's tokenizers folder.

Ids 0-11 of a trained model are the control symbols every model here relies on; byte fallback
means any text, in any script, encodes without `<unk>`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
from tokenizers import Tokenizer

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
# Delimiters of image, audio and video runs, and chat turns: inserted by id, never produced from text.
CONTROL = ("<boi>", "<eoi>", "<boa>", "<eoa>", "<start_of_turn>", "<end_of_turn>", "<bov>", "<eov>")


class TextTokenizer:
    FILE = "text.model"  # its name in a run's tokenizers folder

    def __init__(self, model_proto: bytes, source: str = "<bytes>"):
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        # <pad>, <bos> and <eos> are the model's own pad, bos and eos ids, whatever their pieces are
        # called (a Llama model's are <s> and </s>); the rest are found by name.
        own = {PAD: self.processor.pad_id(), BOS: self.processor.bos_id(), EOS: self.processor.eos_id()}
        self.ids = {s: own[s] if own.get(s, -1) >= 0 else self.processor.piece_to_id(s) for s in (PAD, BOS, EOS, *CONTROL)}
        missing = [s for s, i in self.ids.items() if i == self.processor.unk_id()]
        if missing:
            raise ValueError(f"SentencePiece model {source} lacks the control symbols {missing}; "
                             f"train it with control_symbols={list(CONTROL)} and pad/bos/eos pieces {PAD} {BOS} {EOS} "
                             "(or extend it: open_weights/vocabulary.py)")
        self.size, self._unk = self.processor.get_piece_size(), self.processor.unk_id()  # read per token when serving

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {path}")
        return cls(path.read_bytes(), source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(self.model_proto)

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; an id with no piece (a model may generate any id it has) reads as <unk>'s " ⁇ "."""
        return self.processor.decode([i if 0 <= i < self.size else self._unk for i in ids])

    def piece(self, token: int) -> str:
        """One id's piece as text (spaces shown as spaces): how logprobs show a token."""
        return self.processor.id_to_piece(token).replace("\u2581", " ")


class JsonTokenizer:
    """A Hugging Face `tokenizers` model (tokenizer.json), with the names of its bos, eos and pad
    tokens; saved as one JSON object holding both. Text never encodes to a special token: typing
    `<|eot_id|>` gives its characters' ids, as typing `<end_of_turn>` does with SentencePiece."""

    FILE = "text.json"

    def __init__(self, tokenizer_json: str, specials: dict[str, str], source: str = "<json>"):
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.encode_special_tokens = True
        self.specials = dict(specials)
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        missing = [s for s in (PAD, BOS, EOS, *CONTROL) if self.specials.get(s, s) not in vocab]
        if missing:
            raise ValueError(f"tokenizer {source} lacks the control symbols {missing} (extend it: open_weights/vocabulary.py)")
        self.ids = {s: vocab[self.specials.get(s, s)] for s in (PAD, BOS, EOS, *CONTROL)}
        self.size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def load(cls, path: str | Path) -> "JsonTokenizer":
        saved = json.loads(Path(path).read_text())
        return cls(saved["tokenizer"], saved["specials"], source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"tokenizer": self.tokenizer.to_str(), "specials": self.specials}))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; an id past the vocabulary reads as nothing."""
        return self.tokenizer.decode([i for i in ids if 0 <= i < self.size], skip_special_tokens=False)

    def piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)


def load_text_tokenizer(folder: str | Path) -> TextTokenizer | JsonTokenizer:
    """The text tokenizer saved in a run's tokenizers folder, whichever kind it is."""
    folder = Path(folder)
    if (folder / JsonTokenizer.FILE).is_file():
        return JsonTokenizer.load(folder / JsonTokenizer.FILE)
    return TextTokenizer.load(folder / TextTokenizer.FILE)


def train_text_tokenizer(sentences: Iterable[str], vocab_size: int) -> TextTokenizer:
    """BPE with byte fallback and digits split, as Llama's and Gemma's tokenizers are: a digit is
    one piece wherever it stands, so "tones 1 5" and "It was 5." share the 5 (merged with its
    full stop it was another token, one the model had to learn to copy the tone into). `vocab_size`
    is an upper bound: a small corpus yields fewer pieces."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece=PAD, bos_piece=BOS, eos_piece=EOS, unk_piece=UNK,
        control_symbols=list(CONTROL),
        minloglevel=2,
    )
    return TextTokenizer(model.getvalue(), source="<trained>")
