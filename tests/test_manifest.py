"""A user's own data: a manifest of every record kind prepares to ArrayRecord, reads back through the
pipeline and packs; bad lines are named or skipped and counted; a mixture with the world draws by weight."""

import base64
import dataclasses
import json
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from configs import get_config
from configs.base import DataConfig
from data.manifest import AUDIO_RATE, BadRecord, Record, check_line, split_of
from data.encode import encoded_folder
from data.mixture import encode_sources, open_mixture, open_prepared
from data.pipeline import PipelineStats, held_out_batches, packed_batches
from data.prepare import prepare
from data.media import encode_gif, encode_video
from data.segments import Audio, Image, Symbol, Text, Video
from data.world_builder import build_world
from training.evaluate import source_tasks


def write_png(path: Path, width: int, height: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(path)


def write_wav(path: Path, seconds: float, rate: int = 16_000, channels: int = 1) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 12_000).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(samples[:, None], channels, axis=1).tobytes())


def wav_base64(seconds: float) -> str:
    with tempfile.TemporaryDirectory() as folder:
        write_wav(Path(folder) / "a.wav", seconds)
        return base64.b64encode((Path(folder) / "a.wav").read_bytes()).decode()


def every_kind(folder: Path, copies: int = 1) -> Path:
    """A manifest with every kind of record (and media of odd sizes, rates and channel counts)."""
    (folder / "media").mkdir(parents=True, exist_ok=True)
    write_png(folder / "media" / "wide.png", 48, 24, 0)
    write_png(folder / "media" / "square.png", 32, 32, 1)
    write_wav(folder / "media" / "tone.wav", 0.5)
    write_wav(folder / "media" / "stereo8k.wav", 0.3, rate=8000, channels=2)
    lines = []
    for i in range(copies):
        lines += [
            {"image": "media/wide.png", "caption": f"a wide picture {i}"},
            {"image": "media/square.png", "caption": f"a square picture {i}", "split": "validation"},
            {"audio": "media/tone.wav", "transcript": f"a tone {i}"},
            {"audio": "media/stereo8k.wav", "transcript": f"a stereo tone {i}", "split": "validation"},
            {"text": f"def f{i}(x):\n    return x + {i}\n"},
            {"parts": [{"text": f"Here is picture {i}:"}, {"image": "media/square.png"}, {"audio": "media/tone.wav"}]},
            {"messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": "media/wide.png"}},
                                             {"type": "input_audio", "input_audio": {"data": wav_base64(0.2),
                                                                                     "format": "wav"}}]},
                {"role": "assistant", "content": f"a picture and a tone {i}"}]},
        ]
    manifest = folder / "data.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def manifest_config(*sources: str):
    cfg = get_config("tiny")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=sources, seq_len=256,
                                                            global_batch_size=2, packing_bins=2, prefetch=0))


