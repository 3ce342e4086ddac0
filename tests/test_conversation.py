"""The conversation template and the world's conversations: ids, loss marks, roles, renderings."""

import numpy as np
import pytest

from checkpoints import adopt_tokenizers
from configs import get_config
from data import conversation, world
from data.conversation import END_OF_TURN, START_OF_TURN, Turn
from data.mixture import open_mixture
from data.segments import Audio, Image, Symbol, Text, Video
from data.world_builder import build_world
from data.world_chat import KINDS, make_conversation
from training.evaluate import answer_segments, conversation_tasks, is_right


def test_a_conversation_with_every_part_kind_becomes_the_templates_ids_and_only_the_models_turns_train(vocab):
    picture, clip, frames = np.arange(64) % 999, np.array([5, 6, 7]), np.arange(128).reshape(2, 64) * 3 % 999
    turns = [Turn("system", (Text("Answer briefly."),)),
             Turn("user", (Text("Describe the picture:"), Image(codes=picture), Audio(codes=clip), Video(codes=frames))),
             Turn("model", (Text("a small red circle"),)),
             Turn("user", (Text("Draw it."),)),
             Turn("model", (Image(codes=picture),))]
    encoded = vocab.encode(conversation.segments(turns), bos=True, eos=False)
    sot, eot = vocab.ids[START_OF_TURN], vocab.ids[END_OF_TURN]
    text = lambda words: vocab.text.encode(words)  # noqa: E731
    image = [vocab.ids["<boi>"], *(picture + vocab.image_offset), vocab.ids["<eoi>"]]
    audio = [vocab.ids["<boa>"], *(clip + vocab.audio_offset), vocab.ids["<eoa>"]]
    video = [vocab.ids["<bov>"], *[i for frame in frames for i in (vocab.ids["<boi>"], *(frame + vocab.image_offset),
                                                                    vocab.ids["<eoi>"])], vocab.ids["<eov>"]]
    expected = [
        ([vocab.ids["<bos>"]], False),
        ([sot, *text("system"), *text("Answer briefly."), eot], False),
        ([sot, *text("user"), *text("Describe the picture:"), *image, *audio, *video, eot], False),
        ([sot, *text("model")], False), ([*text("a small red circle"), eot], True),
        ([sot, *text("user"), *text("Draw it."), eot], False),
        ([sot, *text("model")], False), ([*image, eot], True),
    ]
    assert encoded.ids.tolist() == [i for ids, _ in expected for i in ids]
    assert encoded.loss_mask.tolist() == [trained for ids, trained in expected for _ in ids]


def test_a_prompt_for_a_reply_is_the_conversations_ids_up_to_the_models_words(vocab):
    history = [Turn("user", (Text("Describe the picture:"), Image(codes=np.zeros(64, int)))),
               Turn("model", (Text("a small red circle in the top left"),)),
               Turn("user", (Text("What colour is it?"),))]
    whole = vocab.encode(conversation.segments([*history, Turn("model", (Text("red"),))]), bos=True, eos=False).ids
    prompt = vocab.encode(conversation.segments(history, reply=True), bos=True, eos=False).ids
    assert whole[: len(prompt)].tolist() == prompt.tolist()
    assert whole[len(prompt):].tolist() == [*vocab.text.encode("red"), vocab.ids[END_OF_TURN]]


def test_openai_roles_map_onto_the_three_and_consecutive_parts_of_a_role_are_one_turn():
    turns = conversation.by_role([("developer", Text("Be brief.")), ("user", Text("Hi")), ("user", Text("there")),
                                  ("assistant", Text("Hello"))])
    assert [(t.role, [p.text for p in t.parts]) for t in turns] == [
        ("system", ["Be brief."]), ("user", ["Hi", "there"]), ("model", ["Hello"])]
    with pytest.raises(ValueError, match="unknown role 'robot'"):
        conversation.by_role([("robot", Text("beep"))])


def test_a_control_symbol_carries_no_text_and_an_unknown_one_is_named(vocab):
    assert Symbol(END_OF_TURN).text == "" and vocab.encode([Symbol(END_OF_TURN)], bos=False, eos=False).ids.size == 1
    with pytest.raises(ValueError, match="no control symbol '<end_of_story>'"):
        vocab.encode([Symbol("<end_of_story>")])


