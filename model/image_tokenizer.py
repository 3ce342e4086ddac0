"""The image tokenizer: a conv encoder -> FSQ -> conv decoder, pixels <-> a grid of integer codes.

An image of `image_size` squared pixels becomes (image_size / downsample) squared codes in
[0, prod(levels)); the LM reads them row by row. FSQ (model/quantizers.py) needs no codebook
loss, so training is reconstruction alone.

Resolution changes are space-to-depth / depth-to-space around a 1x1 conv (a 2x2 stride-2 conv
and its transpose, written as matmuls): on a CPU they cost a fraction of a strided 3x3 conv,
and the 3x3 work happens at the low resolutions where the channel count keeps the matmul units busy.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from PIL import Image

from model.layers import param
from model.quantizers import FSQ
from model.sharding import constrain


@dataclasses.dataclass(frozen=True)
class ImageTokenizerConfig:
    """Shape of the tokenizer and its training stage. `channels[i]` is the width after i halvings."""

    image_size: int = 32
    downsample: int = 4
    levels: tuple[int, ...] = (8, 5, 5, 5)
    channels: tuple[int, ...] = (32, 64, 128)
    res_blocks: tuple[int, ...] = (0, 1, 2)  # residual blocks per resolution, encoder and decoder each
    # training
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    steps: int = 1000
    l1_weight: float = 0.0  # added to the squared error; L2 alone is what PSNR measures

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
        return cls(channels=(8, 16, 16), res_blocks=(0, 1, 1), batch_size=8)

    @classmethod
    def for_scale(cls) -> "ImageTokenizerConfig":
        """256x256 -> 16x16 = 256 tokens over (8,8,8,5,5,5) = 64,000 codes."""
        return cls(
            image_size=256, downsample=16, levels=(8, 8, 8, 5, 5, 5),
            channels=(64, 128, 256, 256, 512), res_blocks=(0, 1, 2, 2, 2),
            batch_size=256, learning_rate=1e-3, warmup_steps=1000, steps=200_000,
        )


class Conv(nnx.Module):
    """A SAME-padded NHWC conv. Kernels are replicated (names None): the tokenizer is small
    beside the LM, and its channel counts (3 in, a handful of latent channels) rarely divide a mesh axis."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, rngs: nnx.Rngs, scale: float = 1.0):
        std = scale * (kernel * kernel * in_ch) ** -0.5
        self.kernel_hwio = param(rngs, (kernel, kernel, in_ch, out_ch), (None, None, None, None), std, jnp.float32)
        self.bias_o = nnx.Param(jnp.zeros((out_ch,), jnp.float32), out_sharding=(None,), eager_sharding=False)

    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        y_bhwc = jax.lax.conv_general_dilated(
            x_bhwc, self.kernel_hwio[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y_bhwc + self.bias_o[...]


class ResBlock(nnx.Module):
    """x + conv(silu(conv(silu(x)))); the second conv starts small so a deep stack starts near identity."""

    def __init__(self, ch: int, rngs: nnx.Rngs):
        self.conv1 = Conv(ch, ch, 3, rngs)
        self.conv2 = Conv(ch, ch, 3, rngs, scale=0.1)

    def __call__(self, x_bhwc):
        return x_bhwc + self.conv2(jax.nn.silu(self.conv1(jax.nn.silu(x_bhwc))))


def space_to_depth(x_bhwc: jax.Array) -> jax.Array:
    b, h, w, c = x_bhwc.shape
    x = x_bhwc.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def depth_to_space(x_bhwc: jax.Array) -> jax.Array:
    b, h, w, c = x_bhwc.shape
    x = x_bhwc.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, 2 * h, 2 * w, c // 4)


class Encoder(nnx.Module):
    def __init__(self, cfg: ImageTokenizerConfig, rngs: nnx.Rngs):
        ch = cfg.channels
        self.stem = Conv(3, ch[0], 3, rngs)
        self.stages = nnx.List([nnx.List([ResBlock(ch[i], rngs) for _ in range(n)]) for i, n in enumerate(cfg.res_blocks)])
        self.downs = nnx.List([Conv(4 * ch[i], ch[i + 1], 1, rngs) for i in range(len(ch) - 1)])
        self.to_latent = Conv(ch[-1], len(cfg.levels), 1, rngs)

    def __call__(self, x_bhwc):
        x_bhwc = self.stem(x_bhwc)
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                x_bhwc = block(x_bhwc)
            if i < len(self.downs):
                x_bhwc = self.downs[i](space_to_depth(x_bhwc))
        return self.to_latent(jax.nn.silu(x_bhwc))


class Decoder(nnx.Module):
    def __init__(self, cfg: ImageTokenizerConfig, rngs: nnx.Rngs):
        ch = cfg.channels
        self.from_latent = Conv(len(cfg.levels), ch[-1], 3, rngs)
        self.stages = nnx.List([nnx.List([ResBlock(ch[i], rngs) for _ in range(n)]) for i, n in enumerate(cfg.res_blocks)])
        self.ups = nnx.List([Conv(ch[i + 1], 4 * ch[i], 1, rngs) for i in range(len(ch) - 1)])
        self.to_pixels = Conv(ch[0], 3, 3, rngs)

    def __call__(self, codes_bhwc):
        x_bhwc = self.from_latent(codes_bhwc)
        for i in reversed(range(len(self.stages))):
            for block in self.stages[i]:
                x_bhwc = block(x_bhwc)
            if i > 0:
                x_bhwc = depth_to_space(self.ups[i - 1](jax.nn.silu(x_bhwc)))
        return self.to_pixels(jax.nn.silu(x_bhwc))


def _to_unit_float(images_bhwc) -> jax.Array:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    images_bhwc = jnp.asarray(images_bhwc)
    if images_bhwc.dtype == jnp.uint8:
        return images_bhwc.astype(jnp.float32) / 255.0
    return images_bhwc.astype(jnp.float32)


class ImageTokenizer(nnx.Module):
    """Images [B, H, W, 3] <-> codes [B, H/downsample, W/downsample] in [0, codebook_size)."""

    def __init__(self, cfg: ImageTokenizerConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.fsq = FSQ(cfg.levels)
        self.encoder = Encoder(cfg, rngs)
        self.decoder = Decoder(cfg, rngs)

    def _quantized(self, images_bhwc) -> jax.Array:
        x_bhwc = constrain(_to_unit_float(images_bhwc) * 2 - 1, ("batch", None, None, None))
        return self.fsq.quantize(self.encoder(x_bhwc))

    def _pixels(self, codes_bhwc) -> jax.Array:
        """Decoder output mapped back to [0, 1] (unclipped: the loss sees overshoot)."""
        return (self.decoder(codes_bhwc) + 1) / 2

    def __call__(self, images_bhwc) -> tuple[jax.Array, jax.Array]:
        """Training path: (reconstruction in [0, 1] unclipped, quantized latents [B, h, w, C])."""
        codes_bhwc = self._quantized(images_bhwc)
        return self._pixels(codes_bhwc), codes_bhwc

    def encode(self, images_bhwc) -> jax.Array:
        """uint8 [0, 255] or float [0, 1] images -> int32 codes [B, h, w]."""
        return self.fsq.codes_to_indices(self._quantized(images_bhwc))

    def decode(self, codes_bhw, as_uint8: bool = False) -> jax.Array:
        """int codes [B, h, w] -> float images in [0, 1] (or uint8 with `as_uint8`)."""
        images_bhwc = jnp.clip(self._pixels(self.fsq.indices_to_codes(codes_bhw)), 0.0, 1.0)
        if as_uint8:
            return jnp.round(images_bhwc * 255).astype(jnp.uint8)
        return images_bhwc


# ---------------------------------------------------------------------------------------------
# Inputs from the outside world


def prepare_image(image, size: int) -> np.ndarray:
    """Anything image-like -> uint8 [size, size, 3] RGB.

    Accepts a numpy array (H x W grey, H x W x 1, RGB or RGBA; uint8, or float in [0, 1]),
    a PIL image in any mode, or encoded bytes (PNG, JPEG, anything PIL reads). Alpha is composited
    over white; other sizes are resized with bicubic filtering (no crop: the world's images are
    square, and a caller who wants a crop should make it).
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            pil = Image.open(io.BytesIO(bytes(image)))
            pil.load()
        except Exception as error:  # PIL raises several types for bad data; callers need one
            raise ValueError(
                f"could not decode image bytes ({len(image)} bytes, starting {bytes(image[:8])!r}): "
                f"not a PNG/JPEG/other format PIL can read ({type(error).__name__}: {error})"
            ) from error
    elif isinstance(image, Image.Image):
        pil = image
    else:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ValueError(f"image array must be H x W, H x W x 1, H x W x 3 or H x W x 4; got shape {array.shape}")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"image array must be uint8 or float in [0, 1]; got dtype {array.dtype}")
            array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
        pil = Image.fromarray(array)
    if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
        rgba = pil.convert("RGBA")
        pil = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil.alpha_composite(rgba)
    pil = pil.convert("RGB")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(pil, np.uint8)


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def _batches(images, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Batches from an array [N, H, W, 3] (sampled with replacement), a sampler
    `fn(rng, batch_size) -> array`, or an iterator of batches."""
    rng = np.random.default_rng(seed)
    if isinstance(images, np.ndarray):
        while True:
            yield images[rng.integers(0, len(images), batch_size)]
    elif callable(images):
        while True:
            yield np.asarray(images(rng, batch_size))
    else:
        yield from images


def reconstruction_loss(graphdef: nnx.GraphDef, params: nnx.State, images_bhwc, l1_weight: float):
    """Mean squared error in [0, 1] pixel units (+ optional L1), and the MSE alone."""
    recon_bhwc, _ = nnx.merge(graphdef, params)(images_bhwc)
    error_bhwc = recon_bhwc - _to_unit_float(images_bhwc)
    mse = jnp.mean(error_bhwc**2)
    return mse + l1_weight * jnp.mean(jnp.abs(error_bhwc)), mse


def make_optimizer(cfg: ImageTokenizerConfig, steps: int) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, min(cfg.warmup_steps, max(steps - 1, 1)), max(steps, 2), end_value=cfg.learning_rate * 0.02
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def train_image_tokenizer(
    cfg: ImageTokenizerConfig,
    images,
    steps: int | None = None,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
) -> tuple[ImageTokenizer, dict]:
    """Train from scratch; returns the model and {"steps", "seconds", "final_mse", "losses"}.

    `images`: an array [N, H, W, 3] uint8, a sampler `fn(rng, batch_size)`, or an iterator of
    batches. The step is a pure jitted function over the split state, donating params and
    optimizer state.
    """
    steps = cfg.steps if steps is None else steps
    model = ImageTokenizer(cfg, nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(cfg, steps)
    opt_state = tx.init(params)

    def step(params, opt_state, images_bhwc):
        (_, mse), grads = jax.value_and_grad(reconstruction_loss, argnums=1, has_aux=True)(
            graphdef, params, images_bhwc, cfg.l1_weight
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, mse

    step = jax.jit(step, donate_argnums=(0, 1))
    start, losses = time.perf_counter(), []
    batches = _batches(images, cfg.batch_size, seed)
    for i in range(steps):
        params, opt_state, mse = step(params, opt_state, next(batches))
        if i % 50 == 0 or i == steps - 1:
            mse = float(mse)
            if not math.isfinite(mse):
                raise FloatingPointError(f"image tokenizer loss is {mse} at step {i}")
            losses.append((i, mse))
            if log:
                log({"step": i, "mse": mse, "seconds": time.perf_counter() - start})
    nnx.update(model, params)
    metrics = {"steps": steps, "seconds": time.perf_counter() - start, "final_mse": losses[-1][1], "losses": losses}
    return model, metrics


@jax.jit
def _roundtrip(graphdef, params, images_bhwc):
    model = nnx.merge(graphdef, params)
    codes_bhw = model.encode(images_bhwc)
    return codes_bhw, model.decode(codes_bhw, as_uint8=True)


def evaluate(model: ImageTokenizer, images: np.ndarray, batch_size: int = 256) -> dict:
    """Encode -> decode uint8 images; PSNR (dB) of the pooled squared error over all pixels, and
    the fraction of the codebook that appears at least once."""
    graphdef, params = nnx.split(model, nnx.Param)
    squared_error, count, seen = 0.0, 0, np.zeros(model.fsq.codebook_size, bool)
    for i in range(0, len(images), batch_size):
        batch = np.asarray(images[i : i + batch_size])
        codes, recon = _roundtrip(graphdef, params, batch)
        error = np.asarray(recon, np.float64) / 255 - batch.astype(np.float64) / 255
        squared_error, count = squared_error + float(np.sum(error**2)), count + error.size
        seen[np.asarray(codes).ravel()] = True
    mse = squared_error / count
    return {"psnr_db": float(10 * np.log10(1.0 / max(mse, 1e-12))), "codes_used_fraction": float(seen.mean())}
