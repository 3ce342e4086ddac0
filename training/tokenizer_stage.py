"""The tokenizer stage: SentencePiece on the mixture's text, FSQ image and audio tokenizers on its
pictures and sounds; saved under `<workdir>/tokenizers/` (the layout: checkpoints.py, which loads
them back as one Vocabulary).

On the world alone (the default) the tokenizers see fresh renderings and tones, never one twice,
and are measured on held-out ones. A mixture without pictures (or sound) trains that tokenizer on
the world's renderings (or tones), so every run has all three. On any other mixture (data/mixture.py) they train on its
training records, drawn by the sources' weights: pictures at the image tokenizer's size (the
largest centred square, resized: data/media.py), sound as random windows of `audio.train_seconds`
(shorter clips zero-padded). They are measured on the validation records: image PSNR and
codebook use, audio log-mel error and codebook use (and, for the world's tones, the keys heard back).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from checkpoints import TOKENIZER_DIR, save_tokenizer
from configs.base import Config
from data import world
from data.media import prepare_image
from data.mixture import Mixture, make_sources, open_mixture
from data.segments import AUDIO, IMAGE, TEXT, VIDEO, Image
from open_weights.load import hf_folder, text_tokenizer
from tokenization.text import TextTokenizer, train_text_tokenizer
from training import fit_audio_tokenizer, fit_image_tokenizer

HELD_OUT_SEED = 10_007  # evaluation renderings come from a seed the training stream never uses


def world_images(rng: np.random.Generator, batch_size: int, split: str = "train") -> np.ndarray:
    """A batch [B, 32, 32, 3] of fresh renderings: the image tokenizer never sees one twice. A
    quarter are frames of clips, which hold shapes between quadrants and two shapes at once."""
    clips = batch_size // 4
    frames = [world.sample_clip(rng, split)[0][rng.integers(world.FRAMES)] for _ in range(clips)]
    return np.stack([world.render_image(rng, *world.sample_attributes(rng, split)) for _ in range(batch_size - clips)]
                    + frames)


class MixtureMedia:
    """Pictures, clips and texts drawn from a mixture's records by the sources' weights, at random
    (seeded): a source of batches for the tokenizers' `fit`. Streams that hold none of a modality
    (found by reading records) are not drawn for it again."""

    def __init__(self, mixture: Mixture, image_size: int, clip_samples: int):
        self.mixture, self.image_size, self.clip_samples = mixture, image_size, clip_samples
        self.empty: dict[str, set] = {"image": set(), "audio": set()}

    def _draw(self, rng: np.random.Generator, modality: str, count: int, tries: int = 64) -> list:
        streams = [s for s in self.mixture.sources if s not in self.empty[modality]]
        found, misses = [], {s: 0 for s in streams}
        while len(found) < count:
            streams = [s for s in streams if misses[s] < tries]
            if not streams:
                raise ValueError(f"no record of the data mixture holds {'a picture' if modality == 'image' else 'sound'}")
            weights = np.array([self.mixture.weights[s] for s in streams])
            stream = streams[rng.choice(len(streams), p=weights / weights.sum())]
            source = self.mixture.sources[stream]
            _, segments = self.mixture.readers[stream](source[int(rng.integers(len(source)))])
            signals = [s for s in segments if s.modality == (IMAGE if modality == "image" else AUDIO)]
            signals += [Image(pixels=frame) for s in segments if s.modality == VIDEO and modality == "image"
                        for frame in s.frames]
            misses[stream] = 0 if signals else misses[stream] + 1
            if misses[stream] == tries:
                self.empty[modality].add(stream)
            found += signals
        return found[:count]

    def holds(self, modality: str) -> bool:
        """Whether any record of the mixture holds a picture ("image") or sound ("audio")."""
        try:
            self._draw(np.random.default_rng(0), modality, 1)
            return True
        except ValueError:
            return False

    def images(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        return np.stack([prepare_image(s.pixels, self.image_size) for s in self._draw(rng, "image", batch_size)])

    def clips(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        return np.stack([window(s.waveform, self.clip_samples, rng) for s in self._draw(rng, "audio", batch_size)])


def window(waveform: np.ndarray, samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """`samples` of a clip: a random window of a longer one (the first, without `rng`), a shorter one zero-padded."""
    if len(waveform) <= samples:
        return np.pad(waveform, (0, samples - len(waveform))).astype(np.float32)
    start = int(rng.integers(len(waveform) - samples + 1)) if rng is not None else 0
    return waveform[start : start + samples].astype(np.float32)


def held_out_media(mixture: Mixture, modality: int, count: int) -> list:
    """Up to `count` pictures or clips from the held-out records, in order (the same at every call)."""
    found = []
    for stream, source in mixture.sources.items():
        for index in range(min(len(source), 4 * count)):
            found += [s for s in mixture.readers[stream](source[index])[1] if s.modality == modality]
            if len(found) >= count:
                return found[:count]
    return found


def mixture_texts(cfg: Config, mixture: Mixture, count: int) -> list[str]:
    """About `count` texts for SentencePiece, each source giving its weight's share: the world its
    generated texts, any other source the text parts of its first records."""
    total = sum(mixture.weights.values())
    by_source: dict[str, float] = {}
    for stream, weight in mixture.weights.items():
        by_source[mixture.source_of[stream]] = by_source.get(mixture.source_of[stream], 0.0) + weight / total
    texts = []
    for name, share in by_source.items():
        want = max(1, round(count * share))
        if name == "world":
            texts += world.world_texts(cfg.data.seed, want)
            continue
        for stream in [s for s, n in mixture.source_of.items() if n == name]:
            source, reader = mixture.sources[stream], mixture.readers[stream]
            for index in range(min(len(source), want)):
                texts += [s.text for s in reader(source[index])[1] if s.modality == TEXT]
    return texts


def train_tokenizers(cfg: Config, workdir: Path, log: Callable[[str], None] = print) -> dict:
    """Train all three tokenizers on the configured mixture, measure them on held-out data, save them;
    returns the metrics."""
    if [spec.kind for spec in cfg.data.source_specs()] == ["world"]:
        return _train_on_world(cfg, workdir, log)
    make_sources(cfg.data, workdir, log)
    train = open_mixture(cfg, workdir, "train", raw=True)
    held_out = open_mixture(cfg, workdir, "validation", raw=True)
    root = Path(workdir).absolute() / TOKENIZER_DIR
    root.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"sources": sorted(set(train.source_of.values()))}
    start = time.perf_counter()

    t = time.perf_counter()
    text = _text_tokenizer(cfg, lambda: mixture_texts(cfg, train, cfg.tokenizers.text_examples))
    text.save(root / text.FILE)
    metrics["text"] = {"pieces": text.size, "seconds": time.perf_counter() - t}
    log(f"text tokenizer: {text.size} pieces in {metrics['text']['seconds']:.1f}s")

    image_cfg, audio_cfg = cfg.tokenizers.image, cfg.tokenizers.audio
    clip_samples = round(audio_cfg.train_seconds * audio_cfg.sample_rate)
    media = MixtureMedia(train, image_cfg.image_size, clip_samples)
    images = media.images if media.holds("image") else world_images  # a mixture without pictures: the world's
    image_model, image_train = fit_image_tokenizer.train_image_tokenizer(image_cfg, images, seed=cfg.train.seed)
    held_images = held_out_media(held_out, IMAGE, cfg.tokenizers.eval_images) or held_out_media(train, IMAGE, 64)
    metrics["image"] = {"seconds": image_train["seconds"], "steps": image_train["steps"], "held_out": len(held_images)}
    if held_images:
        pixels = np.stack([prepare_image(s.pixels, image_cfg.image_size) for s in held_images])
        metrics["image"].update(fit_image_tokenizer.evaluate(image_model, pixels))
    save_tokenizer(root / "image", image_model)
    log(f"image tokenizer: held-out PSNR {metrics['image'].get('psnr_db', float('nan')):.2f} dB over "
        f"{len(held_images)} pictures, {metrics['image'].get('codes_used_fraction', 0):.0%} of codes in use, "
        f"{image_train['seconds']:.0f}s")

    clips = media.clips if media.holds("audio") else None  # None: the world's tones
    audio_model, audio_train = fit_audio_tokenizer.train_audio_tokenizer(audio_cfg, clips, seed=cfg.train.seed)
    held_clips = held_out_media(held_out, AUDIO, cfg.tokenizers.eval_clips) or held_out_media(train, AUDIO, 64)
    metrics["audio"] = {"seconds": audio_train["seconds"], "steps": audio_train["steps"], "held_out": len(held_clips)}
    if held_clips:
        metrics["audio"].update(fit_audio_tokenizer.evaluate_clips(
            audio_model, np.stack([window(s.waveform, clip_samples) for s in held_clips])))
    save_tokenizer(root / "audio", audio_model)
    log(f"audio tokenizer: held-out log-mel error {metrics['audio'].get('mel_l1', float('nan')):.3f} over "
        f"{len(held_clips)} clips, {metrics['audio'].get('codes_used_fraction', 0):.0%} of codes in use, "
        f"{audio_train['seconds']:.0f}s")

    metrics["seconds"] = time.perf_counter() - start
    (root / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"tokenizer stage: {metrics['seconds']:.0f}s")
    return metrics


def _text_tokenizer(cfg: Config, texts: Callable[[], Iterable[str]]) -> TextTokenizer:
    """The imported checkpoint's SentencePiece model extended (open_weights/vocabulary.py), a user's
    model (tokenizers.text_model), or one trained on `texts()`."""
    if cfg.train.init_from:
        return text_tokenizer(hf_folder(cfg.train.init_from))
    if cfg.tokenizers.text_model:
        return TextTokenizer.load(cfg.tokenizers.text_model)
    return train_text_tokenizer(texts(), cfg.model.text_vocab_size)


def _train_on_world(cfg: Config, workdir: Path, log: Callable[[str], None]) -> dict:
    """The world alone: fresh renderings and tones for training, held-out ones for measuring."""
    root = Path(workdir).absolute() / TOKENIZER_DIR
    root.mkdir(parents=True, exist_ok=True)
    metrics: dict = {}
    start = time.perf_counter()

    t = time.perf_counter()
    text = _text_tokenizer(cfg, lambda: world.world_texts(cfg.data.seed, cfg.tokenizers.text_examples))
    text.save(root / text.FILE)
    metrics["text"] = {"pieces": text.size, "seconds": time.perf_counter() - t}
    log(f"text tokenizer: {text.size} pieces in {metrics['text']['seconds']:.1f}s")

    image_cfg = cfg.tokenizers.image
    image_model, image_train = fit_image_tokenizer.train_image_tokenizer(image_cfg, world_images, seed=cfg.train.seed)
    held_out = world_images(np.random.default_rng(HELD_OUT_SEED), cfg.tokenizers.eval_images, "validation")
    metrics["image"] = {**fit_image_tokenizer.evaluate(image_model, held_out), "seconds": image_train["seconds"],
                        "steps": image_train["steps"]}
    save_tokenizer(root / "image", image_model)
    log(f"image tokenizer: held-out PSNR {metrics['image']['psnr_db']:.2f} dB, "
        f"{metrics['image']['codes_used_fraction']:.0%} of codes in use, {image_train['seconds']:.0f}s")

    audio_cfg = cfg.tokenizers.audio
    audio_model, audio_train = fit_audio_tokenizer.train_audio_tokenizer(audio_cfg, seed=cfg.train.seed)
    metrics["audio"] = {**fit_audio_tokenizer.evaluate(audio_model, cfg.tokenizers.eval_clips, seed=HELD_OUT_SEED),
                        "seconds": audio_train["seconds"], "steps": audio_train["steps"]}
    save_tokenizer(root / "audio", audio_model)
    log(f"audio tokenizer: round-tripped DTMF keys recovered at {metrics['audio']['symbol_accuracy']:.1%} "
        f"(whole sequences {metrics['audio']['sequence_accuracy']:.1%}), {audio_train['seconds']:.0f}s")

    metrics["seconds"] = time.perf_counter() - start
    (root / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"tokenizer stage: {metrics['seconds']:.0f}s")
    return metrics
