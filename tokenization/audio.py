"""The audio tokenizer: waveform -> log-mel -> 1-D conv encoder -> FSQ -> conv decoder -> log-mel
-> Griffin-Lim -> waveform.

16 kHz mono becomes a log-mel spectrogram with a 10 ms hop (100 frames a second); the encoder
halves time twice, so a second of audio is 25 codes in [0, prod(levels)). The decoder predicts
the log-mel back; a waveform comes from the mel by inverting the filterbank (least squares, kept
non-negative) and recovering a phase by Griffin-Lim. Nothing in the back end is learned, so it can
be checked on true spectrograms apart from the network.

FSQ (tokenization/fsq.py) needs no codebook loss: training is log-mel reconstruction alone (L1 plus
squared error).
Like the image tokenizer, time resolution changes are space-to-depth around a 1x1 conv.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.tokenizers import AudioTokenizerConfig
from data.media import prepare_audio
from model.weights import param
from parallel.sharding import constrain
from tokenization.fsq import FSQ

# ---------------------------------------------------------------------------------------------
# The signal path: STFT, mel filterbank, Griffin-Lim (no parameters)


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(cfg: AudioTokenizerConfig) -> np.ndarray:
    """HTK-mel triangles [n_mels, n_fft // 2 + 1], each peaking at 1 on its centre frequency."""
    hz_f = np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    low_m, centre_m, high_m = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising_mf = (hz_f - low_m) / (centre_m - low_m)
    falling_mf = (high_m - hz_f) / (high_m - centre_m)
    return np.maximum(0.0, np.minimum(rising_mf, falling_mf)).astype(np.float32)


def _window(cfg: AudioTokenizerConfig) -> np.ndarray:
    """A periodic Hann window of `window` samples, centred in `n_fft`."""
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.window) / cfg.window)
    start = (cfg.n_fft - cfg.window) // 2
    out = np.zeros(cfg.n_fft, np.float32)
    out[start : start + cfg.window] = hann
    return out


def _frame_index(cfg: AudioTokenizerConfig, num_frames: int) -> np.ndarray:
    return np.arange(num_frames)[:, None] * cfg.hop + np.arange(cfg.n_fft)


