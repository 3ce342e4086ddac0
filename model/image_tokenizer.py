"""The image tokenizer: a conv encoder -> FSQ -> conv decoder, pixels <-> a grid of integer codes.

An image of `image_size` squared pixels becomes (image_size / downsample) squared codes in
[0, prod(levels)); the LM reads them row by row. FSQ (model/quantizers.py) needs no codebook
loss, so training is reconstruction alone.

Resolution changes are space-to-depth / depth-to-space around a 1x1 conv (a 2x2 stride-2 conv
and its transpose, as plain matmuls), and the 3x3 convs sit mostly at the low resolutions, where
wider channels keep a CPU's matmul units busy (a 3x3 conv at 32x32 x 32 channels ran at a quarter
of the FLOP rate of one at 8x8 x 128 on two cores).
"""

from __future__ import annotations

import functools
import io
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from PIL import Image

from configs.tokenizers import ImageTokenizerConfig
from model.layers import RMSNorm, param
from model.quantizers import FSQ
from model.sharding import constrain
from training.autoencoder import fit, warmup_cosine_adam


class Conv(nnx.Module):
    """A SAME-padded NHWC conv. Its axes have no logical names, so it is replicated: the tokenizer
    is small beside the LM, and its channel counts (3 pixels, a handful of latents) rarely divide
    a mesh axis. Only its activations split, over `batch`."""

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
    """x + conv(silu(conv(silu(x)))); the second conv starts small so a deep stack starts near identity.

    No normalisation inside: with pre-norm blocks our short runs ended ~1.5 dB lower.
    """

    def __init__(self, ch: int, rngs: nnx.Rngs):
        self.conv1 = Conv(ch, ch, 3, rngs)
        self.conv2 = Conv(ch, ch, 3, rngs, scale=0.1)

    def __call__(self, x_bhwc):
        return x_bhwc + self.conv2(jax.nn.silu(self.conv1(jax.nn.silu(x_bhwc))))


def space_to_depth(x_bhwc: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, 4C]: each 2x2 patch's pixels become channels."""
    b, h, w, c = x_bhwc.shape
    x = x_bhwc.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def depth_to_space(x_bhwc: jax.Array) -> jax.Array:
    """[B, H, W, 4C] -> [B, 2H, 2W, C], the inverse of space_to_depth."""
    b, h, w, c = x_bhwc.shape
    x = x_bhwc.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, 2 * h, 2 * w, c // 4)


class Encoder(nnx.Module):
    """Pixels in [-1, 1] -> unbounded latents [B, h, w, len(levels)] for FSQ.

    The latents come from normalised features, so their spread at the start is set by the
    projection alone; without the norm the spread wandered and fewer codes ended up in use.
    """

    def __init__(self, cfg: ImageTokenizerConfig, rngs: nnx.Rngs):
        ch = cfg.channels
        self.stem = Conv(3, ch[0], 3, rngs)
        self.stages = nnx.List([nnx.List([ResBlock(ch[i], rngs) for _ in range(n)]) for i, n in enumerate(cfg.res_blocks)])
        self.downs = nnx.List([Conv(4 * ch[i], ch[i + 1], 1, rngs) for i in range(len(ch) - 1)])
        self.latent_norm = RMSNorm(ch[-1], None, 1e-6, jnp.float32)
        self.to_latent = Conv(ch[-1], len(cfg.levels), 1, rngs)

    def __call__(self, x_bhwc):
        x_bhwc = self.stem(x_bhwc)
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                x_bhwc = block(x_bhwc)
            if i < len(self.downs):
                x_bhwc = self.downs[i](space_to_depth(x_bhwc))
        return self.to_latent(self.latent_norm(x_bhwc))


class Decoder(nnx.Module):
    """Grid codes [B, h, w, len(levels)] -> pixels in about [-1, 1]. The last conv starts small,
    so the first reconstructions are flat mid-grey rather than loud noise."""

    def __init__(self, cfg: ImageTokenizerConfig, rngs: nnx.Rngs):
        ch = cfg.channels
        self.from_latent = Conv(len(cfg.levels), ch[-1], 3, rngs)
        self.stages = nnx.List([nnx.List([ResBlock(ch[i], rngs) for _ in range(n)]) for i, n in enumerate(cfg.res_blocks)])
        self.ups = nnx.List([Conv(ch[i + 1], 4 * ch[i], 1, rngs) for i in range(len(ch) - 1)])
        self.to_pixels = Conv(ch[0], 3, 3, rngs, scale=0.1)

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


