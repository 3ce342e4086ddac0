"""Decoding media that comes from outside: images (PNG, JPEG, arrays) to RGB pixels, video (GIF,
MP4, WebM, arrays, lists of frames) to a few such pictures sampled in time, audio (WAV, arrays) to
mono float samples at the tokenizer's rate. The data pipeline, the tokenizers and the server all
read inputs through here, so a picture or a clip means the same thing to each.

Every failure is a ValueError naming what is wrong and the numbers involved.
"""

from __future__ import annotations

import io
import itertools
import math
import wave
from collections.abc import Sequence
from fractions import Fraction

import av
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

# ---------------------------------------------------------------------------------------------
# Video

# Containers round timestamps (WebM to 1 ms, GIF to 10 ms): a frame starting up to half a GIF tick
# after a sample's time counts as on time, so a clip written at `fps` samples back frame for frame.
_TIME_SLACK = 0.005


def _check_video_args(size: int, fps: float, max_frames: int, max_seconds: float) -> None:
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number of samples per second, got {fps!r}")
    if not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
    if not (isinstance(max_seconds, (int, float, np.integer, np.floating)) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")


def _sample_in_time(timed, fps: float, max_frames: int, max_seconds: float) -> list:
    """(start seconds, duration seconds or None, frame) in presentation order -> the frames at
    t_k = k / fps (the rule in `prepare_video`). Pulls from `timed` only until the samples are known,
    so a long clip is never decoded past its last sample."""
    step = 1.0 / fps
    samples: list = []
    origin = last = None  # last: (start from the first frame, duration or None, frame)
    for start, duration, frame in timed:
        if origin is None:
            origin = start
        t = start - origin
        if last is not None and t < last[0]:
            continue  # a timestamp going backwards (broken file): time only moves forward here
        if t > max_seconds + _TIME_SLACK:
            raise ValueError(f"video is too long: a frame starts at {t:.2f} s > max_seconds={max_seconds}")
        if last is not None:
            while len(samples) < max_frames and len(samples) * step < t - _TIME_SLACK:
                samples.append(last[2])  # every sample before this frame starts shows the one before
            if len(samples) == max_frames:
                return samples
        last = (t, duration, frame)
    if last is None:
        raise ValueError("video holds no frames")
    end = last[0] + (last[1] if last[1] else step)  # the last frame lasts its duration, else one sample
    if end > max_seconds + _TIME_SLACK:
        raise ValueError(f"video is too long: {end:.2f} s > max_seconds={max_seconds}")
    while len(samples) < max_frames and len(samples) * step < end - _TIME_SLACK:
        samples.append(last[2])
    return samples or [last[2]]


def _video_error(data: bytes, reason: str) -> ValueError:
    return ValueError(f"could not decode video bytes ({len(data)} bytes, starting {data[:12]!r}): {reason}")


def _ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without PyAV's file name."""
    return f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"


def _decoded_frames(container, stream, data: bytes, max_pixels: int, max_decoded: int):
    """Decoded video frames, one at a time, as (start s, duration s or None, frame); refuses a frame
    over `max_pixels` (the size can change mid-stream) or a frame past the `max_decoded`-th (many
    frames squeezed into a short time), and wraps FFmpeg's errors in ours."""
    next_start = 0.0
    frames = container.decode(stream)
    for decoded in itertools.count(1):
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.FFmpegError as error:
            raise _video_error(data, f"corrupt video data ({_ffmpeg_reason(error)})") from error
        if decoded > max_decoded:
            raise ValueError(f"video holds more than {max_decoded} frames before its samples are taken")
        if frame.width * frame.height > max_pixels:
            raise ValueError(f"video frame of {frame.width}x{frame.height} pixels is over the {max_pixels} pixel limit")
        time_base = frame.time_base or stream.time_base
        start = float(frame.pts * time_base) if frame.pts is not None and time_base else next_start
        ticks = getattr(frame, "duration", 0)
        duration = float(ticks * time_base) if ticks and time_base else None
        next_start = start + (duration or 0.0)
        yield start, duration, frame


def _frame_pixels(frame) -> np.ndarray:
    """A decoded frame -> uint8 RGB (RGBA where the frame carries alpha, left to `prepare_image` to
    composite), turned upright by the rotation the container asks for (phones record sideways)."""
    alpha = any(component.is_alpha for component in frame.format.components)
    pixels = frame.to_ndarray(format="rgba" if alpha else "rgb24")
    rotation = getattr(frame, "rotation", 0) or 0  # degrees counterclockwise, as np.rot90 counts
    if rotation % 90 == 0 and rotation % 360:
        pixels = np.ascontiguousarray(np.rot90(pixels, int(rotation) // 90))
    return pixels


def _sample_encoded_video(data: bytes, fps: float, max_frames: int, max_seconds: float, max_pixels: int,
                          max_decoded: int, container_format: str | None) -> list:
    """Encoded bytes -> the sampled frames as arrays, refusing what the header already shows is too
    long or too large before any pixel is decoded."""
    try:
        container = av.open(io.BytesIO(data), mode="r", format=container_format)
    except Exception as error:  # PyAV raises many types for bad data; callers get one
        raise _video_error(data, f"not in any format FFmpeg reads, or cut short ({_ffmpeg_reason(error)})") from error
    with container:
        if not container.streams.video:
            raise _video_error(data, f"no video stream (streams: {[s.type for s in container.streams] or 'none'})")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise _video_error(data, "this FFmpeg build has no decoder for its video codec")
        if stream.duration is not None and stream.time_base:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            seconds = None
        if seconds is not None and seconds > max_seconds + _TIME_SLACK:
            raise ValueError(f"video is too long: {seconds:.2f} s (from its header) > max_seconds={max_seconds}")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise ValueError(f"video frame of {width}x{height} pixels is over the {max_pixels} pixel limit")
        stream.codec_context.options = {"max_pixels": str(max_pixels)}  # FFmpeg's own check, before allocating
        frames = _sample_in_time(_decoded_frames(container, stream, data, max_pixels, max_decoded), fps, max_frames,
                                 max_seconds)
        pixels: dict[int, np.ndarray] = {}  # a frame sampled twice is converted once
        for frame in frames:
            if id(frame) not in pixels:
                pixels[id(frame)] = _frame_pixels(frame)
        return [pixels[id(frame)] for frame in frames]


def _image_size(image) -> tuple[int, int]:
    """(width, height) of anything `prepare_image` accepts, from the header where it is encoded."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(image))) as pil:
                return pil.size
        except Image.DecompressionBombError as error:  # the header alone is over PIL's own limit
            raise ValueError(f"video frame refused: {error}") from error
        except (OSError, ValueError):  # undecodable: prepare_image says why
            return 0, 0
    if isinstance(image, Image.Image):
        return image.size
    shape = np.shape(image)
    return (shape[1], shape[0]) if len(shape) >= 2 else (0, 0)


def prepare_video(video, size: int = 32, fps: float = 2.0, max_frames: int = 4, max_seconds: float = 10.0,
                  max_pixels: int = MAX_IMAGE_PIXELS, max_decoded: int = 10_000,
                  container_format: str | None = None) -> np.ndarray:
    """Anything video-like -> uint8 [F, size, size, 3] RGB, 1 <= F <= max_frames, each frame
    prepared as `prepare_image` prepares a picture (centred square, bicubic, alpha over white).

    `video`: encoded bytes of anything FFmpeg reads (GIF animated or still, MP4, WebM, ...; decoded
    by PyAV, rotation metadata applied), a numpy array [F, H, W, 3 or 4] (uint8, or float in
    [0, 1]), or a sequence of frames each `prepare_image` accepts (a folder of frames already read),
    taken as frames `1 / fps` apart.

    Sampling, one rule for all: sample k is at t_k = k / fps seconds after the first frame and shows
    the last frame starting at or before t_k (a frame lasts until the next one starts; one starting
    within 5 ms after t_k counts as at it, as containers round timestamps); samples run
    while t_k is before the clip's end (the last frame's start plus its duration, or plus 1 / fps
    where the file does not say), at most `max_frames` of them. So a clip written at `fps` comes back
    frame for frame; a faster one is thinned (10 fps at fps=2: the frames at 0, 0.5, 1.0, ... s), and
    one longer than max_frames / fps is cut to its first `max_frames` samples, not refused: decoding
    stops there, so a long file is never decoded whole.

    Raises ValueError, naming the problem and the numbers, on a clip over `max_seconds` (from the
    header before decoding where it tells, else once a frame starts past it), a frame over
    `max_pixels`, more than `max_decoded` frames decoded before the samples are taken, undecodable
    bytes, or no frames at all. `container_format` (FFmpeg's demuxer name: "gif", "mp4", "webm")
    reads the bytes as that container only, rather than as whatever FFmpeg's probe guesses: what a
    server taking clips from anyone wants.
    """
    _check_video_args(size, fps, max_frames, max_seconds)
    if isinstance(video, (bytes, bytearray, memoryview)):
        frames = _sample_encoded_video(bytes(video), float(fps), int(max_frames), max_seconds, max_pixels, max_decoded,
                                       container_format)
    else:
        if isinstance(video, np.ndarray):
            if video.ndim != 4 or video.shape[-1] not in (3, 4):
                raise ValueError(f"video array must be [frames, H, W, 3] or [frames, H, W, 4]; got shape {video.shape}")
        elif not isinstance(video, Sequence) or isinstance(video, str):
            raise ValueError(  # noqa: TRY004 -- every failure here is a ValueError, as the module says
                f"video must be encoded bytes, a [frames, H, W, 3] array or a sequence of frames; got {type(video).__name__}"
            )
        count = len(video)
        if count == 0:
            raise ValueError("video holds no frames")
        if count / fps > max_seconds + _TIME_SLACK:
            raise ValueError(f"video is too long: {count} frames at {fps} fps is {count / fps:.2f} s > max_seconds={max_seconds}")
        timed = ((index / fps, 1.0 / fps, video[index]) for index in range(count))
        frames = _sample_in_time(timed, float(fps), int(max_frames), max_seconds)
        for frame in frames:
            width, height = _image_size(frame)
            if width * height > max_pixels:
                raise ValueError(f"video frame of {width}x{height} pixels is over the {max_pixels} pixel limit")
    return np.stack([prepare_image(frame, size) for frame in frames])


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"frames must be uint8 [frames >= 1, H, W, 3]; got {frames.dtype} {frames.shape}")
    return frames


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """uint8 [F, H, W, 3] -> an animated GIF (Pillow; exact up to 256 colours a frame), for tests
    and clients that send clips. GIF counts time in 1/100 s, so frame i starts at
    floor(100 i / fps) hundredths: never after i / fps, and `prepare_video` at `fps` gives every
    frame back. A delay under 2/100 s is shown as 1/10 s by FFmpeg and browsers: fps over 50 is
    refused."""
    frames = _check_frames(frames)
    if not (math.isfinite(fps) and 0 < fps <= 50):
        raise ValueError(f"a GIF holds 0 < fps <= 50 (its clock ticks in 1/100 s, 2 ticks at least); got fps={fps}")
    starts = [math.floor(100 * index / fps + 1e-9) for index in range(len(frames) + 1)]
    durations_ms = [10 * (starts[index + 1] - starts[index]) for index in range(len(frames))]
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations_ms, loop=0)
    return buffer.getvalue()


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except av.codec.codec.UnknownCodecError:  # a build without it
        return False
    return True


def encode_video(frames: np.ndarray, fps: float, container: str = "mp4") -> bytes:
    """uint8 [F, H, W, 3] -> an MP4 (H.264, or MPEG-4 part 2 where this FFmpeg lacks libx264) or a
    WebM (VP9), frame i at i / fps, for tests and clients that send clips. Near-lossless: CRF 10 and
    full-resolution colour (4:4:4) where the codec has it, so a small clip's colours survive. (H.264
    4:4:4 plays in FFmpeg and Chrome, not in Safari; re-encode to 4:2:0 for those.)"""
    frames = _check_frames(frames)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    if container == "mp4":
        if _has_encoder("libx264"):
            codec, pix_fmt, options = "libx264", "yuv444p", {"crf": "10"}
        else:
            codec, pix_fmt, options = "mpeg4", "yuv420p", {"qscale": "1"}
    elif container == "webm":
        codec, pix_fmt, options = "libvpx-vp9", "yuv444p", {"crf": "10", "b": "0", "deadline": "good", "cpu-used": "4"}
    else:
        raise ValueError(f"container must be 'mp4' or 'webm', got {container!r}")
    height, width = frames.shape[1:3]
    if pix_fmt == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(f"{codec} at {pix_fmt} needs an even width and height; got {width}x{height}")
    buffer = io.BytesIO()
    try:
        with av.open(buffer, mode="w", format=container) as output:
            stream = output.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.options = options
            for index, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
                frame.pts = index
                output.mux(stream.encode(frame))
            output.mux(stream.encode(None))
    except av.FFmpegError as error:
        raise ValueError(f"could not encode {len(frames)} frames of {width}x{height} as {container} ({codec}): {error}") from error
    return buffer.getvalue()


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
