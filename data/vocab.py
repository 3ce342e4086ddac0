"""The unified vocabulary: one id space for text pieces, image codes and audio codes.

    [0, T)            SentencePiece pieces (control symbols <bos> <eos> <boi> <eoi> <boa> <eoa> ... among them)
    [T, T + I)        image codes
    [T + I, T + I + A) audio codes
    ... padded to a multiple of 128 (unused ids)

A segment list such as [Text("Describe:"), Image(pixels), Text("a red circle")] encodes to ids, a
loss mask (which positions the model is trained to produce) and a modality id per position, and
decodes back. Image and audio runs are wrapped in <boi> ... <eoi> and <boa> ... <eoa>; a video is
its frames' image runs wrapped in <bov> ... <eov>:

    <bov> <boi> frame 0's codes <eoi> <boi> frame 1's codes <eoi> ... <eov>
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from configs.base import ModelConfig
from data.segments import AUDIO, IMAGE, TEXT, VIDEO, Audio, Image, Segment, Symbol, Text, Video
from tokenization.text import BOS, EOS, TextTokenizer


class Codec(Protocol):
    """What the vocabulary needs of a tokenizer: one example's signal <-> a flat run of codes."""

    length: int | None  # codes per item when fixed (an image's grid); None when any length decodes (audio)

    def encode(self, signal: np.ndarray) -> np.ndarray: ...

    def encode_batch(self, signals: list) -> list[np.ndarray]: ...  # `encode` of each, batched on the device

    def decode(self, codes: np.ndarray) -> np.ndarray: ...




@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # int32 [N]
    loss_mask: np.ndarray  # bool [N]: positions whose token the model must produce
    modality: np.ndarray  # int8 [N]: TEXT, IMAGE or AUDIO, by the id's range