def stft(waveform_bn: jax.Array, cfg: AudioTokenizerConfig) -> jax.Array:
    """[B, N] -> complex [B, N // hop, n_fft // 2 + 1]. Frame t is centred on samples
    [t * hop, (t + 1) * hop) (zero padding at both ends), so a clip of N samples has N / hop frames."""
    pad = (cfg.n_fft - cfg.hop) // 2
    padded_bn = jnp.pad(waveform_bn, ((0, 0), (pad, pad)))
    frames_btn = padded_bn[:, _frame_index(cfg, waveform_bn.shape[-1] // cfg.hop)]
    return jnp.fft.rfft(frames_btn * _window(cfg), axis=-1)


def istft(spectrum_btf: jax.Array, cfg: AudioTokenizerConfig, num_samples: int) -> jax.Array:
    """The least-squares inverse of `stft`: windowed overlap-add over the summed squared window."""
    batch, num_frames = spectrum_btf.shape[:2]
    pad = (cfg.n_fft - cfg.hop) // 2
    frames_btn = jnp.fft.irfft(spectrum_btf, n=cfg.n_fft, axis=-1) * _window(cfg)
    index = _frame_index(cfg, num_frames).ravel()
    length = num_frames * cfg.hop + 2 * pad
    summed_bn = jnp.zeros((batch, length), frames_btn.dtype).at[:, index].add(frames_btn.reshape(batch, -1))
    window_power_n = np.zeros(length, np.float64)
    np.add.at(window_power_n, index, np.tile(_window(cfg).astype(np.float64) ** 2, num_frames))
    waveform_bn = summed_bn / np.maximum(window_power_n, 1e-3).astype(np.float32)
    return waveform_bn[:, pad : pad + num_samples]


def log_mel(waveform_bn: jax.Array, cfg: AudioTokenizerConfig) -> jax.Array:
    """float waveform [B, N] (or [N]) -> log(mel magnitude + floor) [B, N // hop, n_mels]."""
    waveform_bn = jnp.asarray(waveform_bn, jnp.float32)
    if waveform_bn.ndim == 1:
        waveform_bn = waveform_bn[None]
    magnitude_btf = jnp.abs(stft(waveform_bn, cfg))
    mel_btm = jnp.einsum("btf,mf->btm", magnitude_btf, mel_filterbank(cfg))
    return jnp.log(mel_btm + cfg.log_floor)


def mel_to_magnitude(log_mel_btm: jax.Array, cfg: AudioTokenizerConfig) -> jax.Array:
    """Log-mel -> linear STFT magnitude [B, T, n_fft // 2 + 1]: the filterbank's pseudo-inverse,
    clipped at zero, then multiplicative NNLS updates (Lee & Seung) that keep it non-negative and
    pull energy back onto the bins that explain the mel (sharper tones than the pinv alone)."""
    fb_mf = mel_filterbank(cfg)
    mel_btm = jnp.maximum(jnp.exp(log_mel_btm) - cfg.log_floor, 0.0)
    magnitude_btf = jnp.maximum(jnp.einsum("btm,fm->btf", mel_btm, np.linalg.pinv(fb_mf)), 1e-6)
    target_btf = jnp.einsum("btm,mf->btf", mel_btm, fb_mf)
    gram_ff = fb_mf.T @ fb_mf

    def refine(_, magnitude_btf):
        return magnitude_btf * target_btf / jnp.maximum(jnp.einsum("btf,fg->btg", magnitude_btf, gram_ff), 1e-9)

    return jax.lax.fori_loop(0, cfg.mel_inverse_iters, refine, magnitude_btf)


def griffin_lim(magnitude_btf: jax.Array, cfg: AudioTokenizerConfig, num_samples: int, seed: int = 0) -> jax.Array:
    """A waveform [B, num_samples] whose STFT magnitude approaches `magnitude_btf`: alternate
    projections between consistent spectrograms and the given magnitude, with momentum."""
    phase_btf = jax.random.uniform(jax.random.key(seed), magnitude_btf.shape, jnp.float32, 0.0, 2 * np.pi)
    spectrum_btf = magnitude_btf * jnp.exp(1j * phase_btf)
    momentum = cfg.griffin_lim_momentum / (1 + cfg.griffin_lim_momentum)

    def iterate(_, carry):
        spectrum_btf, previous_btf = carry
        rebuilt_btf = stft(istft(spectrum_btf, cfg, num_samples), cfg)
        accelerated_btf = rebuilt_btf - momentum * previous_btf
        spectrum_btf = magnitude_btf * accelerated_btf / jnp.maximum(jnp.abs(accelerated_btf), 1e-8)
        return spectrum_btf, rebuilt_btf

    spectrum_btf, _ = jax.lax.fori_loop(0, cfg.griffin_lim_iters, iterate, (spectrum_btf, spectrum_btf))
    return istft(spectrum_btf, cfg, num_samples)


def mel_to_waveform(log_mel_btm: jax.Array, cfg: AudioTokenizerConfig) -> jax.Array:
    """Log-mel [B, T, n_mels] -> float32 waveform [B, T * hop], peak-limited to [-1, 1]."""
    magnitude_btf = mel_to_magnitude(log_mel_btm, cfg)
    waveform_bn = griffin_lim(magnitude_btf, cfg, log_mel_btm.shape[1] * cfg.hop)
    return jnp.clip(waveform_bn, -1.0, 1.0).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# The network


class Conv1D(nnx.Module):
    """A SAME-padded [B, T, C] conv. Kernels are replicated (names None), as in the image tokenizer."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, rngs: nnx.Rngs, scale: float = 1.0):
        std = scale * (kernel * in_ch) ** -0.5
        self.kernel_wio = param(rngs, (kernel, in_ch, out_ch), (None, None, None), std, jnp.float32)
        self.bias_o = nnx.Param(jnp.zeros((out_ch,), jnp.float32), out_sharding=(None,), eager_sharding=False)

    def __call__(self, x_btc: jax.Array, valid_bt1: jax.Array | None = None) -> jax.Array:
        """`valid_bt1`: the frames that are the clip's (the rest pad a shape bucket). They are zeroed
        first, so the clip's frames see exactly the zeros SAME padding gives at its own end."""
        if valid_bt1 is not None:
            x_btc = jnp.where(valid_bt1, x_btc, 0.0)
        y_btc = jax.lax.conv_general_dilated(
            x_btc, self.kernel_wio[...], (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")
        )
        return y_btc + self.bias_o[...]


class ResBlock(nnx.Module):
    """x + conv(silu(conv(silu(x)))); the second conv starts small so a deep stack starts near identity."""

    def __init__(self, ch: int, kernel: int, rngs: nnx.Rngs):
        self.conv1 = Conv1D(ch, ch, kernel, rngs)
        self.conv2 = Conv1D(ch, ch, kernel, rngs, scale=0.1)

    def __call__(self, x_btc, valid_bt1=None):
        return x_btc + self.conv2(jax.nn.silu(self.conv1(jax.nn.silu(x_btc), valid_bt1)), valid_bt1)


def fold_time(x_btc: jax.Array) -> jax.Array:
    """[B, T, C] -> [B, T/2, 2C]: neighbouring frames side by side."""
    b, t, c = x_btc.shape
    return x_btc.reshape(b, t // 2, 2 * c)


def unfold_time(x_btc: jax.Array) -> jax.Array:
    """[B, T, 2C] -> [B, 2T, C], the inverse of `fold_time`."""
    b, t, c = x_btc.shape
    return x_btc.reshape(b, 2 * t, c // 2)


class Encoder(nnx.Module):
    def __init__(self, cfg: AudioTokenizerConfig, rngs: nnx.Rngs):
        ch, k = cfg.channels, cfg.kernel
        self.stem = Conv1D(cfg.n_mels, ch[0], k, rngs)
        self.stages = nnx.List([nnx.List([ResBlock(ch[i], k, rngs) for _ in range(n)]) for i, n in enumerate(cfg.res_blocks)])
        self.downs = nnx.List([Conv1D(2 * ch[i], ch[i + 1], 1, rngs) for i in range(len(ch) - 1)])
        self.to_latent = Conv1D(ch[-1], len(cfg.levels), 1, rngs)

    def __call__(self, x_btm, frames_b=None):
        """`frames_b`: each row's own frames, the rest padding (None: every frame is the clip's)."""
        def valid(t):
            return None if frames_b is None else (jnp.arange(t)[None, :] < frames_b[:, None])[..., None]

        x_btc = self.stem(x_btm, valid(x_btm.shape[1]))
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                x_btc = block(x_btc, valid(x_btc.shape[1]))
            if i < len(self.downs):
                x_btc = self.downs[i](fold_time(jax.nn.silu(x_btc)))
                frames_b = None if frames_b is None else frames_b // 2
        return self.to_latent(jax.nn.silu(x_btc))


class Decoder(nnx.Module):
    def __init__(self, cfg: AudioTokenizerConfig, rngs: nnx.Rngs):
        ch, k = cfg.channels, cfg.kernel
        self.from_latent = Conv1D(len(cfg.levels), ch[-1], k, rngs)
        self.stages = nnx.List([nnx.List([ResBlock(ch[i], k, rngs) for _ in range(n)]) for i, n in enumerate(cfg.res_blocks)])
        self.ups = nnx.List([Conv1D(ch[i + 1], 2 * ch[i], 1, rngs) for i in range(len(ch) - 1)])
        self.to_mel = Conv1D(ch[0], cfg.n_mels, k, rngs)

    def __call__(self, codes_btc):
        x_btc = self.from_latent(codes_btc)
        for i in reversed(range(len(self.stages))):
            for block in self.stages[i]:
                x_btc = block(x_btc)
            if i > 0:
                x_btc = unfold_time(self.ups[i - 1](jax.nn.silu(x_btc)))
        return self.to_mel(jax.nn.silu(x_btc))


def _pad_to_tokens(waveform_bn, cfg: AudioTokenizerConfig) -> jax.Array:
    """float [B, N] or [N] -> [B, N'] with N' the next multiple of samples_per_token (zero padded)."""
    waveform_bn = jnp.asarray(waveform_bn, jnp.float32)
    if waveform_bn.ndim == 1:
        waveform_bn = waveform_bn[None]
    if waveform_bn.ndim != 2:
        raise ValueError(f"waveform must be [N] or [B, N] float samples at {cfg.sample_rate} Hz; got shape {waveform_bn.shape}")
    extra = -waveform_bn.shape[1] % cfg.samples_per_token
    return jnp.pad(waveform_bn, ((0, 0), (0, extra))) if extra else waveform_bn


class AudioTokenizer(nnx.Module):
    """Waveforms [B, N] at 16 kHz <-> codes [B, ceil(N / 640)] in [0, codebook_size)."""

    def __init__(self, cfg: AudioTokenizerConfig, rngs: nnx.Rngs):
        empty = int(np.sum(mel_filterbank(cfg).sum(axis=1) == 0))
        if empty:
            raise ValueError(
                f"config fields `n_mels`/`n_fft`: {empty} of the {cfg.n_mels} mel bands fall between FFT bins "
                f"({cfg.sample_rate / cfg.n_fft:.1f} Hz apart); use fewer mel bands or a larger n_fft"
            )
        self.cfg = cfg
        self.fsq = FSQ(cfg.levels)
        self.encoder = Encoder(cfg, rngs)
        self.decoder = Decoder(cfg, rngs)

    def log_mel(self, waveform_bn) -> jax.Array:
        """Padded to whole tokens, so the target always matches the decoder's length."""
        return log_mel(_pad_to_tokens(waveform_bn, self.cfg), self.cfg)

    def _quantized(self, log_mel_btm, frames_b=None) -> jax.Array:
        x_btm = (log_mel_btm - self.cfg.log_mel_center) / self.cfg.log_mel_scale
        return self.fsq.quantize(self.encoder(constrain(x_btm, ("batch", None, None)), frames_b))

    def _log_mel_from_codes(self, codes_btc) -> jax.Array:
        return self.decoder(codes_btc) * self.cfg.log_mel_scale + self.cfg.log_mel_center

    def __call__(self, waveform_bn) -> tuple[jax.Array, jax.Array]:
        """Training path: (reconstructed log-mel, true log-mel), both [B, T, n_mels]."""
        log_mel_btm = self.log_mel(waveform_bn)
        return self._log_mel_from_codes(self._quantized(log_mel_btm)), log_mel_btm

    def encode(self, waveform_bn, tokens_b=None) -> jax.Array:
        """float waveform [B, N] or [N] at 16 kHz -> int32 codes [B, ceil(N / samples_per_token)].
        `tokens_b`: each row's own length in tokens, the rest zeros that pad a shape bucket; its
        codes are exactly those of the row alone (the padding's are meaningless)."""
        frames_b = None if tokens_b is None else tokens_b * (self.cfg.samples_per_token // self.cfg.hop)
        return self.fsq.codes_to_indices(self._quantized(self.log_mel(waveform_bn), frames_b))

    def decode_log_mel(self, codes_bt) -> jax.Array:
        """int codes [B, T] -> log-mel [B, T * downsample, n_mels]."""
        return self._log_mel_from_codes(self.fsq.indices_to_codes(codes_bt))

    def decode(self, codes_bt) -> jax.Array:
        """int codes [B, T] -> float32 waveform [B, T * samples_per_token] by Griffin-Lim."""
        return mel_to_waveform(self.decode_log_mel(codes_bt), self.cfg)


class AudioCodec:
    """One clip <-> its run of codes, as the Vocabulary asks; jitted over split state."""

    length = None  # clips of any length decode

    def __init__(self, model: AudioTokenizer):
        graphdef, state = nnx.split(model)
        self.cfg = model.cfg
        self._encode = jax.jit(lambda s, x, n: nnx.merge(graphdef, s).encode(x, n))
        self._decode = jax.jit(lambda s, c: nnx.merge(graphdef, s).decode(c))
        self.state = state

    def encode(self, waveform) -> np.ndarray:
        samples = prepare_audio(waveform, self.cfg.sample_rate, self.cfg.max_seconds)
        return self.encode_batch([samples], batch_size=1)[0]

    def encode_batch(self, waveforms: list, batch_size: int = 32) -> list[np.ndarray]:
        """`encode` of many clips (float32 at the tokenizer's rate), `batch_size` at a time. A clip is
        zero-padded to a bucket of lengths (powers of two in tokens), so a few shapes compile
        whatever lengths arrive; the encoder masks the padding, so each clip gets its own codes."""
        step = self.cfg.samples_per_token
        tokens = [max(1, -(-len(w) // step)) for w in waveforms]
        by_bucket: dict[int, list[int]] = {}
        for index, length in enumerate(tokens):
            by_bucket.setdefault(1 << (length - 1).bit_length(), []).append(index)
        codes: list = [None] * len(waveforms)
        for bucket, indices in by_bucket.items():
            for i in range(0, len(indices), batch_size):
                part = indices[i : i + batch_size]
                batch = np.zeros((batch_size, bucket * step), np.float32)
                lengths = np.ones(batch_size, np.int32)
                for row, j in enumerate(part):
                    batch[row, : len(waveforms[j])] = waveforms[j]
                    lengths[row] = tokens[j]
                out = np.asarray(self._encode(self.state, batch, lengths))
                for row, j in enumerate(part):
                    codes[j] = out[row].reshape(-1)[: tokens[j]]
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(self._decode(self.state, np.asarray(codes).reshape(1, -1)))[0]
