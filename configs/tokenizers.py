"""Tokenizer configs: the image and audio FSQ autoencoders and the text tokenizer, with their training stage.

Each has a CPU default (the `tiny` preset trains it in the tokenizer stage), `tiny()` for shape
tests, and `for_scale()` for the Nano/Pro/Ultra vocabularies (built abstractly, not trained here).
"""

from __future__ import annotations

import dataclasses
import math

from tokenization.fsq import FSQ


@dataclasses.dataclass(frozen=True)
class ImageTokenizerConfig:
    """Shape of the tokenizer and its training stage. `channels[i]` is the width after i halvings.

    The defaults are the `tiny` world's tokenizer: 32x32 -> 8x8 = 64 tokens of 1,000 codes, 0.36M
    parameters, trained in about 50 s on two CPU cores to ~33 dB PSNR with ~80% of the codes in
    use.
    """

    image_size: int = 32
    """side of the square images it encodes, in pixels"""
    downsample: int = 4
    """pixels per token along each side (a power of two)"""
    levels: tuple[int, ...] = (8, 5, 5, 5)
    """FSQ levels of an image code's digits; their product is the number of image codes"""
    channels: tuple[int, ...] = (16, 32, 64)
    """convolution widths per image resolution, from full size down"""
    res_blocks: tuple[int, ...] = (0, 1, 2)
    """residual blocks per image resolution, in the encoder and the decoder each"""
    # training. Small batches: per image seen, batch 16 learned faster than 32 or 64, and its
    # activations stay in cache, so it is also faster per image.
    batch_size: int = 16
    """images per image-tokenizer training step"""
    learning_rate: float = 2e-3
    """the image tokenizer's peak learning rate"""
    encoder_lr_scale: float = 0.3
    """the image encoder's learning rate over the decoder's (see make_optimizer)"""
    warmup_steps: int = 50
    """steps of the image tokenizer's learning-rate warmup"""
    steps: int = 2500
    """image-tokenizer training steps"""

    def __post_init__(self):
        stages = int(round(math.log2(self.downsample)))
        if 2**stages != self.downsample:
            raise ValueError(f"config field `downsample`: must be a power of two, got {self.downsample}")
        if self.image_size % self.downsample:
            raise ValueError(f"config field `image_size`: {self.image_size} is not a multiple of downsample={self.downsample}")
        if len(self.channels) != stages + 1 or len(self.res_blocks) != stages + 1:
            raise ValueError(
                f"config fields `channels`/`res_blocks`: need one entry per resolution ({stages + 1} for "
                f"downsample={self.downsample}), got {self.channels} / {self.res_blocks}"
            )
        FSQ(self.levels)  # validates the levels

    @property
    def grid_size(self) -> int:
        return self.image_size // self.downsample

    @property
    def tokens_per_image(self) -> int:
        return self.grid_size**2

    @property
    def codebook_size(self) -> int:
        return FSQ(self.levels).codebook_size

    @classmethod
    def tiny(cls) -> "ImageTokenizerConfig":
        """A few-thousand-parameter tokenizer for shape tests."""
        return cls(channels=(8, 16, 16), res_blocks=(0, 1, 1), batch_size=8, steps=100)

    @classmethod
    def for_scale(cls) -> "ImageTokenizerConfig":
        """256x256 -> 16x16 = 256 tokens over (8,8,8,5,5,5) = 64,000 codes."""
        return cls(
            image_size=256, downsample=16, levels=(8, 8, 8, 5, 5, 5),
            channels=(64, 128, 256, 256, 512), res_blocks=(0, 1, 2, 2, 2),
            batch_size=256, learning_rate=1e-3, warmup_steps=1000, steps=200_000,
        )


