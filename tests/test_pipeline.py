"""The input pipeline: templates mark answers, packing keeps sequences apart, resume is exact, shards split."""

import dataclasses

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.base import DataConfig
from data import templates
from data.pipeline import PipelineStats, packed_batches, packing_efficiency, process_share
from data.segments import IMAGE, Audio, Image, Text
from data.sources import read_world, world_by_kind
from data.world_builder import build_world
from tests.helpers import WORLD_MODEL as MODEL
from tests.helpers import build, jit_forward

DATA = DataConfig(seq_len=256, global_batch_size=4, packing_bins=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(str(tmp_path_factory.mktemp("world")), seed=5, train=90, validation=9, compositional=6)


def trained_ids(vocab, segments):
    encoded = vocab.encode(segments)
    return encoded.ids[encoded.loss_mask].tolist()


def test_templates_train_the_answer_and_never_the_prompt(vocab):
    pixels = np.full((32, 32, 3), 200, np.uint8)
    clip = np.zeros(16000, np.float32)
    eos, boi, eoi = vocab.ids["<eos>"], vocab.ids["<boi>"], vocab.ids["<eoi>"]
    caption = templates.captioning(Image(pixels=pixels), "a small red circle in the top left")
    assert trained_ids(vocab, caption) == vocab.text.encode("a small red circle in the top left") + [eos]
    drawing = trained_ids(vocab, templates.drawing(Image(pixels=pixels), "a small red circle in the top left"))
    assert drawing[0] == boi and drawing[-2:] == [eoi, eos] and len(drawing) == 64 + 3
    assert (vocab.modality_of(np.array(drawing[1:-2])) == IMAGE).all()
    transcript = templates.transcription(Audio(waveform=clip), "tones 1 5 #")
    assert trained_ids(vocab, transcript) == vocab.text.encode("tones 1 5 #") + [eos]
    document = vocab.encode(templates.document([Text("Listen:", loss=False), Audio(waveform=clip)]))
    assert document.loss_mask[1:].all() and not document.loss_mask[0]  # all but <bos>


def test_packed_rows_keep_sequences_apart_with_positions_restarting(world, vocab):
    batch = next(iter(packed_batches(world.as_data_source()["train"], vocab, DATA, 0, 1)))
    assert batch["inputs"].shape == (4, 256) and packing_efficiency(batch) > 0.5
    graphdef, state = build(MODEL)
    row = int(np.argmax(batch["segment_ids"].max(axis=1)))  # a clip may fill a row of its own
    segments, positions = batch["segment_ids"][row], batch["positions"][row]
    packed_logits, _ = jit_forward(graphdef, state, batch["inputs"][row : row + 1], positions[None], segments[None])
    assert segments.max() >= 2, "a row should hold several sequences"
    for segment in range(1, segments.max() + 1):
        where = np.flatnonzero(segments == segment)
        assert (np.diff(where) == 1).all() and (positions[where] == np.arange(len(where))).all()
        alone, _ = jit_forward(graphdef, state, batch["inputs"][row : row + 1, where])
        np.testing.assert_allclose(packed_logits[0, where], alone[0], rtol=1e-4, atol=1e-4)
    # Targets are the inputs shifted within each sequence.
    first = np.flatnonzero(segments == 1)
    assert (batch["targets"][row, first[:-1]] == batch["inputs"][row, first[1:]]).all()


def test_resuming_from_a_saved_state_gives_the_batches_of_a_straight_run(world, vocab):
    source = world.as_data_source()["train"]
    straight = iter(packed_batches(source, vocab, DATA, 0, 1))
    for _ in range(3):
        next(straight)
    state = straight.get_state()
    expected = [next(straight) for _ in range(2)]
    resumed = iter(packed_batches(source, vocab, DATA, 0, 1))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_mixture_draws_from_its_sources_by_weight(world, vocab):
    sources = world.as_data_source()
    stats = PipelineStats()
    batches = iter(packed_batches({"train": sources["train"], "validation": sources["validation"]}, vocab,
                                  dataclasses.replace(DATA, prefetch=0), 0, 1, stats=stats,
                                  weights={"train": 3.0, "validation": 1.0}))
    while stats.examples < 400:
        next(batches)
    share = stats.sources["validation"] / stats.examples
    assert abs(share - 0.25) < 0.03, stats.sources
    with pytest.raises(ValueError, match="mixture weights"):
        packed_batches({"train": sources["train"]}, vocab, DATA, 0, 1, weights={"other": 1.0})


def test_two_processes_read_disjoint_shares_that_cover_the_data():
    source = list(range(101))
    shares = [set(process_share(source, index, 2)) for index in range(2)]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(source)


def test_overlong_examples_are_truncated_or_dropped_and_counted(world, vocab):
    source = world.as_data_source()["train"]
    for overlong in ("truncate", "drop"):
        stats = PipelineStats()
        cfg = dataclasses.replace(DATA, seq_len=100, overlong=overlong)  # captions fit, documents do not
        batch = next(iter(packed_batches(source, vocab, cfg, 0, 1, stats=stats)))
        assert batch["inputs"].shape == (4, 100)
        assert (stats.truncated if overlong == "truncate" else stats.dropped) > 0
        assert (stats.dropped if overlong == "truncate" else stats.truncated) == 0
    assert set(stats.tasks) <= set(templates.TASKS)
    with pytest.raises(ValueError, match="data.seq_len"):  # nothing fits: a clear error, not an endless filter
        next(iter(packed_batches(source, vocab, dataclasses.replace(DATA, seq_len=10, overlong="drop"), 0, 1)))


def test_an_empty_source_and_an_unsplittable_batch_are_named(vocab):
    with pytest.raises(ValueError, match="empty"):
        packed_batches([], vocab, DATA, 0, 1)
    with pytest.raises(ValueError, match="data.global_batch_size"):
        packed_batches([1], vocab, dataclasses.replace(DATA, global_batch_size=5), 0, 2)
    with pytest.raises(ValueError, match="data.overlong"):
        DataConfig(overlong="wrap")
    assert jax.process_count() == 1


def test_the_iterator_state_saves_and_restores_with_an_orbax_checkpoint_beside_the_model(world, vocab, tmp_path):
    source = world.as_data_source()["train"]
    params = {"w": np.arange(6.0).reshape(2, 3)}
    straight = iter(packed_batches(source, vocab, DATA, 0, 1))
    for _ in range(2):
        next(straight)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("params", "data")) as manager:
        manager.save(2, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 data=grain.checkpoint.CheckpointSave(straight)))
        manager.wait_until_finished()
    expected = [next(straight) for _ in range(2)]

    resumed = iter(packed_batches(source, vocab, DATA, 0, 1))
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("params", "data")) as manager:
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params), data=grain.checkpoint.CheckpointRestore(resumed)))
    np.testing.assert_array_equal(restored["params"]["w"], params["w"])
    for want in expected:
        got = next(resumed)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_the_worlds_kinds_become_sources_of_their_own_mixed_by_the_configs_weights(world, vocab):
    by_kind = world_by_kind(world.as_data_source()["train"])
    assert {kind: len(source) for kind, source in by_kind.items()} == {"caption": 23, "audio": 23, "document": 22,
                                                                       "video": 22}
    for kind, source in by_kind.items():
        assert {read_world(source[i])[0] for i in range(len(source))} == {kind}
    stats = PipelineStats()
    cfg = dataclasses.replace(DATA, prefetch=0, world_mixture=(3.0, 2.0, 1.0, 1.0))
    batches = iter(packed_batches(by_kind, vocab, cfg, 0, 1, stats=stats,
                                  weights=dict(zip(by_kind, cfg.world_mixture))))
    while stats.examples < 350:
        next(batches)
    assert abs(stats.sources["document"] / stats.examples - 1 / 7) < 0.03, stats.sources
    with pytest.raises(ValueError, match="data.world_mixture"):
        DataConfig(world_mixture=(1.0, 0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="data.world_mixture"):
        DataConfig(world_mixture=(1.0, 1.0, 1.0))  # one weight per kind: caption, audio, document, video


def test_captioning_share_sets_how_many_caption_examples_become_captioning_rather_than_drawing():
    picture = [Image(codes=np.zeros(64, np.int64)), Text("a small red circle in the top left")]
    for share in (0.5, 0.8, 1.0):
        tasks = [templates.apply("caption", picture, np.random.default_rng([0, i]), share)[0] for i in range(2000)]
        assert abs(tasks.count("captioning") / len(tasks) - share) < 0.03
    with pytest.raises(ValueError, match="data.captioning_share"):
        DataConfig(captioning_share=1.5)
