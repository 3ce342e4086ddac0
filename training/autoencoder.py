"""Fitting a tokenizer's autoencoder: batches from any source, one jitted step, a stop on NaN.

The image and audio tokenizers differ in their loss and optimizer, not in how they are fitted.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import jax
import numpy as np
import optax
from flax import nnx


def batches(source, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Batches from an array [N, ...] (sampled with replacement), a sampler
    `fn(rng, batch_size) -> array`, or an iterator of batches."""
    rng = np.random.default_rng(seed)
    if isinstance(source, np.ndarray):
        while True:
            yield source[rng.integers(0, len(source), batch_size)]
    elif callable(source):
        while True:
            yield np.asarray(source(rng, batch_size))
    else:
        yield from source


def warmup_cosine_adam(learning_rate: float, warmup_steps: int, steps: int) -> optax.GradientTransformation:
    """Adam with linear warmup, cosine decay to 2% and global-norm clipping at 1."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(warmup_steps, max(steps - 1, 1)), max(steps, 2), end_value=learning_rate * 0.02
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def fit(
    name: str,
    model: nnx.Module,
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    source,
    batch_size: int,
    steps: int,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
    log_every: int = 50,
) -> tuple[nnx.Module, dict]:
    """Minimise `loss_fn(graphdef, params, batch) -> (loss, aux)` for `steps` steps; updates `model` in place.

    The step is a pure jitted function over the split parameters, donating them and the optimizer
    state. Returns {"steps", "seconds", "initial_loss", "final_loss", "losses": [(step, loss)]}.
    """
    if steps < 1:
        raise ValueError(f"fitting the {name} needs at least one step, got steps={steps}")
    graphdef, params = nnx.split(model, nnx.Param)
    opt_state = tx.init(params)

    def step(params, opt_state, batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(graphdef, params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    step = jax.jit(step, donate_argnums=(0, 1))
    start, losses = time.perf_counter(), []
    stream = batches(source, batch_size, seed)
    for i in range(steps):
        batch = next(stream, None)
        if batch is None:
            raise ValueError(f"the {name}'s data ran out after {i} of {steps} steps")
        params, opt_state, loss, aux = step(params, opt_state, batch)
        if i % log_every == 0 or i == steps - 1:
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"{name} loss is {loss} at step {i}")
            losses.append((i, loss))
            if log:
                log({"step": i, "loss": loss, "seconds": time.perf_counter() - start, **jax.device_get(aux)})
    nnx.update(model, params)
    return model, {"steps": steps, "seconds": time.perf_counter() - start,
                   "initial_loss": losses[0][1], "final_loss": losses[-1][1], "losses": losses}