class Vocabulary:
    def __init__(self, text: TextTokenizer, cfg: ModelConfig, image: Codec | None = None, audio: Codec | None = None):
        if text.size > cfg.text_vocab_size:
            raise ValueError(f"config field `model.text_vocab_size`: {cfg.text_vocab_size} is smaller than the "
                             f"SentencePiece model's {text.size} pieces")
        self.text, self.image, self.audio = text, image, audio
        self.image_offset = cfg.text_vocab_size
        self.audio_offset = cfg.text_vocab_size + cfg.image_vocab_size
        self.image_codes, self.audio_codes = cfg.image_vocab_size, cfg.audio_vocab_size
        self.size = cfg.vocab_size
        self.real_size = self.audio_offset + self.audio_codes  # ids past it pad the table, and are never tokens
        self.ids = text.ids
        # What `decode` looks up for every id (a server decodes a window at every token it streams).
        self._dropped = {self.ids[BOS], self.ids[EOS], self.ids["<pad>"]}
        self._runs = {self.ids["<boi>"]: (self.ids["<eoi>"], IMAGE), self.ids["<boa>"]: (self.ids["<eoa>"], AUDIO),
                      self.ids["<bov>"]: (self.ids["<eov>"], VIDEO)}

    def is_token(self) -> np.ndarray:
        """bool [size]: the ids that are tokens. The text range can be wider than its SentencePiece
        model (a small corpus yields fewer pieces), and ids past `real_size` only pad the table."""
        ids = np.arange(self.size)
        return (ids < self.text.size) | ((ids >= self.image_offset) & (ids < self.real_size))

    # ---- encoding -------------------------------------------------------------------------
    def encode(self, segments: Sequence[Segment], bos: bool = True, eos: bool = True) -> Encoded:
        """<bos> segments... <eos>. The <eos> is trained when the last segment is; <bos> never is."""
        ids: list[int] = [self.ids[BOS]] if bos else []
        loss: list[bool] = [False] if bos else []
        for segment in segments:
            run = self._segment_ids(segment)
            ids += run
            loss += [segment.loss] * len(run)
        if eos:
            ids.append(self.ids[EOS])
            loss.append(bool(segments) and segments[-1].loss)
        ids_n = np.asarray(ids, np.int32)
        return Encoded(ids_n, np.asarray(loss, bool), self.modality_of(ids_n))

    def _segment_ids(self, segment: Segment) -> list[int]:
        if isinstance(segment, Text):
            return self.text.encode(segment.text)
        if isinstance(segment, Image):
            codes = self._codes(segment.codes, segment.pixels, self.image, self.image_codes, "image")
            return [self.ids["<boi>"], *(codes + self.image_offset).tolist(), self.ids["<eoi>"]]
        if isinstance(segment, Audio):
            codes = self._codes(segment.codes, segment.waveform, self.audio, self.audio_codes, "audio")
            return [self.ids["<boa>"], *(codes + self.audio_offset).tolist(), self.ids["<eoa>"]]
        if isinstance(segment, Video):
            ids = [self.ids["<bov>"]]
            for codes in self._frame_codes(segment):
                ids += [self.ids["<boi>"], *(codes + self.image_offset).tolist(), self.ids["<eoi>"]]
            return ids + [self.ids["<eov>"]]
        if isinstance(segment, Symbol):
            if segment.name not in self.ids:
                raise ValueError(f"no control symbol {segment.name!r}; the vocabulary has {sorted(self.ids)}")
            return [self.ids[segment.name]]
        raise TypeError(f"not a segment: {type(segment).__name__} (expected Text, Image, Audio, Video or Symbol)")

    def _frame_codes(self, video: Video) -> list[np.ndarray]:
        """Each frame's image codes: given, or the frames encoded in one batch."""
        if video.codes is not None:
            return [self._codes(codes, None, self.image, self.image_codes, "video frame") for codes in video.codes]
        if video.frames is None or len(video.frames) == 0:
            raise ValueError("video segment has neither codes nor frames")
        if self.image is None:
            raise ValueError("video segment has raw frames but this vocabulary has no image tokenizer")
        return [self._codes(codes, None, None, self.image_codes, "video frame")
                for codes in self.image.encode_batch(list(video.frames))]

    @staticmethod
    def _codes(codes, signal, codec: Codec | None, count: int, kind: str) -> np.ndarray:
        if codes is None:
            if signal is None:
                raise ValueError(f"{kind} segment has neither codes nor a signal")
            if codec is None:
                raise ValueError(f"{kind} segment has a raw signal but this vocabulary has no {kind} tokenizer")
            codes = codec.encode(signal)
        codes = np.asarray(codes).reshape(-1).astype(np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= count):
            raise ValueError(f"{kind} codes must lie in [0, {count}); got [{codes.min()}, {codes.max()}]")
        return codes

    def modality_of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return np.where(ids >= self.audio_offset, AUDIO, np.where(ids >= self.image_offset, IMAGE, TEXT)).astype(np.int8)

    # ---- decoding -------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], signals: bool = True) -> list[Segment]:
        """Ids back to segments; <bos>, <eos> and <pad> are dropped, unterminated runs are kept.

        Any id decodes: outside a media run, an id with no text piece (a stray code, the unused
        tail of the id space) reads as <unk>; inside one, ids that are not its codes are dropped.
        `signals=False` leaves media segments as their codes, without running the codecs (a
        reply's text, re-read at every token, needs none of the pixels)."""
        ids = [int(i) for i in ids]
        skip, opens = self._dropped, self._runs
        segments: list[Segment] = []
        text_run: list[int] = []
        i = 0
        while i < len(ids):
            token = ids[i]
            if token in opens:
                if text_run:
                    segments.append(Text(self.text.decode(text_run)))
                    text_run = []
                close, modality = opens[token]
                end = i + 1
                while end < len(ids) and ids[end] != close:
                    end += 1
                segments.append(self._media(np.asarray(ids[i + 1 : end]), modality, signals))
                i = end + 1
            else:
                if token not in skip:
                    text_run.append(token)
                i += 1
        if text_run:
            segments.append(Text(self.text.decode(text_run)))
        return segments

    def _media(self, run: np.ndarray, modality: int, signals: bool) -> Segment:
        if modality == VIDEO:
            return self._video(run, signals)
        if modality == IMAGE:
            codes = run[(run >= self.image_offset) & (run < self.audio_offset)] - self.image_offset
            return Image(pixels=self._signal(self.image, codes) if signals else None, codes=codes)
        codes = run[(run >= self.audio_offset) & (run < self.audio_offset + self.audio_codes)] - self.audio_offset
        return Audio(waveform=self._signal(self.audio, codes) if signals else None, codes=codes)

    def _video(self, run: np.ndarray, signals: bool) -> Video:
        """A video run's frames: each <boi> ... <eoi> inside it. A frame that is not a whole picture's
        codes (a generation cut short) is dropped."""
        starts = np.nonzero(run == self.ids["<boi>"])[0]
        frames = [self._media(run[start + 1 : end], IMAGE, signals) for start, end in zip(starts, [*starts[1:], len(run)])]
        length = self.image.length if self.image else max((f.codes.size for f in frames), default=0)
        frames = [f for f in frames if length and f.codes.size == length]
        codes = np.stack([f.codes for f in frames]) if frames else np.zeros((0, length), np.int64)
        pixels = [f.pixels for f in frames]
        return Video(frames=np.stack(pixels) if pixels and all(p is not None for p in pixels) else None, codes=codes)

    @staticmethod
    def _signal(codec: Codec | None, codes: np.ndarray) -> np.ndarray | None:
        """Pixels or samples from codes; None when there is no codec or the run cannot be decoded
        (empty, or a generated image with the wrong number of codes): the codes are kept either way."""
        if codec is None or codes.size == 0 or (codec.length is not None and codes.size != codec.length):
            return None
        return codec.decode(codes)
