"""Fitting the audio tokenizer (tokenization/audio.py) and measuring it: reconstruction loss, the
optimizer, the training run on DTMF clips, and how many keys survive a round trip."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs.tokenizers import AudioTokenizerConfig
from data.world import detect_dtmf, render_dtmf, sample_symbols
from tokenization.audio import AudioTokenizer, mel_to_waveform
from training.autoencoder import fit, warmup_cosine_adam
from training.scores import edit_distance


def dtmf_clips(rng: np.random.Generator, batch_size: int) -> np.ndarray:
    """A batch [B, 16000] of fresh DTMF clips from the procedural world (train-split style)."""
    return np.stack([render_dtmf(rng, sample_symbols(rng)) for _ in range(batch_size)])


def reconstruction_loss(graphdef: nnx.GraphDef, params: nnx.State, waveform_bn, l2_weight: float):
    """Mean absolute log-mel error (nats) + optional squared error, and the absolute error alone."""
    recon_btm, target_btm = nnx.merge(graphdef, params)(waveform_bn)
    error_btm = recon_btm - target_btm
    l1 = jnp.mean(jnp.abs(error_btm))
    return l1 + l2_weight * jnp.mean(error_btm**2), {"mel_l1": l1}


def make_optimizer(cfg: AudioTokenizerConfig, steps: int) -> optax.GradientTransformation:
    return warmup_cosine_adam(cfg.learning_rate, cfg.warmup_steps, steps)


def train_audio_tokenizer(
    cfg: AudioTokenizerConfig,
    clips=None,
    steps: int | None = None,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
) -> tuple[AudioTokenizer, dict]:
    """Train from scratch; returns the model and training.autoencoder.fit's metrics (loss = mel L1 [+ L2]).

    `clips`: float waveforms at 16 kHz as an array [N, samples], a sampler `fn(rng, batch_size)`,
    or an iterator of batches; by default fresh DTMF clips from the procedural world. The step is a
    pure jitted function over the split state, donating params and optimizer state.
    """
    steps = cfg.steps if steps is None else steps
    model = AudioTokenizer(cfg, nnx.Rngs(seed))
    loss_fn = functools.partial(reconstruction_loss, l2_weight=cfg.l2_weight)
    return fit("audio tokenizer", model, loss_fn, make_optimizer(cfg, steps), dtmf_clips if clips is None else clips,
               cfg.batch_size, steps, seed, log, log_every=25)


@functools.partial(jax.jit, static_argnums=0)
def _roundtrip(graphdef, params, waveform_bn):
    model = nnx.merge(graphdef, params)
    codes_bt = model.encode(waveform_bn)
    recon_btm = model.decode_log_mel(codes_bt)
    mel_l1 = jnp.mean(jnp.abs(recon_btm - model.log_mel(waveform_bn)), axis=(1, 2))
    return codes_bt, mel_l1, mel_to_waveform(recon_btm, model.cfg)


def evaluate_clips(model: AudioTokenizer, clips: np.ndarray, batch_size: int = 50) -> dict:
    """Round-trip clips [N, samples] to codes and back: mean log-mel L1 (nats) between each clip and
    its reconstruction, and the share of the codebook in use."""
    graphdef, params = nnx.split(model, nnx.Param)
    seen, mel_l1 = np.zeros(model.fsq.codebook_size, bool), []
    for i in range(0, len(clips), batch_size):
        codes, l1, _ = _roundtrip(graphdef, params, clips[i : i + batch_size])
        seen[np.asarray(codes).ravel()] = True
        mel_l1.extend(np.asarray(l1).tolist())
    return {"mel_l1": float(np.mean(mel_l1)), "codes_used_fraction": float(seen.mean()), "num_clips": len(clips)}


def evaluate(model: AudioTokenizer, num_clips: int = 200, seed: int = 12345, batch_size: int = 50) -> dict:
    """Round-trip fresh DTMF clips (audio -> codes -> waveform) and read the keys back with the
    world's frequency detector.

    Returns sequence accuracy (the whole key string right), symbol accuracy (1 - symbol error
    rate: edit distance over the true keys, so a key heard twice counts one error, not a shifted
    tail), the same two for the original clips (the detector's own ceiling), mean log-mel L1
    (nats) between the clips and their reconstructions, and the fraction of the codebook in use.
    """
    rng = np.random.default_rng(seed)
    symbols = [sample_symbols(rng) for _ in range(num_clips)]
    clips = np.stack([render_dtmf(rng, s) for s in symbols])
    graphdef, params = nnx.split(model, nnx.Param)
    seen = np.zeros(model.fsq.codebook_size, bool)
    heard, mel_l1 = [], []
    for i in range(0, num_clips, batch_size):
        codes, l1, recon = _roundtrip(graphdef, params, clips[i : i + batch_size])
        seen[np.asarray(codes).ravel()] = True
        mel_l1.extend(np.asarray(l1).tolist())
        heard.extend(detect_dtmf(np.asarray(r), model.cfg.sample_rate) for r in recon)

    def accuracies(found):
        exact = np.mean([f == s for f, s in zip(found, symbols)])
        errors = sum(edit_distance(s, f) for f, s in zip(found, symbols))
        return float(exact), 1.0 - errors / sum(len(s) for s in symbols)

    sequence_accuracy, symbol_accuracy = accuracies(heard)
    original_sequence, original_symbol = accuracies([detect_dtmf(c, model.cfg.sample_rate) for c in clips])
    return {
        "sequence_accuracy": sequence_accuracy, "symbol_accuracy": symbol_accuracy,
        "original_sequence_accuracy": original_sequence, "original_symbol_accuracy": original_symbol,
        "mel_l1": float(np.mean(mel_l1)), "codes_used_fraction": float(seen.mean()), "num_clips": num_clips,
    }
