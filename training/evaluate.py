"""Held-out eval: every source's teacher-forced loss, and tasks answered through the serving engine.

    eval/<source>/loss/<modality>        mean next-token loss on the source's validation records,
                                         per modality of the trained tokens (HeldOutLoss)
    eval/<source>/text_bits_per_byte     the text's loss in bits per UTF-8 byte of the text
    eval/<source>/caption_accuracy       for a source of captioned pictures, transcribed clips or
    eval/<source>/caption_word_error_rate   captioned videos: the answer exact, and its word error rate
    eval/<source>/transcription_...
    eval/<source>/video_caption_...
    eval/caption_accuracy                validation pictures -> their caption, exact match
    eval/transcription_accuracy          validation DTMF clips -> "tones 1 2 3", exact match
    eval/drawing_accuracy                validation captions -> sampled image tokens -> pixels
                                         -> `world.detect_picture`: colour and position both right
    eval/compositional_caption_accuracy  pictures of (shape, colour) pairs never trained on -> caption
    eval/video_caption_accuracy          validation clips -> their caption, exact match, and by part:
    eval/video_shape_accuracy              the shapes it names (size, colour, shape) all right
    eval/video_motion_accuracy             what happens (the event and its places or new colour) right
    eval/compositional_video_caption_... clips whose first shape is a held-out pair, the same three
                                         (these when the world is in the mixture)
    eval/chat/<kind>_accuracy            SFT: the model's turns of held-out world conversations, each
                                         asked with the conversation so far: caption, transcript,
                                         follow_up (the turns after the first), drawing (the detector),
                                         video_caption, video_follow_up (what happened in the clip)

Prompts are the training templates with the answer left off, so the model is asked exactly what
it was taught to answer; the answer is whatever it generates up to its <eos>. The answers come
from the serving engine and its scheduler (serving/offline.py): the same weights preparation,
prefill, steps and sampler as the HTTP server, so the accuracy is that of what the server answers.
Text answers are greedy. Pictures are sampled (seeded, so repeatable): the shape's place is
jittered in training, so at any one patch "background" is likelier than "shape edge", and greedy
decoding draws an empty picture even for a model that knows where the shape goes.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from configs.base import DataConfig, MeshConfig, ModelConfig
from data import conversation, templates, world
from data.mixture import Mixture
from data.pipeline import held_out_batches, to_global
from data.segments import MODALITY_NAMES, Image, Text
from data.sources import read_world
from data.vocab import Vocabulary
from data.world_chat import make_conversation
from parallel.sharding import make_mesh
from serving.engine import Engine, SamplingParams
from serving.offline import generate
from tokenization.text import EOS
from training.scores import word_error_rate
from training.train_step import loss_and_metrics


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # the metric is eval/<name>_accuracy
    prompts: list[np.ndarray]  # token ids, <bos> first
    references: list  # a caption or transcript (text tasks); (colour, position) for drawing
    new_tokens: int  # enough for the longest right answer and its <eos>
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    word_error_rate: bool = False  # also report eval/<name>_word_error_rate (text references)
    end: str = EOS  # the symbol an answer ends at: <eos>, or <end_of_turn> in a conversation
    clip_parts: bool = False  # also report eval/<name minus "caption">{shape,motion}_accuracy (clip captions)


def world_tasks(splits: dict, vocab: Vocabulary, examples: int) -> list[Task]:
    """The six tasks over the first `examples` caption, audio and video examples of each held-out split.

    `splits` maps "validation" and "compositional" to random-access sources of world records.
    """
    captions, drawings, transcripts, compositional, clips, compositional_clips = [], [], [], [], [], []
    for kind, segments in _examples(splits["validation"], ("caption", "audio", "video"), examples):
        if kind == "caption":
            image, words = segments
            captions.append((templates.captioning(image, words.text)[:-1], words.text))
            drawings.append((templates.drawing(image, words.text)[:-1], world.parse_caption(words.text)))
        elif kind == "audio":
            audio, words = segments
            transcripts.append((templates.transcription(audio, words.text)[:-1], words.text))
        else:
            video, words = segments
            clips.append((templates.video_captioning(video, words.text)[:-1], words.text))
    for kind, segments in _examples(splits["compositional"], ("caption", "video"), examples):
        template = templates.captioning if kind == "caption" else templates.video_captioning
        (compositional if kind == "caption" else compositional_clips).append(
            (template(segments[0], segments[1].text)[:-1], segments[1].text))

    image_tokens = 2 + vocab.image.length  # <boi> codes <eoi>
    drawing = Task("drawing", [_prompt(vocab, p) for p, _ in drawings],
                   [(attributes[1], attributes[3]) for _, attributes in drawings], image_tokens + 1,
                   temperature=1.0, top_k=10)
    return [_text_task("caption", captions, vocab), _text_task("transcription", transcripts, vocab), drawing,
            _text_task("compositional_caption", compositional, vocab),
            dataclasses.replace(_text_task("video_caption", clips, vocab), clip_parts=True),
            dataclasses.replace(_text_task("compositional_video_caption", compositional_clips, vocab), clip_parts=True)]


def source_tasks(mixture: Mixture, vocab: Vocabulary, examples: int) -> list[Task]:
    """Captioning, transcription and video captioning tasks from every source but the world whose
    held-out records are captioned pictures, transcribed clips or captioned videos: its first
    `examples` of each, scored by exact match and word error rate."""
    tasks = []
    for stream, source in mixture.sources.items():
        name = mixture.source_of[stream]
        if name == "world":
            continue
        pairs = {"caption": [], "transcription": [], "video_caption": []}
        for index in range(min(len(source), 20 * examples)):  # a text-only source is not read to its end
            kind, segments = mixture.readers[stream](source[index])
            task, template = {"caption": ("caption", templates.captioning), "audio": ("transcription", templates.transcription),
                              "video": ("video_caption", templates.video_captioning)}.get(kind, (None, None))
            if task and len(pairs[task]) < examples:
                signal, words = segments
                pairs[task].append((template(signal, words.text)[:-1], words.text))
            if all(len(found) == examples for found in pairs.values()):
                break
        tasks += [_text_task(f"{name}/{task}", found, vocab, word_error_rate=True) for task, found in pairs.items() if found]
    return tasks


def held_out_tasks(held_out: Mixture, vocab: Vocabulary, examples: int, world: dict | None = None,
                   conversations: int = 0, seed: int = 0) -> list[Task]:
    """Every task an eval answers: each source's (source_tasks); with the world's splits, the world's
    six (world_tasks), `examples` of each; and, for SFT, the model's turns of the first
    `conversations` held-out world conversations (conversation_tasks), so that what tuning teaches
    is scored beside what pre-training taught."""
    tasks = source_tasks(held_out, vocab, examples)
    if world is not None:
        tasks = world_tasks(world, vocab, examples) + tasks
        if conversations:
            tasks = conversation_tasks(seed, vocab, conversations) + tasks
    return tasks


def conversation_tasks(seed: int, vocab: Vocabulary, examples: int) -> list[Task]:
    """The model's turns of the first `examples` held-out world conversations (data/world_chat.py),
    each asked with the conversation so far (the earlier turns as they were meant to go) and
    scored on its own, by what it is: the first picture's caption, the clip's transcript, a
    follow-up question (a turn after the first, the answer's form set by any system message), a drawing, a
    video clip's caption and what happened in it."""
    found: dict[str, list] = {"caption": [], "transcript": [], "follow-up": [], "drawing": [], "video-caption": [],
                              "video-follow-up": []}
    for index in range(examples):
        turns, expected = make_conversation(seed, "validation", index)
        for answer in expected:
            prompt = vocab.encode(conversation.segments(turns[: answer.turn], reply=True), bos=True, eos=False).ids
            found[answer.kind].append((prompt, answer.drawn if answer.kind == "drawing" else answer.text))
    image_tokens = 2 + vocab.image.length
    tasks = []
    for kind, pairs in found.items():
        if not pairs:
            continue
        name = f"chat/{kind.replace('-', '_')}"
        if kind == "drawing":
            tasks.append(Task(name, [p for p, _ in pairs], [r for _, r in pairs], image_tokens + 1, temperature=1.0,
                              top_k=10, end=conversation.END_OF_TURN))
        else:
            answer = max(len(vocab.text.encode(reference)) for _, reference in pairs)
            tasks.append(Task(name, [p for p, _ in pairs], [r for _, r in pairs], answer + 1,
                              end=conversation.END_OF_TURN))
    return tasks


def _text_task(name: str, pairs: list, vocab: Vocabulary, word_error_rate: bool = False) -> Task:
    answer = max(len(vocab.text.encode(reference)) for _, reference in pairs)
    return Task(name, [_prompt(vocab, p) for p, _ in pairs], [r for _, r in pairs], answer + 1,
                word_error_rate=word_error_rate)


def _examples(source, kinds: tuple[str, ...], count: int):
    """The first `count` records of each of `kinds` (caption and audio examples take turns by index)."""
    found = {kind: 0 for kind in kinds}
    for index in range(len(source)):
        kind, segments = read_world(source[index])
        if kind in found and found[kind] < count:
            found[kind] += 1
            yield kind, segments
        if all(n == count for n in found.values()):
            return
    raise ValueError(f"the eval split holds fewer than {count} examples of each of {kinds}: {found}; "
                     f"lower train.eval_examples")


def _prompt(vocab: Vocabulary, segments) -> np.ndarray:
    return vocab.encode(segments, bos=True, eos=False).ids


def answer_segments(vocab: Vocabulary, generated: np.ndarray, end: str = EOS) -> list:
    """What the model said: its tokens up to the first `end` symbol (or <eos>), as segments."""
    ends = np.nonzero((generated == vocab.ids[end]) | (generated == vocab.ids[EOS]))[0]
    return vocab.decode(generated[: ends[0]] if ends.size else generated)


def is_right(task: Task, answer: list, reference) -> bool:
    if task.name.endswith("drawing"):
        return (len(answer) == 1 and isinstance(answer[0], Image) and answer[0].pixels is not None
                and world.detect_picture(answer[0].pixels) == reference)
    return len(answer) == 1 and isinstance(answer[0], Text) and answer[0].text == reference


class Evaluator:
    """Answers the tasks with a model's current weights: an engine sized for the tasks is built at
    the first call (its programs compile once) and given new weights at each later one.

    On several processes each evaluates on its own devices from a gathered copy of the weights (the
    scheduler reads every step's tokens on the host), and all return the same accuracies.
    """

    def __init__(self, cfg: ModelConfig, vocab: Vocabulary, tasks: list[Task], mesh: jax.sharding.Mesh,
                 slots: int = 128, int8_weights: bool = False):
        self.cfg, self.vocab, self.tasks, self.int8_weights = cfg, vocab, tasks, int8_weights
        self.slots = min(slots, max(len(task.prompts) for task in tasks))
        self.cache_len = max(len(prompt) + task.new_tokens for task in tasks for prompt in task.prompts)
        self.mesh = mesh
        if jax.process_count() > 1:
            self.mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.local_devices()[:1])
        self.engine: Engine | None = None

    def __call__(self, graphdef: nnx.GraphDef, params: nnx.State) -> dict[str, float]:
        """{"eval/<task>_accuracy": share of right answers} for every task."""
        if jax.process_count() > 1:
            params = jax.device_put(multihost_utils.process_allgather(params, tiled=True), self.mesh.devices.flat[0])
        if self.engine is None:
            self.engine = Engine(self.cfg, graphdef, params, self.mesh, self.slots, self.cache_len,
                                 eos_id=self.vocab.ids[EOS], real_vocab=self.vocab.real_size,
                                 int8_weights=self.int8_weights, is_token=self.vocab.is_token())
        else:
            self.engine.load_weights(graphdef, params)
        return evaluate(self.engine, self.vocab, self.tasks)


