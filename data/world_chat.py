"""The world's conversations: multi-turn chats about its pictures, sounds and clips, for instruction tuning.

Conversation `index` of `split` under `seed` is rendered from its own random stream, so any worker
makes any one and nothing is stored; held-out splits are fresh renderings, and the compositional
split keeps its held-out (shape, colour) pairs, as the world's examples do. Five kinds take turns:

    picture     a picture to describe (its caption), then two or three questions about it (three
                or four in training): its colour, shape, size or place
    clip        a clip to transcribe, then one or two of (two or three in training): how many
                tones, the first, the last
    drawing     a request to draw (answered with a picture), then "now draw it in the <place>"
                (the same shape, colour and size moved: a turn that refers back to an earlier one)
    two         two pictures described in turn, then a question about the first one
    video       a video clip to describe (its caption), then what happened: where the shape ended
                up, what colour it turned, or what appeared
    (system)    any of the four that ask questions may open with a system message asking for
                whole sentences: "It is red." instead of "red"

The first turns use the pre-training tasks' prompts, so instruction tuning builds on them.
`Answer.kind` says how the evaluation scores a model turn (data/conversation.py renders them).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data import conversation, world
from data.conversation import Turn
from data.segments import Audio, Image, Text, Video
from data.templates import CAPTION_PROMPT, DRAW_PROMPT, TRANSCRIBE_PROMPT, VIDEO_PROMPT

KINDS = ("picture", "clip", "drawing", "two", "video")
# Training meets the kinds in these shares: pictures 4 of 11, DTMF clips 3, drawings 2, two
# pictures and a video clip 1 each. Follow-up answers are a few words, so training asks more of
# them (QUESTIONS_ASKED); a drawing trains two pictures' codes (130 tokens), but at 1 in 9 the
# tuned model drew the colour or place wrong in 23% of its pictures (docs/performance.md).
SPLIT_KINDS = {"train": ("picture", "clip", "two", "drawing", "picture", "clip", "video", "picture", "clip",
                         "drawing", "picture"),
               "validation": KINDS,
               "compositional": ("picture", "drawing", "two", "video")}
SENTENCES = "Answer in whole sentences."
NUMBERS = {2: "two", 3: "three", 4: "four"}
QUESTIONS = {"colour": "What colour is it?", "shape": "What shape is it?", "size": "How big is it?",
             "place": "Where is it?"}
# How many follow-ups a picture and a DTMF clip get, [low, high): training asks more than the
# held-out conversations, whose mix stays as the evaluation has always scored it.
QUESTIONS_ASKED = {"picture": {"train": (3, 5), "held-out": (2, 4)}, "clip": {"train": (2, 4), "held-out": (1, 3)}}


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a model turn must say, for scoring: `text` (exact match) or, for a drawing, the
    (colour, place) the world's detector must find."""

    turn: int  # its index in the conversation's turns
    kind: str  # "caption", "transcript", "follow-up", "drawing", "video-caption" or "video-follow-up"
    text: str | None = None
    drawn: tuple[str, str] | None = None


def _sentence(attribute: str, value: str) -> str:
    return {"colour": f"It is {value}.", "shape": f"It is a {value}.", "size": f"It is {value}.",
            "place": f"It is in the {value}."}[attribute]


def _follow_up(attribute: str, attributes: tuple[str, str, str, str], sentences: bool) -> tuple[str, str]:
    shape, colour, size, position = attributes
    value = {"colour": colour, "shape": shape, "size": size, "place": position}[attribute]
    return QUESTIONS[attribute], (_sentence(attribute, value) if sentences else value)


def _asked(rng: np.random.Generator, kind: str, split: str) -> int:
    low, high = QUESTIONS_ASKED[kind]["train" if split == "train" else "held-out"]
    return int(rng.integers(low, high))


def _what_happened(caption: str, sentences: bool) -> tuple[str, str]:
    """A question about a clip's event, and its answer: where the shape ended up (moves), what
    colour it turned (turns), what appeared (appears)."""
    event, shapes, change = world.parse_clip_caption(caption)
    if event == "moves":
        return "Where did it end up?", f"It ended in the {change[1]}." if sentences else change[1]
    if event == "turns":
        return "What colour did it turn?", f"It turned {change[1]}." if sentences else change[1]
    size, colour, shape = shapes[1]
    return "What appeared?", f"A {size} {colour} {shape} appeared." if sentences else f"a {size} {colour} {shape}"


