"""The image tokenizer: a conv encoder -> FSQ -> conv decoder, pixels <-> a grid of integer codes.

An image of `image_size` squared pixels becomes (image_size / downsample) squared codes in
[0, prod(levels)); the LM reads them row by row. FSQ (tokenization/fsq.py) needs no codebook
loss, so training is reconstruction alone.

Resolution changes are space-to-depth / depth-to-space around a 1x1 conv (a 2x2 stride-2 conv
and its transpose, as plain matmuls), and the 3x3 convs sit mostly at the low resolutions, where
wider channels keep a CPU's matmul units busy (a 3x3 conv at 32x32 x 32 channels ran at a quarter
of the FLOP rate of one at 8x8 x 128 on two cores).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.tokenizers import ImageTokenizerConfig
from data.media import prepare_image
from model.layers import RMSNorm
from model.weights import param
from parallel.sharding import constrain
from tokenization.fsq import FSQ


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


def to_unit_float(images_bhwc) -> jax.Array:
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
        x_bhwc = constrain(to_unit_float(images_bhwc) * 2 - 1, ("batch", None, None, None))
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


class ImageCodec:
    """One image <-> its flat run of codes, as the Vocabulary asks; jitted over split state."""

    def __init__(self, model: ImageTokenizer):
        self.size = model.cfg.image_size
        graphdef, state = nnx.split(model)
        self._encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))
        self._decode = jax.jit(lambda s, c: nnx.merge(graphdef, s).decode(c, as_uint8=True))
        self.state, self.grid = state, model.cfg.grid_size
        self.length = self.grid * self.grid

    def encode(self, image) -> np.ndarray:
        pixels = prepare_image(image, self.size)
        return np.asarray(self._encode(self.state, pixels[None]))[0].reshape(-1)

    def encode_batch(self, images: list, batch_size: int = 64) -> list[np.ndarray]:
        """`encode` of many images, `batch_size` at a time (the last batch padded: one compiled shape)."""
        pixels = np.stack([prepare_image(image, self.size) for image in images]) if images else None
        codes = []
        for i in range(0, len(images), batch_size):
            batch = pixels[i : i + batch_size]
            padded = np.pad(batch, ((0, batch_size - len(batch)), (0, 0), (0, 0), (0, 0)))
            codes += list(np.asarray(self._encode(self.state, padded))[: len(batch)].reshape(len(batch), -1))
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes).reshape(1, self.grid, self.grid)
        return np.asarray(self._decode(self.state, codes))[0]
