"""Input media from the outside world (data/media.py): any image to RGB pixels of the tokenizer's size,
any audio to mono float samples at its rate, and images refused before their pixels are decoded."""

import io
import wave

import numpy as np
import pytest
from PIL import Image

from data.media import MAX_IMAGE_PIXELS, check_image, prepare_audio, prepare_image

# ---------------------------------------------------------------------------------------------
# Images


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_prepare_image_turns_any_image_into_rgb_uint8_of_the_configured_size():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_image(rgb, 32), rgb)  # already right: untouched

    grey = prepare_image(rng.integers(0, 256, (32, 32), dtype=np.uint8), 32)
    assert grey.shape == (32, 32, 3) and (grey[..., 0] == grey[..., 2]).all()

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[:16, :, 3] = 255, 255  # top half opaque red, bottom half transparent
    out = prepare_image(rgba, 32)
    assert out[0, 0].tolist() == [255, 0, 0] and out[-1, 0].tolist() == [255, 255, 255]  # over white

    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert prepare_image(palette, 32).shape == (32, 32, 3)

    big = prepare_image(rng.integers(0, 256, (100, 60, 3), dtype=np.uint8), 32)
    assert big.shape == (32, 32, 3) and big.dtype == np.uint8

    np.testing.assert_array_equal(prepare_image(_png(Image.fromarray(rgb)), 32), rgb)  # PNG is lossless
    grey16 = prepare_image(_png(Image.fromarray(np.full((32, 32), 65535, np.uint16))), 32)
    assert (grey16 == 255).all()  # 16-bit grey is scaled, not clipped
    jpeg = io.BytesIO()
    Image.fromarray(rgb).resize((64, 64)).save(jpeg, format="JPEG")
    assert prepare_image(jpeg.getvalue(), 32).shape == (32, 32, 3)


def test_prepare_image_rejects_garbage_bytes_with_a_clear_error():
    with pytest.raises(ValueError, match="could not decode image bytes .*not in any image format"):
        prepare_image(b"definitely not an image", 32)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = _png(Image.fromarray(noise))
    with pytest.raises(ValueError, match="could not decode image bytes .*truncated"):
        prepare_image(png[: len(png) // 2], 32)
    with pytest.raises(ValueError, match="shape"):
        prepare_image(np.zeros((4, 4, 2), np.uint8), 32)


def test_check_image_passes_a_decodable_image_of_at_most_the_pixel_limit():
    side = int(MAX_IMAGE_PIXELS**0.5)
    assert side * side == MAX_IMAGE_PIXELS
    assert check_image(_png(Image.new("1", (side, side)))) is None  # exactly the limit: allowed
    assert check_image(_png(Image.new("RGB", (32, 32), (200, 30, 30)))) is None


def test_check_image_refuses_an_oversized_image_naming_its_size_and_the_limit():
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    bomb = _png(Image.new("1", (side, side)))  # a few kilobytes that would decode to 16 M pixels
    assert len(bomb) < 10_000
    with pytest.raises(ValueError, match=rf"{side}x{side} pixels is over the {MAX_IMAGE_PIXELS} pixel limit"):
        check_image(bomb)


def test_check_image_refuses_undecodable_bytes_naming_the_problem():
    with pytest.raises(ValueError, match="not a decodable image .*UnidentifiedImageError"):
        check_image(b"definitely not an image")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = _png(Image.fromarray(noise))
    with pytest.raises(ValueError, match="not a decodable image"):
        check_image(png[: len(png) // 2])


# ---------------------------------------------------------------------------------------------
# Audio


def _tone(hz: float, rate: int, seconds: float = 0.5) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def _peak_hz(audio: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        writer.setsampwidth(samples.dtype.itemsize)
        writer.setframerate(rate)
        writer.writeframes(samples.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_resampling_keeps_a_tone_on_its_frequency(rate):
    audio = prepare_audio(_tone(1000.0, rate), rate)
    assert audio.dtype == np.float32 and abs(len(audio) - 8000) <= 1
    assert abs(_peak_hz(audio) - 1000.0) <= 2.0


def test_stereo_int16_and_wav_bytes_become_float_mono():
    left, right = _tone(440.0, 16000), np.zeros(8000, np.float32)
    stereo_int16 = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)
    from_array = prepare_audio(stereo_int16, 16000)
    np.testing.assert_allclose(from_array, left / 2, atol=1e-4)  # channels averaged, scaled to [-1, 1]
    from_wav = prepare_audio(_wav_bytes(stereo_int16, 16000))
    np.testing.assert_array_equal(from_wav, from_array)
    from_wav_48k = prepare_audio(_wav_bytes(np.round(_tone(440.0, 48000) * 32767).astype(np.int16), 48000))
    assert len(from_wav_48k) == 8000 and abs(_peak_hz(from_wav_48k) - 440.0) <= 2.0
    from_uint8 = prepare_audio(np.round(left * 127 + 128).astype(np.uint8), 16000)
    np.testing.assert_allclose(from_uint8, left, atol=1e-2)


@pytest.mark.parametrize(
    "audio, rate, message",
    [
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.zeros((0, 2), np.int16), 16000, "empty"),
        (np.zeros(16000 * 31, np.float32), 16000, r"too long: 31\.00 s .* > max_seconds=30"),
        (b"definitely not a wav file", None, "could not decode audio bytes"),
        (np.zeros((2, 16000), np.float32), 16000, r"transpose"),
        (np.full(100, np.nan, np.float32), 16000, "non-finite"),
        (np.zeros(100, np.float32), None, "sample_rate is required"),
    ],
)
def test_bad_audio_raises_a_clear_error(audio, rate, message):
    with pytest.raises(ValueError, match=message):
        prepare_audio(audio, rate)
