"""One pure, jitted training step: AdamW with warmup + cosine, global-norm clipping, gradient
accumulation, z-loss, per-modality losses, and a guard that keeps the last good state on NaN.

The state is a plain dict pytree {"params", "opt_state", "step"}, so orbax saves it as it is and
jit donates it whole.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs.base import TrainConfig
from data.segments import MODALITY_NAMES
from model.loss import cross_entropy


def schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup, then cosine decay to a tenth of the peak at `cfg.steps`."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, min(cfg.warmup_steps, max(cfg.steps - 1, 1)), max(cfg.steps, 2),
        end_value=cfg.learning_rate * 0.1,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    # Decay matrices only: norm scales (1-D) are left alone, as is usual for transformers.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip_norm),
        optax.adamw(schedule(cfg), b1=0.9, b2=0.95, weight_decay=cfg.weight_decay, mask=decay_mask),
    )


def opt_state_shardings(tx: optax.GradientTransformation, params: nnx.State, mesh: Mesh):
    """Each moment split like the parameter it tracks; counts replicated. `params` may be abstract."""
    return optax.tree_utils.tree_map_params(
        tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, params), jax.tree.map(lambda p: p.sharding, params),
        transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()))


def init_opt_state(tx: optax.GradientTransformation, params: nnx.State, mesh: Mesh):
    """The optimizer state, laid out by `opt_state_shardings`.

    A bare `jax.jit(tx.init)` replicates all of it: zeros depend on no input, so nothing tells XLA
    where they go (Adam's two moments in full on every device, and a second compile at step 2 when
    the step hands them back split).
    """
    return jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params, mesh))(params)


def loss_and_metrics(graphdef: nnx.GraphDef, params: nnx.State, batch: dict, z_loss_weight: float):
    """Masked next-token loss over packed rows, plus the per-modality sums that make separate losses."""
    logits_btv, _ = nnx.merge(graphdef, params)(batch["inputs"], batch["positions"], batch["segment_ids"])
    loss, parts = cross_entropy(logits_btv, batch["targets"], batch["loss_mask"], z_loss_weight)
    nll_bt = parts.pop("nll_bt")
    sums = {}
    for index, name in enumerate(MODALITY_NAMES):
        mask_bt = (batch["loss_mask"] != 0) & (batch["modality"] == index)
        sums[f"{name}_nll_sum"] = jnp.sum(nll_bt * mask_bt)
        sums[f"{name}_tokens"] = jnp.sum(mask_bt)
    return loss, {**parts, **sums}


def train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, cfg: TrainConfig):
    """state, batch -> state, metrics.

    With `grad_accum_steps` = k, the batch's rows are split into k micro-batches whose gradients
    are summed, each weighted by its share of the batch's trained tokens: the same update as one
    pass over the whole batch, with 1/k of the activations.
    """

    def micro_grads(params, batch, total_tokens):
        def weighted(params):
            loss, aux = loss_and_metrics(graphdef, params, batch, cfg.z_loss_weight)
            share = jnp.sum(batch["loss_mask"] != 0) / jnp.maximum(total_tokens, 1)
            means = {"loss": loss, "nll": aux.pop("nll"), "z_loss": aux.pop("z_loss")}
            return loss * share, {**{n: v * share for n, v in means.items()}, **aux}

        grads, metrics = jax.grad(weighted, has_aux=True)(params)
        return grads, metrics

    def step(state, batch):
        params, k = state["params"], cfg.grad_accum_steps
        total_tokens = jnp.sum(batch["loss_mask"] != 0)
        if k == 1:
            grads, metrics = micro_grads(params, batch, total_tokens)
        else:
            micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)

            def accumulate(total, one):
                return jax.tree.map(jnp.add, total, micro_grads(params, one, total_tokens)), None

            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(micro_grads, params, first, total_tokens))
            (grads, metrics), _ = jax.lax.scan(accumulate, zeros, micro)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": state["step"] + 1}
        grad_norm, param_norm = optax.tree.norm(grads), optax.tree.norm(new["params"])
        # An update that overflows the parameters (their norm past float32's range: a learning-rate
        # blow-up) is refused like a NaN loss, so the state kept is one whose loss was finite.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
        # On a NaN/inf step keep the last good state, so the run can stop and save it.
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        return new, {**metrics, "grad_norm": grad_norm, "param_norm": param_norm, "finite": finite,
                     "learning_rate": schedule(cfg)(state["step"])}

    return step


def modality_losses(metrics: dict) -> dict:
    """Mean loss per modality from a step's sums (absent when a batch trained none of it)."""
    out = {}
    for name in MODALITY_NAMES:
        tokens = float(metrics[f"{name}_tokens"])
        if tokens:
            out[f"loss/{name}"] = float(metrics[f"{name}_nll_sum"]) / tokens
    return out