def sample_conversation(rng: np.random.Generator, kind: str, split: str) -> tuple[list[Turn], list[Answer]]:
    """A fresh conversation of `kind`: its turns, and what each model turn must say."""
    turns: list[Turn] = []
    answers: list[Answer] = []

    def user(*parts) -> None:
        turns.append(Turn("user", parts))

    def model(answer_kind: str, part, **expected) -> None:
        answers.append(Answer(len(turns), answer_kind, **expected))
        turns.append(Turn("model", (part,)))

    sentences = kind != "drawing" and rng.random() < 0.3
    if sentences:
        turns.append(Turn("system", (Text(SENTENCES),)))
    if kind in ("picture", "two"):
        pictures = [world.sample_attributes(rng, split) for _ in range(1 if kind == "picture" else 2)]
        for attributes in pictures:
            words = world.caption(*attributes)
            user(Text(CAPTION_PROMPT), Image(pixels=world.render_image(rng, *attributes)))
            model("caption", Text(words), text=words)
        if kind == "picture":
            for attribute in rng.choice(list(QUESTIONS), size=_asked(rng, "picture", split), replace=False):
                question, reply = _follow_up(str(attribute), pictures[0], sentences)
                user(Text(question))
                model("follow-up", Text(reply), text=reply)
        else:
            attribute = str(rng.choice(["colour", "shape"]))
            question, reply = _follow_up(attribute, pictures[0], sentences)
            user(Text(question.replace("is it", "was the first picture")))
            reply = reply.replace("It is", "It was")
            model("follow-up", Text(reply), text=reply)
    elif kind == "clip":
        symbols = world.sample_symbols(rng)
        words = world.transcript(symbols)
        user(Text(TRANSCRIBE_PROMPT), Audio(waveform=world.render_dtmf(rng, symbols)))
        model("transcript", Text(words), text=words)
        questions = [("How many tones?", NUMBERS[len(symbols)], "There were {}."),
                     ("What was the first tone?", symbols[0], "It was {}."),
                     ("What was the last tone?", symbols[-1], "It was {}.")]
        for asked in rng.choice(len(questions), size=_asked(rng, "clip", split), replace=False):
            question, value, sentence = questions[asked]
            reply = sentence.format(value) if sentences else value
            user(Text(question))
            model("follow-up", Text(reply), text=reply)
    elif kind == "drawing":
        shape, colour, size, position = world.sample_attributes(rng, split)
        user(Text(f"{DRAW_PROMPT} {world.caption(shape, colour, size, position)}"))
        model("drawing", Image(pixels=world.render_image(rng, shape, colour, size, position)), drawn=(colour, position))
        moved = str(rng.choice([p for p in world.POSITIONS if p != position]))
        user(Text(f"Now draw it in the {moved}."))
        model("drawing", Image(pixels=world.render_image(rng, shape, colour, size, moved)), drawn=(colour, moved))
    elif kind == "video":
        frames, words = world.sample_clip(rng, split)
        user(Text(VIDEO_PROMPT), Video(frames=frames))
        model("video-caption", Text(words), text=words)
        question, reply = _what_happened(words, sentences)
        user(Text(question))
        model("video-follow-up", Text(reply), text=reply)
    else:
        raise ValueError(f"unknown conversation kind {kind!r}; expected one of {KINDS}")
    return turns, answers


def make_conversation(seed: int, split: str, index: int) -> tuple[list[Turn], list[Answer]]:
    """Conversation `index` of `split`: kinds take turns by index; the same arguments, the same arrays."""
    kinds = SPLIT_KINDS[split]
    rng = np.random.default_rng([seed, world.SPLITS.index(split), index, 1])  # a stream apart from the examples'
    return sample_conversation(rng, kinds[index % len(kinds)], split)


class WorldConversations:
    """A split's conversations as a random-access data source of indices (rendered by the reader)."""

    def __init__(self, seed: int, split: str, size: int):
        self.seed, self.split, self.size = seed, split, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return int(index)

    def read(self, index: int) -> tuple[str, list]:
        """A reader for the pipeline: (kind, segments) through the conversation template."""
        turns, _ = make_conversation(self.seed, self.split, index)
        return "conversation", conversation.segments(turns)
