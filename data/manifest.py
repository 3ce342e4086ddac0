"""A user's own data: the manifest format, one JSON object per line, and its records as stored.

Six kinds of line (file paths are relative to the manifest's folder, or absolute):

    {"image": "digits/0007.png", "caption": "a handwritten seven"}                caption
    {"audio": "speech/0042.wav", "transcript": "three one four"}                  audio
    {"video": "clips/0003.mp4", "caption": "a ball rolls to the left"}            video
    {"text": "def add(a, b):\\n    return a + b\\n"}                               text
    {"parts": [{"text": "A cat:"}, {"image": "cat.jpg"}, {"audio": "meow.wav"},   document
               {"video": "cat_frames/"}]}
    {"messages": [{"role": "user", "content": [                                   conversation
                     {"type": "text", "text": "Which digit is this?"},
                     {"type": "image_url", "image_url": {"url": "digits/0007.png"}}]},
                  {"role": "assistant", "content": "seven"}]}

A conversation is OpenAI's chat shape: a message's content is a string or a list of parts;
`image_url.url` is a file path or a `data:image/...;base64,` URL; `input_audio` is
`{"data": <base64 WAV>, "format": "wav"}` or `{"path": "clip.wav"}`; `video_url.url` (vLLM's name)
is a file path or a `data:video/mp4;base64,` (or webm, or `image/gif`) URL; roles are system, user
and assistant. A video is a GIF, an MP4 or WebM (anything FFmpeg reads), or a folder of frames
(image files, in name order, taken at `tokenizers.video.fps`). Any line may add `"split": "train"` or `"validation"` to pin where it goes; otherwise
the split follows from a hash of the line (data/prepare.py). Any other key is an error: a misspelt
"captoin" would otherwise drop the caption silently.

Checking a line reads its files: an image must decode (PNG, JPEG, anything PIL reads) and stay
under the pixel limit; audio must be WAV (integer PCM) no longer than `max_audio_seconds`; a video
must decode, every frame of it, and last no longer than `max_video_seconds`; a text must not be empty. Every failure is a `BadRecord` naming the line and what is wrong.

Stored (ArrayRecord, one msgpack map per record): the kind and its parts, each [role, modality,
payload]. Images and videos keep their original encoded bytes (every image size and frame rate a
tokenizer may want can be cut from them; a folder of frames is the list of its files' bytes); audio
becomes 16 kHz mono 16-bit PCM, so reading it back needs no WAV parsing
or resampling.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from pathlib import Path

import msgpack
import numpy as np

from data import conversation, media
from configs.tokenizers import VideoConfig
from data.segments import Audio, Image, Segment, Text, Video

AUDIO_RATE = 16_000  # of the stored PCM: every preset's audio tokenizer runs at 16 kHz
KINDS = ("caption", "audio", "video", "text", "document", "conversation")
MAX_VIDEO_SECONDS = 60.0
ROLES = ("system", "user", "assistant")
SPLITS = ("train", "validation")
_KEYS = {  # the keys each kind of line may hold, beside "split"
    "caption": {"image", "caption"},
    "audio": {"audio", "transcript"},
    "video": {"video", "caption"},
    "text": {"text"},
    "document": {"parts"},
    "conversation": {"messages"},
}


class BadRecord(ValueError):
    """A manifest line that cannot become a record; the message names the line and the problem."""


CODES = "<i4"  # the stored form of a picture's or a clip's codes (data/encode.py)


@dataclasses.dataclass(frozen=True)
class Part:
    # "text" | "image" | "audio" | "video" | "video_frames"; after the encode pass "image_codes" |
    # "audio_codes" | "video_codes"
    modality: str
    # the text; the image or video file's bytes; 16 kHz int16 PCM; a frames folder's files' bytes (a
    # list); codes as CODES (a list of them, a frame each, for a video)
    payload: str | bytes | list
    role: str = ""  # a conversation's speaker; "" elsewhere


@dataclasses.dataclass(frozen=True)
class Record:
    kind: str
    parts: tuple[Part, ...]

    def to_bytes(self) -> bytes:
        return msgpack.packb({"kind": self.kind, "parts": [[p.role, p.modality, p.payload] for p in self.parts]})

    @classmethod
    def from_bytes(cls, data: bytes) -> "Record":
        stored = msgpack.unpackb(data)
        return cls(stored["kind"], tuple(Part(modality, payload, role) for role, modality, payload in stored["parts"]))


def kind_of(line: dict) -> str:
    """Which kind of record a parsed line is, from its keys; BadRecord if none or several fit."""
    keys = set(line) - {"split"}
    for kind, allowed in _KEYS.items():
        if keys and keys <= allowed and (kind not in ("caption", "audio", "video") or keys == allowed):
            return kind
    known = sorted(set().union(*_KEYS.values()))
    raise BadRecord(f"keys {sorted(keys)} make no kind of record: a line holds image+caption, audio+transcript, "
                    f"video+caption, text, parts or messages (known keys: {known}, and split)")


def check_line(text: str, base: Path, max_audio_seconds: float = 30.0,
               max_video_seconds: float = MAX_VIDEO_SECONDS) -> tuple[Record, str | None]:
    """(record, pinned split or None) for one manifest line; its files are read and checked."""
    try:
        line = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRecord(f"not valid JSON ({error})") from None
    if not isinstance(line, dict):
        raise BadRecord(f"a line must be a JSON object, got {type(line).__name__}")
    split = line.get("split")
    if split is not None and split not in SPLITS:
        raise BadRecord(f"split must be one of {SPLITS}, got {split!r}")
    kind = kind_of(line)
    files = _Files(base, max_audio_seconds, max_video_seconds)
    if kind == "caption":
        parts = [files.image(line["image"], "image"), _text(line["caption"], "caption")]
    elif kind == "video":
        parts = [files.video(line["video"], "video"), _text(line["caption"], "caption")]
    elif kind == "audio":
        parts = [files.audio(line["audio"], "audio"), _text(line["transcript"], "transcript")]
    elif kind == "text":
        parts = [_text(line["text"], "text")]
    elif kind == "document":
        parts = _document(line["parts"], files)
    else:
        parts = _conversation(line["messages"], files)
    return Record(kind, tuple(parts)), split


def split_of(text: str, validation_fraction: float) -> str:
    """A deterministic split from the line's content alone (not its place in the file): a record
    lands in the same split however the manifest is ordered, cut or appended to."""
    canonical = json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False).encode()
    draw = int.from_bytes(hashlib.sha256(canonical).digest()[:8], "little") / 2**64
    return "validation" if draw < validation_fraction else "train"


def _text(value, where: str) -> Part:
    if not isinstance(value, str):
        raise BadRecord(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRecord(f"{where} is empty")
    return Part("text", value)


def _document(parts, files: "_Files") -> list[Part]:
    if not isinstance(parts, list) or not parts:
        raise BadRecord("parts must be a non-empty list of {\"text\": ...}, {\"image\": path}, {\"audio\": path} "
                        "or {\"video\": path}")
    out = []
    for i, part in enumerate(parts):
        where = f"parts[{i}]"
        if not isinstance(part, dict) or len(part) != 1 or next(iter(part)) not in ("text", "image", "audio", "video"):
            raise BadRecord(f"{where} must be one of {{\"text\": ...}}, {{\"image\": path}}, {{\"audio\": path}}, "
                            f"{{\"video\": path}}; got {json.dumps(part)[:80]}")
        (modality, value), = part.items()
        out.append(_text(value, where) if modality == "text" else getattr(files, modality)(value, where))
    return out


def _conversation(messages, files: "_Files") -> list[Part]:
    if not isinstance(messages, list) or not messages:
        raise BadRecord("messages must be a non-empty list of {\"role\": ..., \"content\": ...}")
    out = []
    for m, message in enumerate(messages):
        where = f"messages[{m}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES or "content" not in message:
            raise BadRecord(f"{where} needs a role ({', '.join(ROLES)}) and a content")
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list) or not parts:
            raise BadRecord(f"{where}.content must be a string or a non-empty list of parts")
        for p, part in enumerate(parts):
            out.append(dataclasses.replace(_content_part(part, f"{where}.content[{p}]", files), role=message["role"]))
    if not any(p.role == "assistant" for p in out):
        raise BadRecord("a conversation needs at least one assistant message: it is what the model learns to say")
    return out


def _content_part(part, where: str, files: "_Files") -> Part:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return _text(part.get("text"), f"{where}.text")
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url")
        if not isinstance(url, str):
            raise BadRecord(f"{where}.image_url.url must be a file path or a data: URL")
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            return files.image_bytes(_base64(data, f"{where}.image_url.url"), f"{where}.image_url.url")
        return files.image(url, f"{where}.image_url.url")
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        if "path" in audio:
            return files.audio(audio["path"], f"{where}.input_audio.path")
        if audio.get("format") != "wav" or not isinstance(audio.get("data"), str):
            raise BadRecord(f"{where}.input_audio needs a path, or base64 data with format 'wav'")
        return files.audio_bytes(_base64(audio["data"], f"{where}.input_audio.data"), f"{where}.input_audio.data")
    if kind == "video_url":
        url = (part.get("video_url") or {}).get("url")
        if not isinstance(url, str):
            raise BadRecord(f"{where}.video_url.url must be a file path, a frames folder or a data: URL")
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            return files.video_bytes(_base64(data, f"{where}.video_url.url"), f"{where}.video_url.url")
        return files.video(url, f"{where}.video_url.url")
    raise BadRecord(f"{where}: a part's type must be text, image_url, input_audio or video_url, got {kind!r}")


def _base64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRecord(f"{where}: not valid base64 ({error})") from None


@dataclasses.dataclass(frozen=True)
class _Files:
    """Reads and checks the media files a line names."""

    base: Path
    max_audio_seconds: float
    max_video_seconds: float = MAX_VIDEO_SECONDS

    def read(self, path, where: str) -> bytes:
        if not isinstance(path, str) or not path:
            raise BadRecord(f"{where} must be a file path, got {json.dumps(path)[:80]}")
        full = self.base / path
        try:
            return full.read_bytes()
        except FileNotFoundError:
            raise BadRecord(f"{where}: no such file {path!r} (looked for {full})") from None
        except OSError as error:
            raise BadRecord(f"{where}: cannot read {full} ({error.strerror or error})") from None

    def image(self, path, where: str) -> Part:
        return self.image_bytes(self.read(path, where), f"{where} {path!r}")

    def image_bytes(self, data: bytes, where: str) -> Part:
        try:
            media.check_image(data)
            media.prepare_image(data, 8)  # decodes every pixel: a truncated file fails here, not mid-training
        except ValueError as error:
            raise BadRecord(f"{where}: {error}") from None
        return Part("image", data)

    def audio(self, path, where: str) -> Part:
        return self.audio_bytes(self.read(path, where), f"{where} {path!r}")

    def audio_bytes(self, data: bytes, where: str) -> Part:
        try:
            samples = media.prepare_audio(data, max_seconds=self.max_audio_seconds, target_rate=AUDIO_RATE)
        except ValueError as error:
            raise BadRecord(f"{where}: {error}") from None
        return Part("audio", np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())


    def video(self, path, where: str) -> Part:
        """A video file, or a folder of frames (its image files in name order)."""
        if isinstance(path, str) and path and (self.base / path).is_dir():
            frames = sorted(p for p in (self.base / path).iterdir() if p.is_file() and not p.name.startswith("."))
            if not frames:
                raise BadRecord(f"{where}: the frames folder {path!r} holds no files")
            data = [self.read(str(p), f"{where} {path!r}") for p in frames]
            try:
                for frame in data:
                    media.check_image(frame)
                media.prepare_video(data, 8, max_frames=len(data), max_seconds=float("inf"))
            except ValueError as error:
                raise BadRecord(f"{where} {path!r}: {error}") from None
            return Part("video_frames", data)
        return self.video_bytes(self.read(path, where), f"{where} {path!r}")

    def video_bytes(self, data: bytes, where: str) -> Part:
        try:  # every frame decodes, within the length limit: a corrupt file fails here, not mid-training
            media.prepare_video(data, 8, fps=1000.0, max_frames=10**6, max_seconds=self.max_video_seconds)
        except ValueError as error:
            raise BadRecord(f"{where}: {error}") from None
        return Part("video", data)


def waveform(part: Part, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """A stored audio part as float32 samples at `sample_rate`."""
    pcm = np.frombuffer(part.payload, "<i2")
    return media.prepare_audio(pcm.astype(np.int16), AUDIO_RATE, max_seconds=float("inf"), target_rate=sample_rate)


def segments_of(record: Record, image_size: int, sample_rate: int = AUDIO_RATE,
                video: VideoConfig = VideoConfig()) -> tuple[str, list[Segment]]:
    """(kind, segments) of a stored record, pictures at `image_size` (data/media.py's rule), sound
    at `sample_rate` and videos sampled as `video` says, or their codes once encoded: what the
    templates (data/templates.py) take.
    A conversation goes through the conversation template (data/conversation.py), which marks the
    loss: the assistant's turns train."""
    segments = [_segment(part, image_size, sample_rate, video) for part in record.parts]
    if record.kind == "conversation":
        return record.kind, conversation.segments(conversation.by_role(
            (part.role, segment) for part, segment in zip(record.parts, segments)))
    return record.kind, segments


def _segment(part: Part, image_size: int, sample_rate: int, video: VideoConfig) -> Segment:
    if part.modality == "text":
        return Text(part.payload)
    if part.modality == "image":
        return Image(pixels=media.prepare_image(part.payload, image_size))
    if part.modality == "audio":
        return Audio(waveform=waveform(part, sample_rate))
    if part.modality in ("video", "video_frames"):
        return Video(frames=video_frames(part, image_size, video))
    if part.modality == "image_codes":
        return Image(codes=np.frombuffer(part.payload, CODES))
    if part.modality == "video_codes":
        return Video(codes=np.stack([np.frombuffer(frame, CODES) for frame in part.payload]))
    return Audio(codes=np.frombuffer(part.payload, CODES))


def video_frames(part: Part, image_size: int, video: VideoConfig) -> np.ndarray:
    """A stored video part's frames, sampled at `video.fps`, at most `video.max_frames` of them."""
    return media.prepare_video(part.payload, image_size, video.fps, video.max_frames, max_seconds=float("inf"))
