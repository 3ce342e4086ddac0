"""Video from the outside world (data/media.py): GIF, MP4, WebM, arrays and lists of frames to a few
pictures sampled at a fixed rate, the same pictures whatever the container, and clips refused (too
long, too large, undecodable) before their pixels are decoded where the header tells."""

import io
import wave

import av
import numpy as np
import pytest
from PIL import Image

from data import media
from data.media import encode_gif, encode_video, prepare_video

BACKGROUND = 200  # light grey
COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (230, 180, 20)]


def _clip(count: int = 4, side: int = 32) -> np.ndarray:
    """uint8 [count, side, side, 3]: a square on light grey, moving clockwise between the quadrants
    and changing colour, so every frame differs from its neighbours in place and in colour."""
    frames = np.full((count, side, side, 3), BACKGROUND, np.uint8)
    half = side // 2
    for index in range(count):
        row, col = [(0, 0), (0, 1), (1, 1), (1, 0)][index % 4]
        frames[index, row * half + 2: row * half + half - 2, col * half + 2: col * half + half - 2] = COLOURS[index % 4]
    return frames


def _levels(count: int) -> np.ndarray:
    """uint8 [count, 32, 32, 3]: flat frames of distinct greys (frame i is 10 * i + 5), which every
    codec keeps within a few levels, so a sampled frame names its index."""
    return np.repeat((np.arange(count, dtype=np.uint8) * 10 + 5)[:, None, None, None], 32 * 32 * 3, axis=1).reshape(count, 32, 32, 3)


def _indices(frames: np.ndarray) -> list[int]:
    return [round((float(frame.mean()) - 5) / 10) for frame in frames]


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except av.codec.codec.UnknownCodecError:
        return False
    return True


def _encode(frames: np.ndarray, fps: float, container: str) -> bytes:
    if container == "gif":
        return encode_gif(frames, fps)
    if container == "webm" and not _has_encoder("libvpx-vp9"):
        pytest.skip("this FFmpeg build has no VP9 encoder")
    return encode_video(frames, fps, container)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


# Measured on this clip (PyAV 18.1, FFmpeg 8): MP4 (libx264, CRF 10, 4:4:4) mean absolute error 0.24
# a channel value (0.33 at worst in blue), PSNR 51 dB; WebM (VP9, CRF 10, 4:4:4) 0.27 (0.36), 50 dB;
# a build without libx264 writes MPEG-4 part 2 at 4:2:0: 2.2, 32.5 dB. The bounds cover all three.
MAX_CHANNEL_ERROR, MIN_PSNR = 4.0, 30.0

# ---------------------------------------------------------------------------------------------
# Round trips


def test_a_gif_decodes_to_its_frames_exactly():
    clip = _clip()
    out = prepare_video(encode_gif(clip, 2.0))
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, clip)  # under 256 colours: GIF is lossless


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_mp4_and_webm_decode_to_their_frames_within_the_codec_error(container):
    clip = _clip()
    out = prepare_video(_encode(clip, 2.0, container))
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
    error = np.abs(out.astype(np.float64) - clip).mean(axis=(0, 1, 2))
    assert (error < MAX_CHANNEL_ERROR).all(), f"{container}: mean absolute error per channel {error}"
    assert _psnr(out, clip) > MIN_PSNR, f"{container}: {_psnr(out, clip):.1f} dB"


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_gif_and_compressed_video_mean_the_same_frames(container):
    clip = _clip()
    from_gif = prepare_video(encode_gif(clip, 2.0))
    from_video = prepare_video(_encode(clip, 2.0, container))
    assert from_gif.shape == from_video.shape == (4, 32, 32, 3)
    assert (np.abs(from_gif.astype(np.float64) - from_video).mean(axis=(0, 1, 2)) < MAX_CHANNEL_ERROR).all()
    assert _psnr(from_gif, from_video) > MIN_PSNR


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_encode_video_writes_every_frame_at_its_time(container):
    data = _encode(_clip(), 2.0, container)
    with av.open(io.BytesIO(data)) as reader:
        times = [float(frame.pts * frame.time_base) for frame in reader.decode(video=0)]
    assert times == [0.0, 0.5, 1.0, 1.5]


# ---------------------------------------------------------------------------------------------
# Sampling in time


