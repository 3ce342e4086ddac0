"""The image tokenizer: code shapes and ranges, the scale preset, and that training learns.
(Preparing input images is data/media.py's, tested in test_media.py.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import get_config
from configs.tokenizers import ImageTokenizerConfig
from data import world
from data.segments import Video
from data.vocab import Vocabulary
from tokenization.image import ImageCodec, ImageTokenizer
from tokenization.text import train_text_tokenizer
from training.fit_image_tokenizer import evaluate, train_image_tokenizer
from training.tokenizer_stage import world_images


def rectangles(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """One flat-coloured rectangle per image on a grey background: a stand-in for the world's shapes."""
    images = np.empty((n, size, size, 3), np.uint8)
    for image in images:
        image[...] = rng.integers(180, 230)
        top, left = rng.integers(0, size - 8, 2)
        height, width = rng.integers(6, 16, 2)
        image[top : top + height, left : left + width] = rng.integers(0, 256, 3)
    return images


@pytest.fixture(scope="module")
def tiny_text_vocab():
    return train_text_tokenizer(world.world_texts(0, 200), 1024)


@pytest.fixture(scope="module")
def tiny():
    cfg = ImageTokenizerConfig.tiny()
    return cfg, ImageTokenizer(cfg, nnx.Rngs(0))


@pytest.mark.slow  # building the tiny tokenizer and its first encode: ~15 s
def test_tiny_tokenizer_maps_32x32_images_to_8x8_codes_and_back(tiny):
    cfg, model = tiny
    images = rectangles(np.random.default_rng(0), 2)
    codes = model.encode(images)
    assert codes.shape == (2, 8, 8) and codes.dtype == jnp.int32
    assert 0 <= int(codes.min()) and int(codes.max()) < 1000 == cfg.codebook_size
    np.testing.assert_array_equal(model.encode(images.astype(np.float32) / 255), codes)  # float [0, 1] input too

    pixels = model.decode(codes)
    assert pixels.shape == (2, 32, 32, 3) and pixels.dtype == jnp.float32
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    as_uint8 = model.decode(codes, as_uint8=True)
    assert as_uint8.dtype == jnp.uint8
    np.testing.assert_array_equal(as_uint8, np.round(np.asarray(pixels) * 255))

    recon, latents = model(images)  # the training path: unclipped pixels and grid latents
    assert recon.shape == (2, 32, 32, 3) and latents.shape == (2, 8, 8, 4)
    np.testing.assert_array_equal(model.fsq.codes_to_indices(latents), codes)


def test_scale_preset_builds_abstractly_with_256_tokens_of_64000_codes():
    cfg = ImageTokenizerConfig.for_scale()
    assert (cfg.image_size, cfg.tokens_per_image, cfg.codebook_size) == (256, 256, 64_000)
    model = nnx.eval_shape(lambda: ImageTokenizer(cfg, nnx.Rngs(0)))
    images = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.uint8)
    graphdef, state = nnx.split(model)
    codes = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode(x), state, images)
    assert codes.shape == (2, 16, 16) and codes.dtype == jnp.int32
    pixels = jax.eval_shape(lambda s, c: nnx.merge(graphdef, s).decode(c), state, codes)
    assert pixels.shape == (2, 256, 256, 3)


def test_config_names_the_field_it_refuses():
    with pytest.raises(ValueError, match="downsample"):
        ImageTokenizerConfig(downsample=3)
    with pytest.raises(ValueError, match="channels"):
        ImageTokenizerConfig(channels=(16, 32))


@pytest.mark.slow  # trains
def test_a_few_seconds_of_training_gain_at_least_6_db_over_initialisation():
    cfg = dataclasses.replace(ImageTokenizerConfig.tiny(), steps=150)
    train, held_out = rectangles(np.random.default_rng(1), 2000), rectangles(np.random.default_rng(2), 200)
    before = evaluate(ImageTokenizer(cfg, nnx.Rngs(0)), held_out)
    model, metrics = train_image_tokenizer(cfg, train, seed=0)
    after = evaluate(model, held_out)
    assert metrics["steps"] == 150 and np.isfinite(metrics["final_loss"])
    assert after["psnr_db"] >= before["psnr_db"] + 6.0, (before, after)
    assert after["codes_used_fraction"] > 0.1, after  # did not collapse onto a handful of codes


@pytest.mark.slow  # trains
def test_a_clip_round_trips_through_the_tokenizer_frame_by_frame_as_well_as_pictures_do(tiny_text_vocab):
    """A world clip encodes as one image run per frame between <bov> <eov> and decodes back to
    its frames; each frame's PSNR is about a picture's (the tokenizer trains on both)."""
    cfg = dataclasses.replace(ImageTokenizerConfig.tiny(), steps=300)
    model, _ = train_image_tokenizer(cfg, world_images, seed=0)
    vocab = Vocabulary(tiny_text_vocab, get_config("tiny").model, image=ImageCodec(model))
    rng = np.random.default_rng(7)
    pictures = world_images(rng, 64, "validation")[:48]  # the first 48 are pictures, the rest clip frames
    picture_db = evaluate(model, pictures)["psnr_db"]
    for _ in range(6):
        frames, words = world.sample_clip(rng, "validation")
        (decoded,) = vocab.decode(vocab.encode([Video(frames=frames)], bos=False, eos=False).ids)
        assert isinstance(decoded, Video) and decoded.codes.shape == (world.FRAMES, 64)
        assert decoded.frames.shape == frames.shape and decoded.frames.dtype == np.uint8
        for original, back in zip(frames, decoded.frames):
            mse = np.mean((original / 255.0 - back / 255.0) ** 2)
            assert 10 * np.log10(1 / mse) > picture_db - 3.0, (words, picture_db)
