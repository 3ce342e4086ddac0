"""Chat content parts -> pixels and waveforms, and generated pixels -> a PNG data URL.

Images come as `data:image/png;base64,...` or `data:image/jpeg;base64,...` URLs. A remote URL
is refused unless its host is on the allow-list the operator passed (`--allow-image-host`), so
the server never fetches whatever a caller points it at; an allowed one is fetched with a
timeout and the same size limit as a request body. Audio comes as base64 WAV. Every failure
raises `BadInput` naming the part and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image

from data import media

_DATA_URL = re.compile(r"data:(?P<mime>[\w/+.-]+)?(?P<params>(;[\w=.-]+)*?);base64,(?P<data>.*)", re.DOTALL)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")


class BadInput(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadInput(f"{param}: not valid base64 ({error})", param) from None


def image_bytes(url: str, param: str, allowed_hosts: tuple[str, ...], max_bytes: int) -> bytes:
    """The encoded image a content part's URL names."""
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url.strip())
        if not match:
            raise BadInput(f"{param}: a data URL must look like data:image/png;base64,<data>", param)
        if (match["mime"] or "").lower() not in IMAGE_TYPES:
            raise BadInput(f"{param}: unsupported image type {match['mime']!r}; send one of {IMAGE_TYPES}", param)
        return _b64(match["data"], param)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadInput(f"{param}: expected a data: URL or an http(s) URL, got {url[:60]!r}", param)
    if parsed.hostname not in allowed_hosts:
        raise BadInput(f"{param}: remote images are not fetched from {parsed.hostname!r} (the server's "
                       f"--allow-image-host list: {list(allowed_hosts) or 'empty'}); send the image as a data: URL", param)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data = response.read(max_bytes + 1)
    except OSError as error:
        raise BadInput(f"{param}: could not fetch {url[:100]!r}: {error}", param) from None
    if len(data) > max_bytes:
        raise BadInput(f"{param}: the image at {url[:100]!r} is over {max_bytes} bytes", param)
    return data


def check_image(data: bytes, param: str) -> bytes:
    """Refuse undecodable and oversized images before anything decodes their pixels."""
    try:
        media.check_image(data)
    except ValueError as error:
        raise BadInput(f"{param}: {error}", param) from None
    return data


def audio_waveform(data: str, audio_format: str, param: str, sample_rate: int, max_seconds: float) -> np.ndarray:
    """float32 mono samples at `sample_rate` from base64 WAV."""
    if audio_format != "wav":
        raise BadInput(f"{param}: unsupported audio format {audio_format!r}; send 'wav'", param)
    try:
        return media.prepare_audio(_b64(data, param), max_seconds=max_seconds, target_rate=sample_rate)
    except BadInput:
        raise
    except ValueError as error:
        raise BadInput(f"{param}: {error}", param) from None


def png_data_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
