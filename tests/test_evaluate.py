"""The held-out eval: it answers through the serving engine (greedy answers are the model's argmax),
and the scorers accept right answers only."""

import numpy as np
import pytest

from data import world
from data.segments import Image, Text
from data.world_builder import build_world
from parallel.sharding import make_mesh
from serving.engine import SamplingParams
from serving.offline import generate
from tests.helpers import jit_forward
from tests.serving_helpers import SERVE_CFG, make_engine, prompt_of, served_model
from tests.test_engine import reference_greedy
from training.evaluate import Evaluator, Task, answer_segments, answers, clip_part_accuracy, is_right, world_tasks


@pytest.mark.slow
def test_offline_generation_is_the_argmax_of_the_full_forward_for_ragged_prompts():
    model = served_model()
    engine = make_engine(*model, slots=2)  # fewer slots than prompts: they queue, as on the server
    prompts = [prompt_of(n, seed=n) for n in (3, 11, 7, 20)]
    answers = generate(engine, prompts, SamplingParams(max_tokens=6))
    for prompt, answer in zip(prompts, answers):
        assert answer.tolist() == reference_greedy(model, prompt, 6)


@pytest.mark.slow
def test_the_evaluations_answers_are_the_engines_greedy_answers_with_each_evals_weights(vocab):
    """The Evaluator builds its engine once and decodes each later eval with the weights it is given."""
    prompts = [prompt_of(n, seed=n) for n in (4, 9, 13)]
    task = Task("echo", prompts, ["?"] * len(prompts), new_tokens=8)
    evaluator = Evaluator(SERVE_CFG.model, vocab, [task], make_mesh(SERVE_CFG.mesh))
    for seed in (0, 1):
        model = served_model(seed=seed)
        assert evaluator(*model) == {"eval/echo_accuracy": 0.0}  # "?" is no answer of a random model
        assert [a.tolist() for a in answers(evaluator.engine, task, vocab)] == [reference_greedy(model, p, 8) for p in prompts]
    assert evaluator.engine is not None and evaluator.engine.slots == len(prompts)


def _right_answer(vocab, task, reference, prompt_segments=None):
    """The tokens a perfect model would generate for `reference`, <eos> included."""
    if task.name == "drawing":
        answer = [prompt_segments]
    else:
        answer = [Text(reference, loss=True)]
    return vocab.encode(answer, bos=False, eos=True).ids


def test_scorers_accept_the_right_answer_and_reject_a_wrong_one(tmp_path, vocab):
    splits = build_world(str(tmp_path / "world"), seed=3, train=3, validation=12, compositional=6).as_data_source()
    tasks = {task.name: task for task in world_tasks(splits, vocab, examples=2)}
    assert sorted(tasks) == ["caption", "compositional_caption", "compositional_video_caption", "drawing",
                             "transcription", "video_caption"]
    for name in ("caption", "transcription", "compositional_caption", "video_caption", "compositional_video_caption"):
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


def test_clip_captions_are_scored_whole_and_by_part():
    """A clip caption with the right shapes but the wrong end place is right in shape, wrong in motion;
    an answer that is no clip caption is wrong in both."""
    references = ["a small red circle moves from the top left to the bottom right",
                  "a large blue square in the top right turns green",
                  "a large red square is joined by a small cyan cross"]
    said = ["a small red circle moves from the top left to the top right",
            "a large blue square in the top right turns green",
            "a large red square is joined by a small cyan triangle"]
    assert clip_part_accuracy("video_", said, references) == {"eval/video_shape_accuracy": 2 / 3,
                                                              "eval/video_motion_accuracy": 2 / 3}
    assert clip_part_accuracy("video_", ["tones 1 2", ""], references[:2]) == {"eval/video_shape_accuracy": 0.0,
                                                                               "eval/video_motion_accuracy": 0.0}


def test_the_picture_detector_reads_every_rendered_world_picture():
    for index in range(0, 400, len(world.KINDS)):  # caption examples sit at every fourth index
        kind, (image, words) = world.make_example(0, "validation", index)
        assert kind == "caption"
        _, colour, _, position = world.parse_caption(words.text)
        assert world.detect_picture(image.pixels) == (colour, position)
    assert world.detect_picture(np.full((32, 32, 3), 200, np.uint8)) == (None, None)


@pytest.mark.slow
def test_sampling_is_seeded_and_top_k_keeps_only_the_k_likeliest_tokens():
    model = served_model()
    engine = make_engine(*model)
    prompts = [prompt_of(5, seed=0)] * 4

    def sampled(seed, top_k=3, temperature=1.0, count=4, max_tokens=6):
        params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed + i)
                  for i in range(count)]
        return [a.tolist() for a in generate(engine, [prompts[0]] * count, params)]

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)
    greedy = [a.tolist() for a in generate(engine, prompts, SamplingParams(max_tokens=1))]
    assert sampled(3, top_k=1, max_tokens=1) == greedy  # top-1 sampling is greedy
    first = [a[0] for a in sampled(0, temperature=5.0, count=64, max_tokens=1)]
    logits, _ = jit_forward(*model, prompts[0][None])
    top3 = set(np.argsort(np.asarray(logits[0, -1]))[-3:].tolist())
    assert set(first) <= top3 and len(set(first)) > 1
