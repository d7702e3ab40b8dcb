"""Losses and metrics shared by the tasks (pure functions of predictions and targets)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["mean_squared_error", "softmax_cross_entropy", "accuracy"]


def mean_squared_error(pred: jax.Array, y: jax.Array) -> jax.Array:
    r""":math:`\frac{1}{N}\sum (\hat y - y)^2` over every element (no factor 1/2, so the MSE of
    predicting the mean equals the target's variance)."""
    return jnp.mean(jnp.square(pred - y))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Mean of :math:`-\log \mathrm{softmax}(z)_{y}` over all leading axes (nats)."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of positions whose arg-max class is the label."""
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