@pytest.mark.parametrize("container", ["gif", "mp4", "webm"])
def test_a_10_fps_clip_is_sampled_at_2_fps(container):
    data = _encode(_levels(20), 10.0, container)  # 2 s: frames at 0, 0.1, ..., 1.9 s
    assert _indices(prepare_video(data, fps=2.0)) == [0, 5, 10, 15]
    assert _indices(prepare_video(data, fps=2.0, max_frames=10)) == [0, 5, 10, 15]  # 2.0 s is past the end
    assert _indices(prepare_video(data, fps=4.0, max_frames=10)) == [0, 2, 5, 7, 10, 12, 15, 17]  # 0.25 s holds 0.2's


@pytest.mark.parametrize("container", ["gif", "mp4", "webm"])
def test_a_slow_clip_repeats_frames_for_as_long_as_they_last(container):
    data = _encode(_levels(2), 1.0, container)  # two frames of 1 s each
    assert _indices(prepare_video(data, fps=2.0)) == [0, 0, 1, 1]


@pytest.mark.parametrize("container", ["gif", "mp4"])
def test_a_clip_longer_than_max_frames_over_fps_is_cut_to_its_first_samples(container):
    data = _encode(_levels(12), 2.0, container)  # 6 s, 12 samples at fps=2
    assert _indices(prepare_video(data, fps=2.0)) == [0, 1, 2, 3]
    assert _indices(prepare_video(data, fps=2.0, max_frames=12)) == list(range(12))


def test_decoding_stops_once_the_samples_are_taken(monkeypatch):
    decoded = []
    original = media._decoded_frames

    def counting(*args):
        for item in original(*args):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(media, "_decoded_frames", counting)
    data = encode_video(_levels(25), 2.5)  # 10 s, 25 frames at 0.4 s
    assert _indices(prepare_video(data, fps=2.0)) == [0, 1, 2, 3]  # at 0, 0.5 (0.4's), 1.0 (0.8's), 1.5 (1.2's)
    assert len(decoded) <= 6, f"decoded {len(decoded)} of 25 frames for 4 samples"


def test_a_still_image_is_a_one_frame_video():
    still = _clip(1)[0]
    for encoded in (_png(still), encode_gif(still[None], 2.0)):
        out = prepare_video(encoded)
        assert out.shape == (1, 32, 32, 3)
        np.testing.assert_array_equal(out[0], still)


# ---------------------------------------------------------------------------------------------
# Arrays and frames already read


def _png(frame) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_array_and_a_list_of_frames_are_taken_as_frames_at_fps():
    clip = _clip()
    np.testing.assert_array_equal(prepare_video(clip), clip)
    np.testing.assert_array_equal(prepare_video(clip.astype(np.float32) / 255), clip)
    np.testing.assert_array_equal(prepare_video([_png(frame) for frame in clip]), clip)
    np.testing.assert_array_equal(prepare_video([Image.fromarray(frame) for frame in clip]), clip)
    np.testing.assert_array_equal(prepare_video(list(_clip(8)), max_frames=4), _clip(4))  # cut, not refused

    big = prepare_video(np.repeat(np.repeat(clip, 3, axis=1), 2, axis=2), size=16)  # 96 x 64, cropped and resized
    assert big.shape == (4, 16, 16, 3)

    with pytest.raises(ValueError, match=r"\[frames, H, W, 3\].*got shape \(32, 32, 3\)"):
        prepare_video(clip[0])
    with pytest.raises(ValueError, match="no frames"):
        prepare_video([])
    with pytest.raises(ValueError, match="got str"):
        prepare_video("clip.mp4")


def test_rgba_frames_are_composited_over_white():
    rgba = np.zeros((2, 32, 32, 4), np.uint8)
    rgba[..., 0], rgba[:, :16, :, 3] = 255, 255  # top half opaque red, bottom half transparent
    images = [Image.fromarray(frame) for frame in rgba]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=500, loop=0)
    for video in (rgba, buffer.getvalue()):
        out = prepare_video(video)
        assert out.shape == (2, 32, 32, 3)
        assert out[0, 0, 0].tolist() == [255, 0, 0] and out[0, -1, 0].tolist() == [255, 255, 255]


