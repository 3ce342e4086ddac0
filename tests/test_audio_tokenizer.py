"""The audio tokenizer: front end shapes, input preparation, the Griffin-Lim back end, and learning."""

import dataclasses
import io
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data.world import detect_dtmf, render_dtmf, sample_symbols
from configs.tokenizers import AudioTokenizerConfig
from data.media import prepare_audio
from tokenization.audio import AudioTokenizer, istft, log_mel, mel_to_waveform, stft
from training.fit_audio_tokenizer import edit_distance, train_audio_tokenizer

TINY = AudioTokenizerConfig.tiny()


def _tone(hz: float, rate: int, seconds: float = 0.5) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def _peak_hz(audio: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        writer.setsampwidth(samples.dtype.itemsize)
        writer.setframerate(rate)
        writer.writeframes(samples.tobytes())
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Shapes


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
# Inputs from the outside world


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_resampling_keeps_a_tone_on_its_frequency(rate):
    audio = prepare_audio(_tone(1000.0, rate), rate)
    assert audio.dtype == np.float32 and abs(len(audio) - 8000) <= 1
    assert abs(_peak_hz(audio) - 1000.0) <= 2.0


def test_stereo_int16_and_wav_bytes_become_float_mono():
    left, right = _tone(440.0, 16000), np.zeros(8000, np.float32)
    stereo_int16 = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)
    from_array = prepare_audio(stereo_int16, 16000)
    np.testing.assert_allclose(from_array, left / 2, atol=1e-4)  # channels averaged, scaled to [-1, 1]
    from_wav = prepare_audio(_wav_bytes(stereo_int16, 16000))
    np.testing.assert_array_equal(from_wav, from_array)
    from_wav_48k = prepare_audio(_wav_bytes(np.round(_tone(440.0, 48000) * 32767).astype(np.int16), 48000))
    assert len(from_wav_48k) == 8000 and abs(_peak_hz(from_wav_48k) - 440.0) <= 2.0
    from_uint8 = prepare_audio(np.round(left * 127 + 128).astype(np.uint8), 16000)
    np.testing.assert_allclose(from_uint8, left, atol=1e-2)


@pytest.mark.parametrize(
    "audio, rate, message",
    [
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.zeros((0, 2), np.int16), 16000, "empty"),
        (np.zeros(16000 * 31, np.float32), 16000, r"too long: 31\.00 s .* > max_seconds=30"),
        (b"definitely not a wav file", None, "could not decode audio bytes"),
        (np.zeros((2, 16000), np.float32), 16000, r"transpose"),
        (np.full(100, np.nan, np.float32), 16000, "non-finite"),
        (np.zeros(100, np.float32), None, "sample_rate is required"),
    ],
)
def test_bad_audio_raises_a_clear_error(audio, rate, message):
    with pytest.raises(ValueError, match=message):
        prepare_audio(audio, rate)


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


def test_short_training_halves_the_mel_error():
    cfg = dataclasses.replace(AudioTokenizerConfig(), batch_size=16, warmup_steps=10)
    _, metrics = train_audio_tokenizer(cfg, steps=60, seed=0)
    assert metrics["final_loss"] < 0.5 * metrics["initial_loss"], metrics["losses"]
