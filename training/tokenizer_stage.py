"""The tokenizer stage: SentencePiece on the world's text, FSQ image and audio tokenizers on its
pictures and sounds; saved under `<workdir>/tokenizers/` (the layout: checkpoints.py, which loads
them back as one Vocabulary).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from checkpoints import TOKENIZER_DIR, save_tokenizer
from configs.base import Config
from data import world
from tokenization.text import TextTokenizer, train_text_tokenizer
from training import fit_audio_tokenizer, fit_image_tokenizer

HELD_OUT_SEED = 10_007  # evaluation renderings come from a seed the training stream never uses


def world_images(rng: np.random.Generator, batch_size: int, split: str = "train") -> np.ndarray:
    """A batch [B, 32, 32, 3] of fresh renderings: the image tokenizer never sees one twice."""
    return np.stack([world.render_image(rng, *world.sample_attributes(rng, split)) for _ in range(batch_size)])


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
        text = train_text_tokenizer(world.world_texts(cfg.data.seed, cfg.tokenizers.text_examples), cfg.model.text_vocab_size)
    text.save(root / "text.model")
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
