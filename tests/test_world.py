"""The procedural world: deterministic, held-out pairs kept apart, shapes and tones recoverable, tfds."""

import itertools
import re
import sys

import numpy as np
import pytest

from data import world
from data.segments import Text, payload
from data.world_builder import build_world, decode_segments


def pairs(segments):
    """(modality name, signal) per segment, for compact assertions."""
    return [(("text", "image", "audio", "video")[s.modality], payload(s)) for s in segments]

SHAPE_RE = re.compile(r"a (small|large) (\w+) (\w+)")  # every shape a caption or clip caption names


def assert_same_segments(got, want):
    got, want = pairs(got), pairs(want)
    assert [m for m, _ in got] == [m for m, _ in want]
    for (modality, a), (_, b) in zip(got, want):
        if modality == "text":
            assert a == b
        else:
            np.testing.assert_allclose(a, b, atol=1e-4)  # stored audio is int16 PCM


def shape_colour_pairs(segments):
    """(shape, colour) of every caption in an example's text."""
    text = " ".join(s.text for s in segments if isinstance(s, Text))
    return {(shape, colour) for _, colour, shape in SHAPE_RE.findall(text)}


@pytest.mark.parametrize("split", world.SPLITS)
def test_same_seed_and_index_give_identical_examples_and_other_indices_differ(split):
    kinds = world.SPLIT_KINDS[split]
    for index in range(len(kinds)):  # one of each kind
        kind, segments = world.make_example(7, split, index)
        assert kind == kinds[index]
        assert_same_segments(world.make_example(7, split, index)[1], segments)
        kind_next, other = world.make_example(7, split, index + len(kinds))
        assert kind_next == kind
        media = [v for m, v in pairs(segments) if m != "text"]
        other_media = [v for m, v in pairs(other) if m != "text"]
        assert not any(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(media, other_media))
    other_seed = world.make_example(8, split, 0)[1]
    assert not np.array_equal(payload(other_seed[0]), payload(world.make_example(7, split, 0)[1][0]))


def test_held_out_pairs_never_appear_in_train_or_validation_and_only_they_in_compositional():
    held_out = set(world.HELD_OUT_COMBINATIONS)
    for split in ("train", "validation"):
        rng = np.random.default_rng(0)
        pairs = {world.sample_attributes(rng, split)[:2] for _ in range(3000)}
        assert pairs == set(itertools.product(world.SHAPES, world.COLOURS)) - held_out  # all the others
    rng = np.random.default_rng(1)
    assert {world.sample_attributes(rng, "compositional")[:2] for _ in range(300)} == held_out
    # End to end, through the captions that examples of every kind carry.
    for split in world.SPLITS:
        pairs = set().union(*(shape_colour_pairs(world.make_example(0, split, i)[1]) for i in range(90)))
        assert pairs and (pairs & held_out if split == "compositional" else not pairs & held_out)
    for i in range(90):  # a clip's first shape is a held-out pair (a second one, that joins it, is not)
        kind, segments = world.make_example(0, "compositional", i)
        if kind == "video":
            event, shapes, _ = world.parse_clip_caption(segments[1].text)
            size, colour, shape = shapes[0]  # the first shape, named first
            assert (shape, colour) in held_out, segments[1].text


@pytest.mark.parametrize("shape", world.SHAPES)
def test_each_shape_is_drawn_in_its_colour_inside_its_quadrant(shape):
    rng = np.random.default_rng(3)
    for colour, position in itertools.product(world.COLOURS, world.POSITIONS):
        bottom, right = "bottom" in position, "right" in position
        counts = {}
        for size in world.SIZES:
            image = world.render_image(rng, shape, colour, size, position)
            assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
            background = image[0 if bottom else 31, 0 if right else 31]  # the opposite corner
            ys, xs = np.nonzero(np.any(image != background, axis=-1))
            assert np.all((ys >= 16) == bottom) and np.all((xs >= 16) == right), (colour, position, size)
            near_colour = np.linalg.norm(image.astype(float) - world.COLOURS[colour], axis=-1) < 50
            counts[size] = int(near_colour.sum())
        assert 8 <= counts["small"] < counts["large"], (colour, position, counts)


def test_dtmf_clips_decode_back_to_their_keys():
    rng = np.random.default_rng(5)
    for symbols in ["1", "55", "*#0D", "A9", *(world.sample_symbols(rng) for _ in range(40))]:
        audio = world.render_dtmf(rng, symbols)
        assert audio.dtype == np.float32 and audio.shape == (world.SAMPLE_RATE,)
        assert 0.1 < np.abs(audio).max() <= 0.9
        assert world.detect_dtmf(audio, world.SAMPLE_RATE) == symbols
    assert world.transcript("15#") == "tones 1 5 #"
    assert world.detect_dtmf(np.zeros(world.SAMPLE_RATE, np.float32)) == ""


def test_examples_have_the_promised_segment_layout():
    rng = np.random.default_rng(2)
    assert [m for m, _ in pairs(world.sample_example(rng, "caption", "train"))] == ["image", "text"]
    kind, text = pairs(world.sample_example(rng, "audio", "validation"))[1]
    assert kind == "text" and text.startswith("tones ")
    video, words = pairs(world.sample_example(rng, "video", "train"))
    assert video[0] == "video" and video[1].shape[0] == world.FRAMES and world.parse_clip_caption(words[1])
    kinds = set()
    for _ in range(60):
        modalities = [m for m, _ in pairs(world.sample_example(rng, "document", "train"))]
        kinds |= set(modalities)
        assert "image" in modalities and "audio" in modalities
        assert all(a != "text" or b != "text" for a, b in zip(modalities, modalities[1:]))
    assert "video" in kinds  # clips inside interleaved documents


def test_clips_show_what_their_captions_say():
    """Moves: the first frame has the shape at its start, the last at its end; turns: the colour
    changes, the place does not; appears: one shape, then another beside it."""
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(60):
        frames, words = world.sample_clip(rng, "train")
        assert frames.shape == (world.FRAMES, 32, 32, 3) and frames.dtype == np.uint8
        event, shapes, change = world.parse_clip_caption(words)
        seen.add(event)
        first, last = world.detect_picture(frames[0]), world.detect_picture(frames[-1])
        if event == "moves":
            assert first == (shapes[0][1], change[0]) and last == (shapes[0][1], change[1]), words
        elif event == "turns":
            assert first == (shapes[0][1], change[0]) and last == (change[1], change[0]), words
        else:
            assert first == (shapes[0][1], first[1]) and not np.array_equal(frames[0], frames[-1]), words
    assert seen == set(world.EVENTS)
    assert world.parse_clip_caption("a small red circle in the top left") is None


def test_tfds_builder_builds_and_reads_back_without_tensorflow(tmp_path):
    sizes = dict(train=6, validation=3, compositional=2)
    builder = build_world(str(tmp_path), seed=3, **sizes)
    sources = builder.as_data_source()
    for split, size in sizes.items():
        assert len(sources[split]) == size
        for index in range(size):  # stored in index order
            record = sources[split][index]
            kind, segments = world.make_example(3, split, index)
            assert record["kind"].decode() == kind
            assert_same_segments(decode_segments(record), segments)
    assert build_world(str(tmp_path), seed=3, **sizes).info.splits["train"].num_examples == 6  # reused
    assert "tensorflow" not in sys.modules