def prepare_image(image, size: int = 32) -> np.ndarray:
    """Anything image-like -> uint8 [size, size, 3] RGB.

    Accepts a numpy array (H x W grey, H x W x 1, RGB or RGBA; uint8, or float in [0, 1]),
    a PIL image in any mode (16-bit grey included), or encoded bytes (PNG, JPEG, anything PIL
    reads); bytes PIL cannot decode raise ValueError. Alpha is composited
    over white; other sizes are resized with bicubic filtering (no crop: the world's images are
    square, and a caller who wants a crop should make it).
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        try:
            pil = Image.open(io.BytesIO(data))
            pil.load()
        except Exception as error:  # PIL raises many types for bad data; callers get one
            reason = (
                "not in any image format PIL recognises (PNG, JPEG, ...)"
                if isinstance(error, Image.UnidentifiedImageError)
                else f"corrupt or truncated image data ({type(error).__name__}: {error})"
            )
            raise ValueError(f"could not decode image bytes ({len(data)} bytes, starting {data[:8]!r}): {reason}") from error
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
    if pil.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey (PNG): convert("RGB") would clip it
        pil = Image.fromarray(np.round(np.asarray(pil, np.float64) / 257).clip(0, 255).astype(np.uint8))
    pil = pil.convert("RGB")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(pil, np.uint8)


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def reconstruction_loss(graphdef: nnx.GraphDef, params: nnx.State, images_bhwc):
    """Mean squared error in [0, 1] pixel units: exactly what PSNR scores. Aux: how many codes the batch used."""
    model = nnx.merge(graphdef, params)
    recon_bhwc, codes_bhwc = model(images_bhwc)
    mse = jnp.mean((recon_bhwc - _to_unit_float(images_bhwc)) ** 2)
    indices = model.fsq.codes_to_indices(codes_bhwc).reshape(-1)
    distinct = jnp.zeros(model.fsq.codebook_size, bool).at[indices].set(True).sum()
    return mse, {"batch_codes": distinct}


def make_optimizer(cfg: ImageTokenizerConfig, steps: int) -> optax.GradientTransformation:
    """Adam with warmup + cosine, global-norm clipping, and the encoder at `encoder_lr_scale` of the rate.

    Why a slower encoder: before the decoder can read the codes, quantization is only noise to it,
    and the quickest way to cut that noise is to push the latents into tanh's flat tails, where
    every position shares one code and the gradient vanishes. Adam's sign-like steps get there in a
    few dozen steps: at equal rates our short runs ended with 0.1-13% of the codes in use and
    lower PSNR; at 0.3-0.5 of the rate, 55-85% (lower scales use more codes, at ~1 dB PSNR).
    """
    adam = warmup_cosine_adam(cfg.learning_rate, cfg.warmup_steps, steps)

    def part(params):  # "encoder" / "decoder": the top-level attribute each parameter lives under
        return jax.tree_util.tree_map_with_path(lambda path, _: str(path[0].key), params)

    return optax.multi_transform({"encoder": optax.chain(adam, optax.scale(cfg.encoder_lr_scale)), "decoder": adam}, part)


def train_image_tokenizer(
    cfg: ImageTokenizerConfig,
    images,
    steps: int | None = None,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
) -> tuple[ImageTokenizer, dict]:
    """Train from scratch; returns the model and training.autoencoder.fit's metrics (loss = MSE).

    `images`: an array [N, H, W, 3] uint8, a sampler `fn(rng, batch_size)`, or an iterator of
    batches. The step is a pure jitted function over the split state, donating params and
    optimizer state.
    """
    steps = cfg.steps if steps is None else steps
    model = ImageTokenizer(cfg, nnx.Rngs(seed))
    return fit("image tokenizer", model, reconstruction_loss, make_optimizer(cfg, steps), images, cfg.batch_size,
               steps, seed, log)


@functools.partial(jax.jit, static_argnums=0)
def _roundtrip(graphdef, params, images_bhwc):
    model = nnx.merge(graphdef, params)
    codes_bhw = model.encode(images_bhwc)
    return codes_bhw, model.decode(codes_bhw, as_uint8=True)


def evaluate(model: ImageTokenizer, images: np.ndarray, batch_size: int = 250) -> dict:
    """Round-trip uint8 images [N, H, W, 3] through codes and back to uint8.

    psnr_db: from the squared error pooled over every pixel of every image (stricter than the
    mean of per-image PSNRs); codes_used_fraction: the share of the codebook seen at least once.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"evaluate takes uint8 images [N, H, W, 3]; got dtype {images.dtype}")
    graphdef, params = nnx.split(model, nnx.Param)
    squared_error, count, seen = 0.0, 0, np.zeros(model.fsq.codebook_size, bool)
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        codes, recon = _roundtrip(graphdef, params, batch)
        error = np.asarray(recon, np.float64) / 255 - batch.astype(np.float64) / 255
        squared_error, count = squared_error + float(np.sum(error**2)), count + error.size
        seen[np.asarray(codes).ravel()] = True
    mse = squared_error / count
    return {"psnr_db": float(10 * np.log10(1.0 / max(mse, 1e-12))), "codes_used_fraction": float(seen.mean())}
