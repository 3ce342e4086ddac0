"""The segments a multimodal example is made of: text, an image, a sound, a video, a control symbol.

The world generates them, the vocabulary encodes them to ids (and decodes ids back to them),
the input pipeline's templates mark which ones the model is trained to produce (`loss`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

TEXT, IMAGE, AUDIO, VIDEO = 0, 1, 2, 3
# The modalities of token positions (by id range: data/vocab.py): a video's frames are image tokens.
MODALITY_NAMES = ("text", "image", "audio")


@dataclasses.dataclass(frozen=True)
class Text:
    text: str
    loss: bool = True  # is the model trained to produce this segment?
    modality: ClassVar[int] = TEXT


@dataclasses.dataclass(frozen=True, eq=False)
class Image:
    """Pixels (uint8 [H, W, 3]) or codes (int [N]) or both; decoding fills in what it can."""

    pixels: np.ndarray | None = None
    codes: np.ndarray | None = None
    loss: bool = True
    modality: ClassVar[int] = IMAGE


@dataclasses.dataclass(frozen=True, eq=False)
class Audio:
    """A waveform (float32, 16 kHz mono) or codes (int [N]) or both; decoding fills in what it can."""

    waveform: np.ndarray | None = None
    codes: np.ndarray | None = None
    loss: bool = True
    modality: ClassVar[int] = AUDIO


@dataclasses.dataclass(frozen=True, eq=False)
class Video:
    """Frames (uint8 [F, H, W, 3], sampled at the run's `tokenizers.video_fps`) or codes (int [F, N],
    each frame's image codes) or both; decoding fills in what it can."""

    frames: np.ndarray | None = None
    codes: np.ndarray | None = None
    loss: bool = True
    modality: ClassVar[int] = VIDEO


@dataclasses.dataclass(frozen=True)
class Symbol:
    """One control symbol by name (`<start_of_turn>`, `<end_of_turn>`): an id of its own, which no
    text encodes to. It carries no text (`text` is empty), so text statistics and the text
    tokenizer's training never see its name."""

    name: str
    loss: bool = True
    modality: ClassVar[int] = TEXT
    text: ClassVar[str] = ""


Segment = Text | Image | Audio | Video | Symbol


def payload(segment: Segment):
    """The signal a segment carries: its text, pixels, waveform or frames."""
    return {TEXT: lambda s: s.text, IMAGE: lambda s: s.pixels, AUDIO: lambda s: s.waveform,
            VIDEO: lambda s: s.frames}[segment.modality](segment)
