"""The train step: it learns, accumulation gives the same update, NaN keeps the last good state."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.base import TrainConfig
from tests.helpers import build, small_model_config
from training.train_step import make_optimizer, modality_losses, train_step

pytestmark = pytest.mark.slow  # each test compiles and runs train steps: 10-20 s

CFG = small_model_config()
TRAIN = TrainConfig(steps=50, learning_rate=3e-3, warmup_steps=5, z_loss_weight=1e-4)


def batch_of(rows=4, length=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (rows, length + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
        "loss_mask": (rng.random((rows, length)) < 0.8).astype(np.int32),
        "modality": rng.integers(0, 3, (rows, length)).astype(np.int32),
        "segment_ids": np.ones((rows, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy(),
    }


def initial_state(train=TRAIN):
    graphdef, state = build(CFG)
    params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
    tx = make_optimizer(train)
    return graphdef, tx, {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def test_repeated_steps_on_one_batch_drive_its_loss_down():
    graphdef, tx, state = initial_state()
    step = jax.jit(train_step(graphdef, tx, TRAIN))
    batch = batch_of()
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state["step"]) == 30 and set(modality_losses(metrics)) == {"loss/text", "loss/image", "loss/audio"}


def test_gradient_accumulation_gives_the_same_update_as_one_pass():
    graphdef, tx, state = initial_state()
    batch = batch_of(rows=4)
    one, m1 = jax.jit(train_step(graphdef, tx, TRAIN))(state, batch)
    graphdef, tx, state = initial_state()
    accumulated, m2 = jax.jit(train_step(graphdef, tx, dataclasses.replace(TRAIN, grad_accum_steps=2)))(state, batch)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), one["params"], accumulated["params"])


def test_a_non_finite_step_keeps_the_last_good_state():
    graphdef, tx, state = initial_state()
    step = jax.jit(train_step(graphdef, tx, TRAIN))
    good, _ = step(state, batch_of())
    poisoned = jax.tree.map(lambda x: x, good)
    poisoned["params"]["final_norm"]["scale"] = poisoned["params"]["final_norm"]["scale"].replace(
        jnp.full_like(good["params"]["final_norm"]["scale"][...], jnp.nan))
    after, metrics = step(poisoned, batch_of(seed=1))
    assert not bool(metrics["finite"])
    assert int(after["step"]) == int(good["step"])  # not advanced
