"""Decoding media that comes from outside: images (PNG, JPEG, arrays) to RGB pixels, audio (WAV,
arrays) to mono float samples at the tokenizer's rate. The data pipeline, the tokenizers and the
server all read inputs through here, so a picture or a clip means the same thing to each.

Every failure is a ValueError naming what is wrong and the numbers involved.
"""

from __future__ import annotations

import io
import math
import wave

import numpy as np
from PIL import Image
from scipy.signal import resample_poly

MAX_IMAGE_PIXELS = 4096 * 4096


def prepare_image(image, size: int = 32) -> np.ndarray:
    """Anything image-like -> uint8 [size, size, 3] RGB.

    Accepts a numpy array (H x W grey, H x W x 1, RGB or RGBA; uint8, or float in [0, 1]),
    a PIL image in any mode (16-bit grey included), or encoded bytes (PNG, JPEG, anything PIL
    reads); bytes PIL cannot decode raise ValueError. Alpha is composited over white. One rule
    for every other size and shape: the largest centred square is cut out (a non-square picture
    loses its edges, never its proportions), then resized to `size` x `size`, bicubic.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        try:
            pil = Image.open(io.BytesIO(data))
            pil.load()
        except Exception as error:  # PIL raises many types for bad data; callers get one
            reason = (
                "not in any image format PIL recognises (PNG, JPEG, ...)"
                if isinstance(error, Image.UnidentifiedImageError)
                else f"corrupt or truncated image data ({type(error).__name__}: {error})"
            )
            raise ValueError(f"could not decode image bytes ({len(data)} bytes, starting {data[:8]!r}): {reason}") from error
    elif isinstance(image, Image.Image):
        pil = image
    else:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ValueError(f"image array must be H x W, H x W x 1, H x W x 3 or H x W x 4; got shape {array.shape}")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"image array must be uint8 or float in [0, 1]; got dtype {array.dtype}")
            array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
        pil = Image.fromarray(array)
    if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
        rgba = pil.convert("RGBA")
        pil = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil.alpha_composite(rgba)
    if pil.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey (PNG): convert("RGB") would clip it
        pil = Image.fromarray(np.round(np.asarray(pil, np.float64) / 257).clip(0, 255).astype(np.uint8))
    pil = pil.convert("RGB")
    width, height = pil.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        pil = pil.crop((left, top, left + side, top + side))
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(pil, np.uint8)


def check_image(data: bytes) -> None:
    """Refuse undecodable and oversized images before anything decodes their pixels (ValueError):
    a small PNG can inflate to gigabytes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.verify()
    except Exception as error:  # PIL raises many types for bad data
        raise ValueError(f"not a decodable image ({type(error).__name__}: {error})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{width}x{height} pixels is over the {MAX_IMAGE_PIXELS} pixel limit")


_INT_SCALE = {np.dtype(np.int8): 128.0, np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2.0**31}


def _decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """WAV bytes (integer PCM, 8/16/24/32-bit) -> ([N, C] samples, sample rate)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            raw = reader.readframes(reader.getnframes())
    except Exception as error:  # wave raises several types for bad data (wave.Error, EOFError, struct.error)
        raise ValueError(
            f"could not decode audio bytes ({len(data)} bytes, starting {data[:12]!r}): expected a WAV file "
            f"with integer PCM samples ({type(error).__name__}: {error})"
        ) from error
    if width == 1:
        samples = np.frombuffer(raw, np.uint8)
    elif width == 3:  # 24-bit little-endian: widen to int32 with the sign carried in the top byte
        triples = np.frombuffer(raw[: len(raw) // 3 * 3], np.uint8).reshape(-1, 3).astype(np.int32)
        samples = ((triples[:, 0] << 8) | (triples[:, 1] << 16) | (triples[:, 2] << 24)).astype(np.int32)
    elif width in (2, 4):
        samples = np.frombuffer(raw[: len(raw) // width * width], f"<i{width}")
    else:
        raise ValueError(f"WAV sample width of {width} bytes is not supported (1, 2, 3 or 4)")
    return samples[: len(samples) // channels * channels].reshape(-1, channels), rate


def _resample(mono_n: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy, already a dependency of jax) by the reduced ratio target/rate."""
    if rate == target_rate:
        return mono_n
    g = math.gcd(int(rate), int(target_rate))
    return resample_poly(mono_n.astype(np.float64), target_rate // g, rate // g)


MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000  # what any recording uses; resampling's cost grows with the rate


def prepare_audio(audio, sample_rate: int | None = None, max_seconds: float = 30.0, target_rate: int = 16000,
                  max_rate: int = MAX_SAMPLE_RATE) -> np.ndarray:
    """Anything audio-like -> float32 mono [N] at `target_rate`, ready for `AudioTokenizer.encode`.

    `audio`: a numpy array [N] or [N, channels] of float (nominally [-1, 1]), int8/16/32 or
    uint8 (offset binary) samples, with its `sample_rate`; or WAV bytes (integer PCM; the rate is
    read from the header), at 1 kHz to `max_rate`. Channels are averaged; other rates are resampled
    polyphase. Raises ValueError, naming the problem and the numbers, on empty, over-long
    (> max_seconds), non-finite or undecodable input, or a rate out of range (a header can claim
    any rate, and resampling from an odd one needs a filter as long as the rate).
    """
    if isinstance(audio, (bytes, bytearray, memoryview)):
        samples, rate = _decode_wav(bytes(audio))
        if sample_rate is not None and sample_rate != rate:
            raise ValueError(f"sample_rate={sample_rate} was given but the WAV header says {rate} Hz")
    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required for an array of samples (only WAV bytes carry their own)")
        samples, rate = np.asarray(audio), sample_rate
    if not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"sample rate must be a positive integer number of Hz, got {rate!r}")
    if not MIN_SAMPLE_RATE <= rate <= max_rate:
        raise ValueError(f"sample rate {rate} Hz is outside the accepted {MIN_SAMPLE_RATE}-{max_rate} Hz")
    if samples.ndim == 2 and samples.shape[1] > 16:
        raise ValueError(
            f"audio array must be [samples] or [samples, channels] (<= 16 channels); got shape {samples.shape} "
            f"(transpose a [channels, samples] array)"
        )
    if samples.ndim not in (1, 2):
        raise ValueError(f"audio array must be [samples] or [samples, channels]; got shape {samples.shape}")
    num_samples = samples.shape[0]
    if num_samples == 0 or samples.size == 0:
        raise ValueError(f"audio is empty: shape {samples.shape} holds no samples")
    seconds = num_samples / rate
    if seconds > max_seconds:
        raise ValueError(f"audio is too long: {seconds:.2f} s ({num_samples} samples at {rate} Hz) > max_seconds={max_seconds}")
    if samples.dtype == np.uint8:
        samples = (samples.astype(np.float32) - 128.0) / 128.0
    elif samples.dtype in _INT_SCALE:
        samples = samples.astype(np.float32) / _INT_SCALE[samples.dtype]
    elif np.issubdtype(samples.dtype, np.floating):
        samples = samples.astype(np.float32)
        if not np.all(np.isfinite(samples)):
            raise ValueError(f"audio holds {int(np.sum(~np.isfinite(samples)))} non-finite samples (NaN or inf)")
    else:
        raise ValueError(f"audio samples must be float, int8/16/32 or uint8; got dtype {samples.dtype}")
    mono_n = samples.mean(axis=1) if samples.ndim == 2 else samples
    return _resample(mono_n, int(rate), target_rate).astype(np.float32)
