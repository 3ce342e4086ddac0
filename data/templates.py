"""Tasks as templates: one world example -> the segment list the model trains on, loss marked.

The loss covers what the model must produce (the answer), never the prompt:

    captioning      [Text(prompt), Image]          -> Text(caption)        (image -> text)
    drawing         [Text(prompt + caption)]       -> Image                (text -> image)
    transcription   [Text(prompt), Audio]          -> Text(transcript)     (audio -> text)
    video_captioning [Text(prompt), Video]         -> Text(caption)        (video -> text)
    document        every segment is trained: an interleaved document is its own answer
    text            plain text, all trained
    conversation    a chat's turns through the conversation template (data/conversation.py):
                    the model's turns are trained (the reader renders them: data/manifest.py)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data.segments import Audio, Image, Segment, Text, Video

TASKS = ("captioning", "drawing", "transcription", "video_captioning", "document", "text", "conversation")
CAPTION_PROMPT = "Describe the picture:"
DRAW_PROMPT = "Draw:"
TRANSCRIBE_PROMPT = "Transcribe the tones:"
VIDEO_PROMPT = "Describe the clip:"


def captioning(image: Image, caption: str) -> list[Segment]:
    return [Text(CAPTION_PROMPT, loss=False), Image(pixels=image.pixels, codes=image.codes, loss=False),
            Text(caption, loss=True)]


def drawing(image: Image, caption: str) -> list[Segment]:
    return [Text(f"{DRAW_PROMPT} {caption}", loss=False), Image(pixels=image.pixels, codes=image.codes, loss=True)]


def transcription(audio: Audio, transcript: str) -> list[Segment]:
    return [Text(TRANSCRIBE_PROMPT, loss=False), Audio(waveform=audio.waveform, codes=audio.codes, loss=False),
            Text(transcript, loss=True)]


def video_captioning(video: Video, caption: str) -> list[Segment]:
    return [Text(VIDEO_PROMPT, loss=False), Video(frames=video.frames, codes=video.codes, loss=False),
            Text(caption, loss=True)]


def document(segments: list[Segment]) -> list[Segment]:
    return [_with_loss(s, True) for s in segments]


def _with_loss(segment: Segment, loss: bool) -> Segment:
    return dataclasses.replace(segment, loss=loss)


def apply(kind: str, segments: list[Segment], rng: np.random.Generator,
          captioning_share: float = 0.5) -> tuple[str, list[Segment]]:
    """(task, templated segments) for a world example of `kind`; a caption example becomes
    captioning (with odds `captioning_share`) or drawing, so both directions are trained from the
    same pictures."""
    if kind == "caption":
        image, caption = segments
        if rng.random() < captioning_share:
            return "captioning", captioning(image, caption.text)
        return "drawing", drawing(image, caption.text)
    if kind == "audio":
        audio, transcript = segments
        return "transcription", transcription(audio, transcript.text)
    if kind == "video":
        video, caption = segments
        return "video_captioning", video_captioning(video, caption.text)
    if kind == "document":
        return "document", document(segments)
    if kind == "text":
        return "text", document(segments)
    if kind == "conversation":
        return "conversation", list(segments)
    raise ValueError(f"no template for examples of kind {kind!r}; known kinds: caption, audio, video, document, "
                     f"text, conversation")
