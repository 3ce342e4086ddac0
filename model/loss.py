"""Next-token cross-entropy with an optional z-loss, over the positions a loss mask selects."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(
    logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array, z_loss_weight: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean over masked positions of -log p(target) + z_loss_weight * log(Z)^2.

    The z-loss keeps the softmax normaliser near 1, which stops logits drifting upward
    (the instability PaLM and Chameleon report). Returns the total and its parts, including the
    per-position negative log-likelihood `nll_bt` (for per-modality losses without a second softmax).
    """
    logits_btv = logits_btv.astype(jnp.float32)
    log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    mask_bt = mask_bt.astype(jnp.float32)
    count = jnp.maximum(mask_bt.sum(), 1.0)
    nll_bt = log_z_bt - target_logit_bt
    nll = (nll_bt * mask_bt).sum() / count
    z_loss = (jnp.square(log_z_bt) * mask_bt).sum() / count
    return nll + z_loss_weight * z_loss, {"nll": nll, "z_loss": z_loss, "nll_bt": nll_bt}
