"""Shared fixtures: a vocabulary over the world's text with cheap stand-in image and audio codecs.

Every XLA program the suite compiles is kept in a compilation cache for the session (subprocesses
inherit it through the environment): the same small model's engine, train step and evaluator are
compiled by test after test, and a hit reads the compiled program back instead of compiling it
again. The cache is a fresh folder per session, so nothing carries over from another run.
"""

import os
import tempfile

import jax
import numpy as np
import pytest

from data import world
from data.media import prepare_image
from data.vocab import Vocabulary
from parallel.sharding import make_mesh
from serving.server import make_server
from tests.helpers import WORLD_MODEL
from tests.serving_helpers import SERVE_CFG, served_model, serving_live
from tokenization.text import train_text_tokenizer

os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="xla-cache-")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class BlockColourCodec:
    """Test double for the image tokenizer: the mean colour of each 4x4 block, 10 levels a channel."""

    length = 64

    def encode(self, pixels):
        pixels = prepare_image(pixels, 32)  # any size in, as the real tokenizer's codec does
        blocks = np.asarray(pixels, np.float32).reshape(8, 4, 8, 4, 3).mean(axis=(1, 3)) / 256 * 10
        digits = blocks.astype(int).reshape(64, 3)
        return digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]

    def encode_batch(self, images):
        return [self.encode(image) for image in images]

    def decode(self, codes):
        digits = np.stack([codes // 100, codes // 10 % 10, codes % 10], -1).reshape(8, 8, 3)
        return np.repeat(np.repeat((digits * 25.6).astype(np.uint8), 4, 0), 4, 1)


class FrameLevelCodec:
    """Test double for the audio tokenizer: the RMS level of each 40 ms frame (25 per second)."""

    length = None

    def encode(self, waveform):
        waveform = np.asarray(waveform, np.float32)
        frames = np.pad(waveform, (0, -len(waveform) % 640)).reshape(-1, 640)  # padded, as the real tokenizer pads
        return np.minimum(999, (np.sqrt((frames**2).mean(-1)) * 1000).astype(int))

    def encode_batch(self, waveforms):
        return [self.encode(waveform) for waveform in waveforms]

    def decode(self, codes):
        return np.repeat(np.asarray(codes, np.float32) / 1000, 640)


@pytest.fixture(scope="session")
def vocab():
    text = train_text_tokenizer(world.world_texts(0, 300), WORLD_MODEL.text_vocab_size)
    return Vocabulary(text, WORLD_MODEL, image=BlockColourCodec(), audio=FrameLevelCodec())




@pytest.fixture(scope="session")
def live(vocab):
    """A served random-init model on uvicorn, configured as serve.py does (tests/serving_helpers.py)."""
    graphdef, state = served_model()
    with serving_live(make_server(SERVE_CFG, vocab, graphdef, state, make_mesh(SERVE_CFG.mesh))) as server:
        yield server