@pytest.mark.parametrize("split", ["train", "validation", "compositional"])
def test_world_conversations_are_deterministic_and_each_model_turn_has_its_answer(split):
    seen = set()
    for index in range(24):
        turns, answers = make_conversation(0, split, index)
        again, _ = make_conversation(0, split, index)
        assert [[getattr(p, "text", None) for p in t.parts] for t in turns] == \
               [[getattr(p, "text", None) for p in t.parts] for t in again]
        assert [a.turn for a in answers] == [i for i, t in enumerate(turns) if t.role == "model"]
        for answer in answers:
            (part,) = turns[answer.turn].parts
            assert (answer.text == part.text) if answer.kind != "drawing" else isinstance(part, Image)
        seen.add(len([t for t in turns if t.role == "user"]))
        pictures = [p for t in turns for p in t.parts if isinstance(p, Image)]
        colours = {world.detect_picture(p.pixels)[0] for p in pictures}
        if split == "compositional":  # only the held-out pairs: a shape never seen in that colour
            assert colours <= {colour for _, colour in world.HELD_OUT_COMBINATIONS}
        clips = [p for t in turns for p in t.parts if isinstance(p, Video)]
        for answer in answers:
            if answer.kind == "video-caption":
                assert len(clips) == 1 and world.parse_clip_caption(answer.text) is not None
    assert len(seen) > 1  # follow-ups of different lengths


def test_the_world_conversations_cover_every_kind_and_a_system_message_changes_the_answers_form():
    kinds, forms = set(), {}
    for index in range(80):
        turns, answers = make_conversation(0, "train", index)
        said = {answer.kind for answer in answers}
        kinds.add("drawing" if "drawing" in said else "clip" if "transcript" in said else
                  "video" if "video-caption" in said else
                  "two" if sum(answer.kind == "caption" for answer in answers) == 2 else "picture")
        follow = [a.text for a in answers if a.kind in ("follow-up", "video-follow-up")]
        if follow:
            forms.setdefault(turns[0].role == "system", set()).add(follow[-1].endswith("."))
    assert kinds == set(KINDS)
    assert forms == {True: {True}, False: {False}}  # sentences with the system message, bare words without


def test_held_out_conversations_are_scored_turn_by_turn_on_the_conversation_so_far(vocab):
    tasks = {task.name: task for task in conversation_tasks(0, vocab, 8)}
    assert set(tasks) == {"chat/caption", "chat/transcript", "chat/follow_up", "chat/drawing", "chat/video_caption",
                          "chat/video_follow_up"}
    turns, expected = make_conversation(0, "validation", 0)  # a picture, then questions about it
    follow_ups = [answer for answer in expected if answer.kind == "follow-up"]
    asked = vocab.encode(conversation.segments(turns[: follow_ups[0].turn], reply=True), bos=True, eos=False).ids
    task = tasks["chat/follow_up"]
    (where,) = [i for i, prompt in enumerate(task.prompts) if np.array_equal(prompt, asked)]
    reference = task.references[where]
    assert reference == follow_ups[0].text
    said = np.array([*vocab.text.encode(reference), vocab.ids[END_OF_TURN], 7, 7])  # anything after the turn ends
    assert is_right(task, answer_segments(vocab, said, task.end), reference)
    wrong = np.array([*vocab.text.encode("purple"), vocab.ids[END_OF_TURN]])
    assert not is_right(task, answer_segments(vocab, wrong, task.end), reference)


def test_tuning_another_runs_lm_takes_its_tokenizers_or_refuses_others(tmp_path):
    def tokenizers(run, text: bytes):
        root = run / "tokenizers"
        (root / "image").mkdir(parents=True), (root / "audio").mkdir()
        (root / "text.model").write_bytes(text), (root / "metrics.json").write_text("{}")

    tokenizers(tmp_path / "pretrained", b"pieces")
    assert "copied" in adopt_tokenizers(tmp_path / "pretrained", tmp_path / "fresh")
    assert (tmp_path / "fresh" / "tokenizers" / "text.model").read_bytes() == b"pieces"
    tokenizers(tmp_path / "other", b"other pieces")
    with pytest.raises(ValueError, match="other tokenizers"):
        adopt_tokenizers(tmp_path / "pretrained", tmp_path / "other")


@pytest.mark.parametrize("replay", [0.0, 0.25])
def test_sft_mixture_gives_its_replay_share_of_the_world_to_pre_training_examples(tmp_path, replay):
    splits = build_world(str(tmp_path / "world"), seed=2, train=40, validation=8, compositional=4).as_data_source()
    cfg = get_config("tiny")
    mixture = open_mixture(cfg, tmp_path / "run", "train", splits, conversations=True, replay=replay)
    assert mixture.weights["world/conversation"] == pytest.approx(1 - replay)
    examples = {name: weight for name, weight in mixture.weights.items() if name != "world/conversation"}
    assert sum(examples.values()) == pytest.approx(replay)
    assert bool(examples) == bool(replay) and all(name.startswith("world/") for name in examples)
