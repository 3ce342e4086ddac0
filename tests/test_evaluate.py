"""The held-out eval: greedy generation is the model's argmax, and the scorers accept right answers only."""

import numpy as np

from data import world
from data.segments import Image, Text
from data.world_builder import build_world
from model.generate import generate
from model.transformer import unstack_blocks
from tests.helpers import build, jit_forward, small_model_config
from training.evaluate import answer_segments, is_right, world_tasks


def test_generate_equals_argmax_of_the_full_forward_for_ragged_prompts():
    cfg = small_model_config()
    graphdef, state = build(cfg)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, n).astype(np.int32) for n in (3, 11, 7)]
    generated = generate(graphdef, state, prompts, new_tokens=5, pad_to=8)
    for prompt, row in zip(prompts, generated):
        sequence = list(prompt)
        for _ in range(5):  # no cache, no padding: the plain model, one sequence at a time
            logits, _ = jit_forward(graphdef, state, np.array([sequence]))
            sequence.append(int(np.argmax(logits[0, -1])))
        assert row.tolist() == sequence[len(prompt):]
    # The decode layout (one module and one cache array per layer) generates the same tokens.
    unstacked = generate(*unstack_blocks(graphdef, state), prompts, new_tokens=5, pad_to=8)
    np.testing.assert_array_equal(unstacked, generated)


def _right_answer(vocab, task, reference, prompt_segments=None):
    """The tokens a perfect model would generate for `reference`, <eos> included."""
    if task.name == "drawing":
        answer = [prompt_segments]
    else:
        answer = [Text(reference, loss=True)]
    return vocab.encode(answer, bos=False, eos=True).ids


def test_scorers_accept_the_right_answer_and_reject_a_wrong_one(tmp_path, vocab):
    splits = build_world(str(tmp_path / "world"), seed=3, train=3, validation=12, compositional=4).as_data_source()
    tasks = {task.name: task for task in world_tasks(splits, vocab, examples=2)}
    assert sorted(tasks) == ["caption", "compositional_caption", "drawing", "transcription"]
    for name in ("caption", "transcription", "compositional_caption"):
        task = tasks[name]
        for reference in task.references:
            right = _right_answer(vocab, task, reference)
            assert len(right) < task.new_tokens + 1
            assert is_right(task, answer_segments(vocab, right), reference)
            wrong = vocab.encode([Text(reference + " 1", loss=True)], bos=False).ids
            assert not is_right(task, answer_segments(vocab, wrong), reference)

    # Drawing: the picture of the caption is right; a picture of another colour or an image cut short is not.
    task = tasks["drawing"]
    for colour, position in task.references:
        shape = "square"
        picture = world.render_image(np.random.default_rng(0), shape, colour, "large", position)
        right = _right_answer(vocab, task, None, Image(pixels=picture, loss=True))
        assert len(right) == task.new_tokens
        assert is_right(task, answer_segments(vocab, right), (colour, position))
        other = next(c for c in world.COLOURS if c != colour)
        wrong = world.render_image(np.random.default_rng(0), shape, other, "large", position)
        assert not is_right(task, answer_segments(vocab, _right_answer(vocab, task, None, Image(pixels=wrong))),
                            (colour, position))
        cut = np.concatenate([right[:40], right[-2:]])  # <boi> + 39 codes + <eoi> <eos>
        assert not is_right(task, answer_segments(vocab, cut), (colour, position))


def test_the_picture_detector_reads_every_rendered_world_picture():
    for index in range(0, 300, 3):  # caption examples sit at every third index
        kind, (image, words) = world.make_example(0, "validation", index)
        assert kind == "caption"
        _, colour, _, position = world.parse_caption(words.text)
        assert world.detect_picture(image.pixels) == (colour, position)
    assert world.detect_picture(np.full((32, 32, 3), 200, np.uint8)) == (None, None)


def test_sampling_is_seeded_and_top_k_keeps_only_the_k_likeliest_tokens():
    cfg = small_model_config()
    graphdef, state = build(cfg)
    prompts = [np.array([1, 5, 9], np.int32)] * 4
    one = generate(graphdef, state, prompts, new_tokens=6, temperature=1.0, top_k=3, seed=7)
    assert (one == generate(graphdef, state, prompts, new_tokens=6, temperature=1.0, top_k=3, seed=7)).all()
    assert (one != generate(graphdef, state, prompts, new_tokens=6, temperature=1.0, top_k=3, seed=8)).any()
    first = generate(graphdef, state, prompts, new_tokens=1, temperature=1.0, top_k=1, seed=3)
    assert (first == generate(graphdef, state, prompts, new_tokens=1)).all()  # top-1 sampling is greedy
    logits, _ = jit_forward(graphdef, state, prompts[0][None])
    top3 = set(np.argsort(np.asarray(logits[0, -1]))[-3:].tolist())
    many = generate(graphdef, state, [prompts[0]] * 64, new_tokens=1, temperature=5.0, top_k=3, seed=0)
    assert set(many[:, 0].tolist()) <= top3 and len(set(many[:, 0].tolist())) > 1
