"""The procedural world: deterministic, held-out pairs kept apart, shapes and tones recoverable, tfds."""

import itertools
import re
import sys

import numpy as np
import pytest

from data import world
from data.segments import MODALITY_NAMES, Text, payload
from data.world_builder import build_world, decode_segments


def pairs(segments):
    """(modality name, signal) per segment, for compact assertions."""
    return [(MODALITY_NAMES[s.modality], payload(s)) for s in segments]

CAPTION_RE = re.compile(r"a (small|large) (\w+) (\w+) in the (\w+ \w+)")


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
    return {(shape, colour) for _, colour, shape, _ in CAPTION_RE.findall(text)}


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
        assert pairs and (pairs <= held_out if split == "compositional" else not pairs & held_out)


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
    for _ in range(20):
        modalities = [m for m, _ in pairs(world.sample_example(rng, "document", "train"))]
        assert "image" in modalities and "audio" in modalities
        assert all(a != "text" or b != "text" for a, b in zip(modalities, modalities[1:]))


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
