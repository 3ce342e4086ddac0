"""The audio tokenizer: front end shapes, the Griffin-Lim back end, and learning.
(Preparing input audio is data/media.py's, tested in test_media.py.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data.world import detect_dtmf, render_dtmf, sample_symbols
from configs.tokenizers import AudioTokenizerConfig
from tokenization.audio import AudioCodec, AudioTokenizer, istft, log_mel, mel_to_waveform, stft
from training.fit_audio_tokenizer import train_audio_tokenizer
from training.scores import edit_distance

TINY = AudioTokenizerConfig.tiny()


# ---------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.slow  # compiles encode and decode: ~10 s
def test_one_second_is_100_frames_and_25_tokens():
    clip = render_dtmf(np.random.default_rng(0), "159")
    assert log_mel(clip, TINY).shape == (1, 100, TINY.n_mels)
    assert TINY.tokens_per_second == 25
    graphdef, params = nnx.split(AudioTokenizer(TINY, nnx.Rngs(0)))
    encode = jax.jit(lambda params, x: nnx.merge(graphdef, params).encode(x))
    decode = jax.jit(lambda params, codes: nnx.merge(graphdef, params).decode(codes))
    codes = encode(params, np.stack([clip, clip]))
    assert codes.shape == (2, 25) and codes.dtype == jnp.int32
    assert 0 <= int(codes.min()) and int(codes.max()) < TINY.codebook_size == 1000
    assert encode(params, clip[:8000]).shape == (1, 13)  # half a second pads up to whole tokens
    waveform = decode(params, codes)
    assert waveform.shape == (2, 16000) and waveform.dtype == jnp.float32


@pytest.mark.slow  # builds and runs the tokenizer eagerly: ~7 s
def test_codes_carry_everything_the_decoder_sees():
    """The training path and encode -> decode_log_mel agree: no information skips the quantizer."""
    model = AudioTokenizer(TINY, nnx.Rngs(0))
    clips = np.stack([render_dtmf(np.random.default_rng(i), "1A") for i in range(2)])
    recon, target = model(clips)
    np.testing.assert_allclose(model.decode_log_mel(model.encode(clips)), recon, atol=1e-4)
    np.testing.assert_allclose(target, log_mel(clips, TINY), atol=1e-5)


def test_istft_inverts_stft():
    audio = jnp.asarray(render_dtmf(np.random.default_rng(1), "0#")[None])
    np.testing.assert_allclose(istft(stft(audio, TINY), TINY, audio.shape[1]), audio, atol=1e-5)


def test_scale_config_builds_abstractly():
    cfg = AudioTokenizerConfig.for_scale()
    assert cfg.codebook_size == 15360 and cfg.tokens_per_second == 25
    abstract = nnx.eval_shape(lambda: AudioTokenizer(cfg, nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    assert sum(x.size for x in jax.tree.leaves(params)) > 5_000_000


def test_tokenizer_rejects_mel_bands_narrower_than_fft_bins():
    with pytest.raises(ValueError, match="mel bands fall between FFT bins"):
        AudioTokenizer(AudioTokenizerConfig(n_mels=128), nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------
# The back end and learning


def test_griffin_lim_from_the_true_mel_keeps_the_keys():
    """The mel inversion and phase recovery alone (default config, no network) preserve DTMF."""
    cfg = AudioTokenizerConfig()
    rng = np.random.default_rng(3)
    symbols = [sample_symbols(rng) for _ in range(8)]
    clips = np.stack([render_dtmf(rng, s) for s in symbols])
    audio = np.asarray(jax.jit(lambda x: mel_to_waveform(log_mel(x, cfg), cfg))(clips))
    assert [detect_dtmf(a) for a in audio] == symbols


def test_edit_distance_counts_a_repeated_key_once():
    assert edit_distance("159", "1159") == 1 and edit_distance("159", "19") == 1 and edit_distance("159", "159") == 0


@pytest.mark.slow  # trains
def test_short_training_halves_the_mel_error():
    cfg = dataclasses.replace(AudioTokenizerConfig(), batch_size=16, warmup_steps=10)
    _, metrics = train_audio_tokenizer(cfg, steps=60, seed=0)
    assert metrics["final_loss"] < 0.5 * metrics["initial_loss"], metrics["losses"]


def test_clips_of_any_length_share_a_few_compiled_shapes_and_keep_their_own_codes():
    """The codec pads a clip to a bucket of lengths (powers of two in tokens) and masks the padding,
    so a server compiles once per bucket, not once per length, and the codes are the clip's alone."""
    cfg = AudioTokenizerConfig()
    model = AudioTokenizer(cfg, nnx.Rngs(1))
    codec = AudioCodec(model)
    graphdef, state = nnx.split(model)
    exact = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))  # the clip alone, unpadded
    rng = np.random.default_rng(0)
    lengths = [1000, 7000, 8500, 9000, 9601, 12800, 20000, 25000, 31000]  # 2 to 49 tokens
    clips = [rng.standard_normal(n).astype(np.float32) * 0.3 for n in lengths]
    for clip in clips:
        np.testing.assert_array_equal(codec.encode(clip), np.asarray(exact(state, clip[None]))[0])
    batched = codec.encode_batch(clips, batch_size=4)
    for clip, codes in zip(clips, batched):
        np.testing.assert_array_equal(codes, codec.encode(clip))
    assert codec._encode._cache_size() == 4 * 2  # 9 lengths, buckets of 2, 16, 32 and 64 tokens; batches of 1 and 4