def answers(engine: Engine, task: Task, vocab: Vocabulary) -> list[np.ndarray]:
    """The ids `engine` generates for each of the task's prompts (seeded by the prompt's index),
    stopping at <eos> or the task's end symbol, as the server's replies stop."""
    stop = () if task.end == EOS else (vocab.ids[task.end],)
    params = [SamplingParams(max_tokens=task.new_tokens, temperature=task.temperature, top_k=task.top_k or 0,
                             seed=index, stop_ids=stop) for index in range(len(task.prompts))]
    return generate(engine, task.prompts, params)


def evaluate(engine: Engine, vocab: Vocabulary, tasks: list[Task]) -> dict[str, float]:
    """{"eval/<task>_accuracy": share of right answers} for every task, answered by `engine`, and
    its word error rate where the task asks for one."""
    metrics = {}
    for task in tasks:
        said = [answer_segments(vocab, answer, task.end) for answer in answers(engine, task, vocab)]
        right = sum(is_right(task, answer, reference) for answer, reference in zip(said, task.references))
        metrics[f"eval/{task.name}_accuracy"] = right / len(task.prompts)
        texts = [answer[0].text if len(answer) == 1 and isinstance(answer[0], Text) else "" for answer in said]
        if task.word_error_rate:
            metrics[f"eval/{task.name}_word_error_rate"] = word_error_rate(texts, task.references)
        if task.clip_parts:
            metrics.update(clip_part_accuracy(task.name.removesuffix("caption"), texts, task.references))
    return metrics


