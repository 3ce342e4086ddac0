"""The tokenizer stage: SentencePiece on the world's text, FSQ image and audio tokenizers on its
pictures and sounds; saved under `<workdir>/tokenizers/` and loaded back as one Vocabulary.

    <workdir>/tokenizers/text.model      SentencePiece model
    <workdir>/tokenizers/image/          orbax checkpoint of the image tokenizer's parameters
    <workdir>/tokenizers/audio/          orbax checkpoint of the audio tokenizer's parameters
    <workdir>/tokenizers/metrics.json    what the stage measured (quality, seconds)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from configs.base import Config
from data import world
from data.segments import Text
from data.text_tokenizer import TextTokenizer, train_text_tokenizer
from data.vocab import Vocabulary
from model import audio_tokenizer, image_tokenizer
from model.audio_tokenizer import AudioTokenizer
from model.image_tokenizer import ImageTokenizer

TOKENIZER_DIR = "tokenizers"
HELD_OUT_SEED = 10_007  # evaluation renderings come from a seed the training stream never uses


def world_texts(seed: int, count: int) -> list[str]:
    """The text of `count` training examples: what SentencePiece learns its pieces from."""
    texts = []
    for index in range(count):
        _, segments = world.make_example(seed, "train", index)
        texts += [s.text for s in segments if isinstance(s, Text)]
    return texts


def world_images(rng: np.random.Generator, batch_size: int, split: str = "train") -> np.ndarray:
    """A batch [B, 32, 32, 3] of fresh renderings: the image tokenizer never sees one twice."""
    return np.stack([world.render_image(rng, *world.sample_attributes(rng, split)) for _ in range(batch_size)])


def tokenizers_exist(workdir: Path) -> bool:
    root = Path(workdir) / TOKENIZER_DIR
    return all((root / name).exists() for name in ("text.model", "image", "audio", "metrics.json"))


def train_tokenizers(cfg: Config, workdir: Path, log: Callable[[str], None] = print) -> dict:
    """Train all three tokenizers, measure them on held-out renderings, save them; returns the metrics."""
    root = Path(workdir).absolute() / TOKENIZER_DIR
    root.mkdir(parents=True, exist_ok=True)
    metrics: dict = {}
    start = time.perf_counter()

    t = time.perf_counter()
    if cfg.tokenizers.text_model:
        text = TextTokenizer.load(cfg.tokenizers.text_model)
    else:
        text = train_text_tokenizer(world_texts(cfg.data.seed, cfg.tokenizers.text_examples), cfg.model.text_vocab_size)
    text.save(root / "text.model")
    metrics["text"] = {"pieces": text.size, "seconds": time.perf_counter() - t}
    log(f"text tokenizer: {text.size} pieces in {metrics['text']['seconds']:.1f}s")

    image_cfg = cfg.tokenizers.image
    image_model, image_train = image_tokenizer.train_image_tokenizer(image_cfg, world_images, seed=cfg.train.seed)
    held_out = world_images(np.random.default_rng(HELD_OUT_SEED), cfg.tokenizers.eval_images, "validation")
    metrics["image"] = {**image_tokenizer.evaluate(image_model, held_out), "seconds": image_train["seconds"],
                        "steps": image_train["steps"]}
    _save(root / "image", image_model)
    log(f"image tokenizer: held-out PSNR {metrics['image']['psnr_db']:.2f} dB, "
        f"{metrics['image']['codes_used_fraction']:.0%} of codes in use, {image_train['seconds']:.0f}s")

    audio_cfg = cfg.tokenizers.audio
    audio_model, audio_train = audio_tokenizer.train_audio_tokenizer(audio_cfg, seed=cfg.train.seed)
    metrics["audio"] = {**audio_tokenizer.evaluate(audio_model, cfg.tokenizers.eval_clips, seed=HELD_OUT_SEED),
                        "seconds": audio_train["seconds"], "steps": audio_train["steps"]}
    _save(root / "audio", audio_model)
    log(f"audio tokenizer: round-tripped DTMF keys recovered at {metrics['audio']['symbol_accuracy']:.1%} "
        f"(whole sequences {metrics['audio']['sequence_accuracy']:.1%}), {audio_train['seconds']:.0f}s")

    metrics["seconds"] = time.perf_counter() - start
    (root / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"tokenizer stage: {metrics['seconds']:.0f}s")
    return metrics


def _save(path: Path, model: nnx.Module) -> None:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, nnx.state(model, nnx.Param), force=True)
    checkpointer.wait_until_finished()


def _restore(path: Path, make: Callable[[], nnx.Module]) -> nnx.Module:
    abstract = nnx.eval_shape(make)
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    # A whole copy on this process's first device: said explicitly, since orbax will not guess a
    # layout when the processes restoring differ from the one process that saved.
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), abstract_params)
    params = ocp.StandardCheckpointer().restore(path, abstract_params)
    return nnx.merge(graphdef, params, rest)


class _ImageCodec:
    """One image <-> its flat run of codes, as the Vocabulary asks; jitted over split state."""

    def __init__(self, model: ImageTokenizer):
        self.size = model.cfg.image_size
        graphdef, state = nnx.split(model)
        self._encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))
        self._decode = jax.jit(lambda s, c: nnx.merge(graphdef, s).decode(c, as_uint8=True))
        self.state, self.grid = state, model.cfg.grid_size
        self.length = self.grid * self.grid

    def encode(self, image) -> np.ndarray:
        pixels = image_tokenizer.prepare_image(image, self.size)
        return np.asarray(self._encode(self.state, pixels[None]))[0].reshape(-1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes).reshape(1, self.grid, self.grid)
        return np.asarray(self._decode(self.state, codes))[0]


class _AudioCodec:
    length = None  # clips of any length decode

    def __init__(self, model: AudioTokenizer):
        graphdef, state = nnx.split(model)
        self.cfg = model.cfg
        self._encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))
        self._decode = jax.jit(lambda s, c: nnx.merge(graphdef, s).decode(c))
        self.state = state

    def encode(self, waveform) -> np.ndarray:
        samples = audio_tokenizer.prepare_audio(waveform, self.cfg.sample_rate, self.cfg.max_seconds)
        return np.asarray(self._encode(self.state, samples[None]))[0].reshape(-1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(self._decode(self.state, np.asarray(codes).reshape(1, -1)))[0]


def load_vocabulary(cfg: Config, workdir: Path) -> Vocabulary:
    """The trained tokenizers of `workdir`, as one Vocabulary that encodes and decodes every modality."""
    root = Path(workdir).absolute() / TOKENIZER_DIR
    if not tokenizers_exist(workdir):
        raise FileNotFoundError(f"no trained tokenizers under {root}; run `python train.py --config {cfg.name} "
                                f"--workdir {workdir} --stage tokenizers`")
    text = TextTokenizer.load(root / "text.model")
    image = _restore(root / "image", lambda: ImageTokenizer(cfg.tokenizers.image, nnx.Rngs(0)))
    audio = _restore(root / "audio", lambda: AudioTokenizer(cfg.tokenizers.audio, nnx.Rngs(0)))
    return Vocabulary(text, cfg.model, image=_ImageCodec(image), audio=_AudioCodec(audio))


def untrained_vocabulary(cfg: Config) -> Vocabulary:
    """A vocabulary with nothing read from disk, for smoke tests (`serve.py --random-init`): the text
    tokenizer trained on a small sample of the world's text (seconds), image and audio tokenizers at
    their random initialisation (they encode and decode, meaninglessly)."""
    text = train_text_tokenizer(world_texts(cfg.data.seed, 2000), cfg.model.text_vocab_size)
    image = ImageTokenizer(cfg.tokenizers.image, nnx.Rngs(cfg.train.seed))
    audio = AudioTokenizer(cfg.tokenizers.audio, nnx.Rngs(cfg.train.seed))
    return Vocabulary(text, cfg.model, image=_ImageCodec(image), audio=_AudioCodec(audio))