def test_the_rotation_the_container_asks_for_is_applied():
    frames = np.full((2, 32, 32, 3), BACKGROUND, np.uint8)
    frames[:, :8, :8] = COLOURS[0]  # a mark in the top-left corner as stored
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as output:
        stream = output.add_stream("libx264" if _has_encoder("libx264") else "mpeg4", rate=2)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.set_display_rotation(-90)  # shown turned 90 degrees clockwise, as a phone held upright records
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    out = prepare_video(buffer.getvalue())
    assert np.abs(out[0, 2, -3].astype(int) - COLOURS[0]).max() < 40  # the mark is now top-right
    assert np.abs(out[0, 2, 2].astype(int) - BACKGROUND).max() < 40


# ---------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("container", ["gif", "mp4", "webm"])
def test_a_clip_over_max_seconds_is_refused_from_its_header(container):
    data = _encode(_levels(30), 2.0, container)  # 15 s
    with pytest.raises(ValueError, match=r"too long: 15\.00 s .*max_seconds=10"):
        prepare_video(data, max_seconds=10)
    assert prepare_video(data, max_seconds=20).shape == (4, 32, 32, 3)


def test_a_clip_over_max_seconds_without_a_duration_in_its_header_is_refused_while_decoding():
    buffer = io.BytesIO()  # raw H.264: no container, so no duration and no timestamps to read ahead
    with av.open(buffer, mode="w", format="h264") as output:
        stream = output.add_stream("libx264" if _has_encoder("libx264") else "mpeg4", rate=2)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index, pixels in enumerate(_levels(30)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    with pytest.raises(ValueError, match=r"too long: a frame starts at 10\.\d\d s > max_seconds=10"):
        prepare_video(buffer.getvalue(), max_seconds=10, max_frames=30)


def test_frames_over_max_seconds_are_refused():
    with pytest.raises(ValueError, match=r"30 frames at 2\.0 fps is 15\.00 s > max_seconds=10"):
        prepare_video(_levels(30), max_seconds=10)


def test_undecodable_bytes_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"could not decode video bytes \(25 bytes, starting b'not a video '\)"):
        prepare_video(b"not a video at all, sorry")
    with pytest.raises(ValueError, match=r"could not decode video bytes \(0 bytes"):
        prepare_video(b"")
    data = encode_video(_clip(), 2.0)
    with pytest.raises(ValueError, match=rf"could not decode video bytes \({len(data) // 2} bytes"):
        prepare_video(data[: len(data) // 2])  # an MP4 cut short loses its index (written last)

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1), writer.setsampwidth(2), writer.setframerate(16000)
        writer.writeframes(b"\0\0" * 1600)
    with pytest.raises(ValueError, match=r"no video stream \(streams: \['audio'\]\)"):
        prepare_video(buffer.getvalue())


def test_frames_over_max_pixels_are_refused():
    for video in (encode_video(_clip(), 2.0), encode_gif(_clip(), 2.0), _clip(), [_png(frame) for frame in _clip()]):
        with pytest.raises(ValueError, match=r"32x32 pixels is over the 1000 pixel limit"):
            prepare_video(video, max_pixels=1000)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="fps must be"):
        prepare_video(_clip(), fps=0)
    with pytest.raises(ValueError, match="max_frames must be"):
        prepare_video(_clip(), max_frames=0)
    with pytest.raises(ValueError, match=r"fps <= 50.*fps=100"):
        encode_gif(_clip(), 100.0)
    with pytest.raises(ValueError, match="'mp4' or 'webm', got 'avi'"):
        encode_video(_clip(), 2.0, "avi")
    with pytest.raises(ValueError, match=r"uint8 \[frames >= 1, H, W, 3\]"):
        encode_video(_clip().astype(np.float32), 2.0)


def test_a_clip_with_more_frames_than_max_decoded_before_its_samples_is_refused():
    """Frames squeezed into a short time cost decoding however few samples they give."""
    frames = (np.arange(30, dtype=np.uint8)[:, None, None, None] * 8 + np.zeros((1, 32, 32, 3), np.uint8))
    gif = encode_gif(frames, fps=50.0)  # 30 frames in 0.6 s
    assert prepare_video(gif, fps=2.0, max_frames=4, max_decoded=30).shape[0] == 2
    with pytest.raises(ValueError, match="more than 10 frames"):
        prepare_video(gif, fps=2.0, max_frames=4, max_decoded=10)