def test_every_kind_of_line_prepares_and_reads_back_as_its_segments(tmp_path):
    report = prepare(every_kind(tmp_path), tmp_path / "prepared", workers=1, log=lambda m: None)
    assert report["records"] == {"train": 5, "validation": 2} and report["bad_lines"] == 0
    assert report["kinds"]["train"] == {"caption": 1, "audio": 1, "text": 1, "document": 1, "conversation": 1}
    cfg = manifest_config(f"manifest:{tmp_path / 'prepared'}")
    train = open_mixture(cfg, tmp_path / "run", "train")
    (stream,) = train.sources
    read = {kind: segments for kind, segments in (train.readers[stream](train.sources[stream][i]) for i in range(5))}
    image, caption = read["caption"]
    assert image.pixels.shape == (32, 32, 3) and caption.text == "a wide picture 0"  # 48x24 -> centred square -> 32
    clip, transcript = read["audio"]
    assert isinstance(clip, Audio) and clip.waveform.shape == (AUDIO_RATE // 2,) and transcript.text == "a tone 0"
    assert [type(s) for s in read["document"]] == [Text, Image, Audio]
    conversation = read["conversation"]
    assert [s.text for s in conversation if isinstance(s, Text) and not s.loss] == [
        "system", "Answer briefly.", "user", "What is this?", "model"]  # the conversation template's turns
    assert [(type(s), s.loss) for s in conversation[-2:]] == [(Text, True), (Symbol, True)]  # the model's turn trains
    held_out = open_mixture(cfg, tmp_path / "run", "validation")
    stereo = [segments for kind, segments in map(held_out.readers[stream], held_out.sources[stream]) if kind == "audio"]
    assert stereo[0][0].waveform.shape == (int(0.3 * AUDIO_RATE),)  # 8 kHz stereo -> 16 kHz mono


def test_prepared_records_flow_through_the_pipeline_and_pack(tmp_path, vocab):
    prepare(every_kind(tmp_path), tmp_path / "prepared", workers=1, log=lambda m: None)
    cfg = manifest_config(f"manifest:{tmp_path / 'prepared'}")
    train = open_mixture(cfg, tmp_path / "run", "train")
    stats = PipelineStats()
    batches = iter(packed_batches(train.sources, vocab, cfg.data, 0, 1, stats, train.weights, train.readers))
    batch = next(batches)
    assert batch["inputs"].shape == (2, 256) and (batch["segment_ids"] > 1).any()  # several records per row
    assert batch["loss_mask"].sum() > 0
    for _ in range(4):
        next(batches)
    assert {"transcription", "text", "document", "conversation"} <= set(stats.tasks)
    assert {"captioning", "drawing"} & set(stats.tasks)
    rows, text_bytes = held_out_batches(train.sources["prepared"], train.readers["prepared"], vocab, cfg.data, 5)
    assert rows and all(b["inputs"].shape == (2, 256) for b in rows) and text_bytes > 0


def clip_frames(count: int = 6) -> np.ndarray:
    """A square that moves right, a frame at a time, on grey."""
    frames = np.full((count, 32, 32, 3), 200, np.uint8)
    for i in range(count):
        frames[i, 10:20, 4 * i : 4 * i + 10] = (220, 40, 40)
    return frames


def test_video_lines_prepare_sample_at_the_configured_rate_and_encode_to_a_frames_codes(tmp_path, vocab):
    """A video line (GIF), a frames folder in a document and an MP4 data URL in a conversation
    read back as Video segments of `tokenizers.video.max_frames` frames at its fps; the encode pass
    stores each frame's codes, and the pipeline makes the same rows from them."""
    frames = clip_frames()
    (tmp_path / "media" / "frames").mkdir(parents=True)
    (tmp_path / "media" / "clip.gif").write_bytes(encode_gif(frames, fps=2.0))
    for i, frame in enumerate(frames):
        PILImage.fromarray(frame).save(tmp_path / "media" / "frames" / f"{i:03d}.png")
    mp4 = base64.b64encode(encode_video(frames, fps=2.0)).decode()
    lines = [{"video": "media/clip.gif", "caption": "a red square moves right", "split": "train"},
             {"parts": [{"text": "Frames:"}, {"video": "media/frames"}, {"text": "the end"}], "split": "train"},
             {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{mp4}"}},
                                                        {"type": "text", "text": "What happens?"}]},
                           {"role": "assistant", "content": "it moves right"}], "split": "train"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = prepare(tmp_path / "data.jsonl", tmp_path / "prepared", workers=1, log=lambda m: None)
    assert report["kinds"]["train"] == {"video": 1, "document": 1, "conversation": 1}
    cfg = manifest_config(f"manifest:{tmp_path / 'prepared'}")
    cfg = dataclasses.replace(cfg, tokenizers=dataclasses.replace(
        cfg.tokenizers, video=dataclasses.replace(cfg.tokenizers.video, fps=1.0, max_frames=3)))
    raw = open_mixture(cfg, tmp_path / "run", "train")
    read = dict(raw.readers["prepared"](raw.sources["prepared"][i]) for i in range(3))
    videos = [read["video"][0], read["document"][1], next(s for s in read["conversation"] if isinstance(s, Video))]
    # 3 s at 2 fps, sampled at 1 fps: frames 0, 2 and 4; a folder's files are frames at that 1 fps: 0, 1, 2
    for video, kept in zip(videos, ([0, 2, 4], [0, 1, 2], [0, 2, 4])):
        assert isinstance(video, Video) and video.frames.shape == (3, 32, 32, 3)
        assert np.abs(video.frames.astype(int) - frames[kept]).mean() < 4
    assert read["video"][1].text == "a red square moves right"
    (task,) = [t for t in source_tasks(raw, vocab, 5) if t.name == "prepared/video_caption"]  # evaluated as such
    assert task.references == ["a red square moves right"] and vocab.ids["<bov>"] in task.prompts[0]

    encode_sources(cfg, tmp_path / "run", vocab, log=lambda m: None)
    encoded = open_mixture(cfg, tmp_path / "run", "train")
    assert json.loads((encoded_folder(tmp_path / "run", "prepared") / "prepared.json").read_text())["videos"] == 3
    coded = encoded.readers["prepared"](encoded.sources["prepared"][0])[1][0]
    assert coded.frames is None and coded.codes.shape == (3, 64)
    assert all(np.array_equal(c, vocab.image.encode(f)) for c, f in zip(coded.codes, read["video"][0].frames))
    rows = [next(iter(packed_batches(m.sources, vocab, cfg.data, 0, 1, PipelineStats(), m.weights, m.readers)))
            for m in (raw, encoded)]
    assert all(np.array_equal(rows[0][k], rows[1][k]) for k in rows[0])


