"""Losses and metrics shared by the tasks (pure functions of predictions and targets)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "mean_squared_error", "softmax_cross_entropy", "accuracy", "valid_mask", "masked_mean",
]


def mean_squared_error(pred: jax.Array, y: jax.Array) -> jax.Array:
    r""":math:`\frac{1}{N}\sum (\hat y - y)^2` over every element (no factor 1/2, so the MSE of
    predicting the mean equals the target's variance).

    Raises:
      ValueError: when ``pred`` and ``y`` differ in shape (broadcasting ``(B, 1)`` against
        ``(B,)`` would silently average ``B x B`` wrong pairs).
    """
    if jnp.shape(pred) != jnp.shape(y):
        raise ValueError(f"the prediction has shape {jnp.shape(pred)} but the targets "
                         f"{jnp.shape(y)}; they must match")
    return jnp.mean(jnp.square(pred - y))


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, reduce: bool = True
) -> jax.Array:
    r"""Mean of :math:`-\log \mathrm{softmax}(z)_{y}` over all leading axes (nats);
    ``reduce=False`` keeps them: ``labels.shape``."""
    if jnp.shape(logits)[:-1] != jnp.shape(labels):
        raise ValueError(f"the logits have shape {jnp.shape(logits)} but the labels "
                         f"{jnp.shape(labels)}; the labels must be the logits' shape without "
                         "the class axis")
    per_position = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.mean(per_position) if reduce else per_position


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of positions whose arg-max class is the label."""
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def valid_mask(lengths: jax.Array, seq_len: int) -> jax.Array:
    """``(B,)`` lengths -> ``(B, seq_len)`` bool mask, True at the valid steps ``t < length``."""
    return jnp.arange(seq_len)[None, :] < lengths[:, None]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` over the positions where ``mask`` is True (same shape, e.g. ``(B, T)``):
    every valid step weighs the same, whatever sequence it belongs to."""
    # where, not a product: whatever a model emits at padded steps (even inf) cannot leak in.
    total = jnp.sum(jnp.where(mask, values, 0.0))
    # lengths >= 1 keeps the count positive; the floor only guards a hand-made all-False mask.
    return total / jnp.maximum(jnp.sum(mask.astype(values.dtype)), 1.0)