def clip_part_accuracy(prefix: str, texts: list[str], references: list[str]) -> dict[str, float]:
    """The share of clip captions whose shapes (size, colour, shape of each one named) are right,
    and whose motion (the event, with the places it moves between or the new colour) is right."""
    said = [world.parse_clip_caption(text) for text in texts]
    meant = [world.parse_clip_caption(reference) for reference in references]
    shape = sum(s is not None and s[1] == m[1] for s, m in zip(said, meant))
    motion = sum(s is not None and (s[0], s[2]) == (m[0], m[2]) for s, m in zip(said, meant))
    return {f"eval/{prefix}shape_accuracy": shape / len(texts), f"eval/{prefix}motion_accuracy": motion / len(texts)}


class HeldOutLoss:
    """Teacher-forced loss on every source's held-out records, per modality, with the training's
    own loss (z-loss left out) on the training mesh. The rows are built once (data/pipeline.py,
    `held_out_batches`: the first `examples` records of each stream) and are the same at every
    eval. Every process builds all of them and feeds its share of each batch's rows."""

    def __init__(self, mixture: Mixture, vocab: Vocabulary, cfg: DataConfig, mesh: jax.sharding.Mesh, examples: int):
        self.mesh, self.graphdef, self._sums = mesh, None, None
        self.sources: dict[str, tuple[list[dict], int]] = {}
        for stream, source in mixture.sources.items():
            batches, text_bytes = held_out_batches(source, mixture.readers[stream], vocab, cfg, examples)
            name = mixture.source_of[stream]
            before, before_bytes = self.sources.get(name, ([], 0))
            self.sources[name] = (before + batches, before_bytes + text_bytes)

    def __call__(self, graphdef: nnx.GraphDef, params: nnx.State) -> dict[str, float]:
        if self._sums is None:
            self._sums = jax.jit(lambda p, batch: loss_and_metrics(graphdef, p, batch, 0.0)[1])
        metrics = {}
        rows = slice(jax.process_index(), None, jax.process_count())  # this process's share, as to_global takes it
        for name, (batches, text_bytes) in self.sources.items():
            totals: dict[str, float] = {}
            for batch in batches:
                sums = self._sums(params, to_global({k: v[rows] for k, v in batch.items()}, self.mesh))
                for key, value in sums.items():
                    totals[key] = totals.get(key, 0.0) + float(value)
            for modality in MODALITY_NAMES:
                if totals.get(f"{modality}_tokens"):
                    metrics[f"eval/{name}/loss/{modality}"] = totals[f"{modality}_nll_sum"] / totals[f"{modality}_tokens"]
            if text_bytes and totals.get("text_tokens"):
                metrics[f"eval/{name}/text_bits_per_byte"] = totals["text_nll_sum"] / math.log(2) / text_bytes
        return metrics