@dataclasses.dataclass(frozen=True)
class AudioTokenizerConfig:
    """Front end, network shape and training stage. `channels[i]` is the width after i halvings of time.

    The defaults are the CPU world's tokenizer (~0.5M parameters, about half a minute of training
    on two cores); `tiny` is for shape tests, `for_scale` the accelerator-sized one.
    """

    # front end: 16 kHz, 25 ms Hann window zero-padded to 512, 10 ms hop, 80 HTK-mel bands
    sample_rate: int = 16000
    """audio samples per second"""
    hop: int = 160
    """samples between consecutive mel frames"""
    window: int = 400
    """samples under each frame's Hann window, zero-padded to n_fft"""
    n_fft: int = 512
    """FFT length of each frame"""
    n_mels: int = 80
    """mel bands (HTK mel scale)"""
    f_min: float = 0.0
    """lowest mel band edge, in Hz"""
    f_max: float = 8000.0
    """highest mel band edge, in Hz"""
    log_floor: float = 3e-2
    """floor added before the log, log(mel + floor): ~70 dB below a full-scale tone's band"""
    log_mel_center: float = -2.5
    """the network's input and output are (log-mel - center) / scale: this fixed center"""
    log_mel_scale: float = 2.5
    """the network's input and output are (log-mel - center) / scale: this fixed scale"""
    # network
    downsample: int = 4
    """mel frames per audio token (a power of two)"""
    levels: tuple[int, ...] = (8, 5, 5, 5)
    """FSQ levels of an audio code's digits; their product is the number of audio codes"""
    channels: tuple[int, ...] = (64, 128, 128)
    """convolution widths per time resolution, from the frame rate down"""
    res_blocks: tuple[int, ...] = (0, 0, 2)
    """residual blocks per time resolution, in the encoder and the decoder each"""
    kernel: int = 3
    """convolution kernel length along time"""
    # back end
    mel_inverse_iters: int = 100
    """multiplicative (non-negative least squares) refinements of the mel pseudo-inverse"""
    griffin_lim_iters: int = 64
    """Griffin-Lim iterations that recover the phase"""
    griffin_lim_momentum: float = 0.99
    """momentum of "fast Griffin-Lim" (Perraudin et al. 2013)"""
    # training
    batch_size: int = 32
    """clips per audio-tokenizer training step"""
    learning_rate: float = 6e-3
    """the audio tokenizer's peak learning rate"""
    warmup_steps: int = 30
    """steps of the audio tokenizer's learning-rate warmup"""
    steps: int = 1000
    """audio-tokenizer training steps"""
    # Squared error leans on the tone peaks, where the errors are large.
    l2_weight: float = 1.0
    """weight of the squared error added to the L1 reconstruction loss"""
    train_seconds: float = 1.0
    """length of the windows the tokenizer trains on, cut from the mixture's clips (training/tokenizer_stage.py)"""
    max_seconds: float = 30.0
    """the longest clip from outside (a request's audio) `prepare_audio` accepts"""

    def __post_init__(self):
        stages = int(round(math.log2(self.downsample)))
        if 2**stages != self.downsample:
            raise ValueError(f"config field `downsample`: must be a power of two, got {self.downsample}")
        if len(self.channels) != stages + 1 or len(self.res_blocks) != stages + 1:
            raise ValueError(
                f"config fields `channels`/`res_blocks`: need one entry per resolution ({stages + 1} for "
                f"downsample={self.downsample}), got {self.channels} / {self.res_blocks}"
            )
        if not self.hop <= self.window <= self.n_fft or (self.n_fft - self.hop) % 2 or (self.n_fft - self.window) % 2:
            raise ValueError(
                f"config fields `hop`/`window`/`n_fft`: need hop <= window <= n_fft with even differences, "
                f"got {self.hop}/{self.window}/{self.n_fft}"
            )
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"config fields `f_min`/`f_max`: need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}/{self.f_max}"
            )
        FSQ(self.levels)  # validates the levels

    @property
    def samples_per_token(self) -> int:
        return self.hop * self.downsample

    @property
    def tokens_per_second(self) -> float:
        return self.sample_rate / self.samples_per_token

    @property
    def codebook_size(self) -> int:
        return FSQ(self.levels).codebook_size

    @classmethod
    def tiny(cls) -> "AudioTokenizerConfig":
        """A ~12k-parameter tokenizer for shape tests."""
        return cls(channels=(8, 16, 16), res_blocks=(0, 1, 1), batch_size=4, griffin_lim_iters=4)

    @classmethod
    def for_scale(cls) -> "AudioTokenizerConfig":
        """25 tokens/s over (8,8,8,6,5) = 15,360 codes, wider and deeper (~35M parameters)."""
        return cls(
            levels=(8, 8, 8, 6, 5), channels=(256, 512, 512), res_blocks=(1, 2, 4), kernel=5,
            griffin_lim_iters=64, batch_size=256, learning_rate=1e-3, warmup_steps=1000, steps=200_000,
        )


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """A clip is frames sampled at `fps` from its start, at most `max_frames`, each through the image
    tokenizer (data/media.py, prepare_video): <bov> (<boi> codes <eoi>) per frame <eov>."""

    fps: float = 2.0
    """frames sampled per second of a clip"""
    max_frames: int = 4
    """the most frames a clip keeps: a longer clip is cut to its first max_frames / fps seconds"""

    def __post_init__(self):
        if not self.fps > 0 or self.max_frames < 1:
            raise ValueError(f"config fields `tokenizers.video.fps` and `.max_frames`: must be positive, got "
                             f"{self.fps} and {self.max_frames}")

    def tokens(self, image_tokens: int) -> int:
        """The most tokens one clip takes: <bov> <eov>, and each frame's codes between <boi> <eoi>."""
        return 2 + self.max_frames * (image_tokens + 2)


@dataclasses.dataclass(frozen=True)
class TokenizersConfig:
    """The three tokenizers and how the tokenizer stage trains and measures them."""

    text_model: str = ""
    """a user's SentencePiece .model file; empty: train one on the world's text"""
    text_examples: int = 20_000
    """world examples whose text trains SentencePiece"""
    image: ImageTokenizerConfig = ImageTokenizerConfig()
    audio: AudioTokenizerConfig = AudioTokenizerConfig()
    video: VideoConfig = VideoConfig()
    eval_images: int = 1000
    """held-out renderings for PSNR and code usage"""
    eval_clips: int = 200
    """held-out DTMF clips for round-trip key accuracy"""

    @classmethod
    def for_scale(cls) -> "TokenizersConfig":
        # A clip of 7 s at 1 frame a second: 7 x (256 + 2) + 2 = 1,808 tokens, inside every scale plan's
        # 2,048-token training rows and decode caches.
        return cls(image=ImageTokenizerConfig.for_scale(), audio=AudioTokenizerConfig.for_scale(),
                   video=VideoConfig(fps=1.0, max_frames=7))