def test_a_bad_line_is_named_and_nothing_is_written(tmp_path):
    manifest = every_kind(tmp_path)
    with open(manifest, "a") as out:
        out.write(json.dumps({"image": "media/missing.png", "caption": "gone"}) + "\n")
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "keep.txt").write_text("an earlier run")
    with pytest.raises(BadRecord, match=r"data.jsonl:8: image: no such file 'media/missing.png'"):
        prepare(manifest, tmp_path / "prepared", workers=1, log=lambda m: None)
    assert (tmp_path / "prepared" / "keep.txt").exists() and not (tmp_path / "prepared.partial").exists()


@pytest.mark.parametrize("line, message", [
    ({"image": "media/square.png"}, "make no kind of record"),
    ({"image": "media/square.png", "captoin": "x"}, "make no kind of record"),
    ({"text": "   "}, "text is empty"),
    ({"image": "media/broken.png", "caption": "x"}, "not a decodable image|could not decode"),
    ({"audio": "media/broken.wav", "transcript": "x"}, "expected a WAV file"),
    ({"audio": "media/tone.wav", "transcript": "x", "split": "test"}, "split must be one of"),
    ({"parts": [{"sound": "a.wav"}]}, r"parts\[0\] must be one of"),
    ({"parts": [{"video": "a.mp4"}]}, r"parts\[0\]: no such file 'a.mp4'"),
    ({"video": "media/broken.mp4", "caption": "x"}, r"video 'media/broken.mp4': could not decode video bytes"),
    ({"video": "media/long.gif", "caption": "x"}, r"video is too long: 70.00 s .* > max_seconds=60"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]},
                   {"role": "assistant", "content": "?"}]}, r"messages\[0\].content\[0\].video_url.url: could not decode"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "needs at least one assistant message"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                   {"role": "assistant", "content": "?"}]}, r"messages\[0\].content\[0\].image_url.url: no such file"),
])
def test_each_kind_of_bad_line_gets_its_own_error(tmp_path, line, message):
    every_kind(tmp_path)
    (tmp_path / "media" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "media" / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    (tmp_path / "media" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing")
    (tmp_path / "media" / "long.gif").write_bytes(encode_gif(np.array([[[[0]]], [[[90]]]], np.uint8).repeat(8, 1).repeat(8, 2).repeat(3, 3),
                                                             fps=1 / 35))
    with pytest.raises(BadRecord, match=message):
        check_line(json.dumps(line), tmp_path)


def test_skip_bad_skips_counts_and_lists_the_bad_lines(tmp_path):
    manifest = every_kind(tmp_path)
    (tmp_path / "media" / "truncated.png").write_bytes((tmp_path / "media" / "wide.png").read_bytes()[:60])
    with open(manifest, "a") as out:
        out.write(json.dumps({"image": "media/truncated.png", "caption": "cut short"}) + "\n")
        out.write("not json\n")
        out.write(json.dumps({"text": ""}) + "\n")
    report = prepare(manifest, tmp_path / "prepared", skip_bad=True, workers=2, log=lambda m: None)
    assert report["bad_lines"] == 3 and [e["line"] for e in report["errors"]] == [8, 9, 10]
    assert report["records"] == {"train": 5, "validation": 2}
    assert json.loads((tmp_path / "prepared" / "prepared.json").read_text())["bad_lines"] == 3


def test_the_split_follows_the_line_not_its_place_in_the_file():
    lines = [json.dumps({"text": f"line {i}"}) for i in range(400)]
    splits = [split_of(line, 0.2) for line in lines]
    assert splits == [split_of(line, 0.2) for line in lines]  # deterministic
    reordered = json.dumps({"text": "line 7"}, indent=2)  # the same object spelt differently
    assert split_of(reordered, 0.2) == splits[7]
    assert 0.12 < splits.count("validation") / len(lines) < 0.28


def test_a_record_round_trips_through_its_bytes(tmp_path):
    every_kind(tmp_path)
    record, _ = check_line(json.dumps({"image": "media/wide.png", "caption": "x"}), tmp_path)
    assert Record.from_bytes(record.to_bytes()) == record


def test_a_mixture_of_the_world_and_a_manifest_draws_by_weight(tmp_path, vocab):
    prepare(every_kind(tmp_path, copies=4), tmp_path / "prepared", workers=1, log=lambda m: None)
    world = build_world(str(tmp_path / "world"), seed=1, train=60, validation=8, compositional=6).as_data_source()
    cfg = manifest_config("world:1", f"manifest:{tmp_path / 'prepared'}:3")
    train = open_mixture(cfg, tmp_path / "run", "train", world)
    assert set(train.sources) == {"world/caption", "world/audio", "world/document", "world/video", "prepared"}
    assert sum(w for s, w in train.weights.items() if s.startswith("world/")) == pytest.approx(1.0)
    stats = PipelineStats()
    batches = iter(packed_batches(train.sources, vocab, dataclasses.replace(cfg.data, global_batch_size=2), 0, 1,
                                  stats, train.weights, train.readers))
    for _ in range(20):
        next(batches)
    world_draws = sum(n for s, n in stats.sources.items() if s.startswith("world/"))
    share = stats.sources["prepared"] / (world_draws + stats.sources["prepared"])
    assert 0.6 < share < 0.9  # 3 : 1


def test_a_source_that_cannot_be_read_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.sources 'nowhere'.*not a prepared dataset"):
        open_mixture(manifest_config(f"manifest:{tmp_path / 'nowhere'}"), tmp_path / "run", "train")
    with pytest.raises(ValueError, match=r"data.sources 'no_such_dataset_xyz': no tensorflow-datasets dataset"):
        open_mixture(manifest_config("tfds:no_such_dataset_xyz?kind=text&text=text"), tmp_path / "run", "train")
    with pytest.raises(ValueError, match="config field `data.sources`: 'wrld:1'"):
        DataConfig(sources=("wrld:1",))
    with pytest.raises(ValueError, match="two sources have one name"):
        DataConfig(sources=("manifest:/a/x.jsonl", "manifest:/b/x.jsonl"))
    prepare(every_kind(tmp_path), tmp_path / "prepared", workers=1, log=lambda m: None)
    assert open_prepared(tmp_path / "prepared", "validation", "p") is not None
