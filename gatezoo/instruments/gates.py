r"""Gate statistics: the time-scale gate :math:`\alpha_t` and its time constants :math:`1/\alpha`.

docs/theory.md §1.2: a gate is a data-driven time step; neuron ``i`` at step ``t`` integrates with
time constant :math:`\tau_{i,t} = 1/\alpha_{i,t}` steps.
"""

from __future__ import annotations

import jax.numpy as jnp

from gatezoo.instruments.stats import fast_quantiles, masked_quantiles, subsample
from gatezoo.instruments.views import Measure, StepViews

__all__ = ["gate_stats", "gates"]

_QUANTILES = (0.1, 0.5, 0.9)


def gate_stats(alpha, valid=None) -> dict:
    """Summaries of a gate trace ``alpha (T, batch, hidden)``, keyed by bare quantity
    (:mod:`gatezoo.metric_schema`, instrument ``gates``).

    ``alpha_mean/min/max`` over everything; ``alpha_p10/p50/p90`` over batch, time and neurons
    (on a strided subsample of at most 4k values); ``tau_mean = E[1/alpha]`` and
    ``tau_p50/p90`` (``1/alpha_p50``, ``1/alpha_p10``); ``neuron_spread``: the standard deviation
    across neurons of the per-neuron mean gate (0 for a scalar gate); ``time_std``: the mean over
    neurons and batch of the standard deviation over time (how much the gate moves in a sequence).
    With ``valid`` (``(T, batch)`` bools, False on padded steps) every statistic is over the
    valid steps only.
    """
    if valid is not None:
        return _masked_gate_stats(alpha, valid)
    q = fast_quantiles(subsample(alpha), _QUANTILES)
    per_neuron = jnp.mean(alpha, axis=(0, 1))
    return {
        "alpha_mean": jnp.mean(alpha),
        "alpha_min": jnp.min(alpha),
        "alpha_max": jnp.max(alpha),
        "alpha_p10": q[0],
        "alpha_p50": q[1],
        "alpha_p90": q[2],
        "tau_mean": jnp.mean(1.0 / alpha),
        "tau_p50": 1.0 / q[1],
        "tau_p90": 1.0 / q[0],
        "neuron_spread": jnp.std(per_neuron),
        "time_std": jnp.mean(jnp.std(alpha, axis=0)),
    }


def _masked_gate_stats(alpha, valid) -> dict:
    w = jnp.broadcast_to(valid[..., None], alpha.shape)
    total = lambda a, axis=None: jnp.sum(jnp.where(w, a, 0.0), axis=axis)  # noqa: E731
    n = jnp.sum(w)
    q = masked_quantiles(subsample(alpha), subsample(w), _QUANTILES)
    per_neuron = total(alpha, (0, 1)) / jnp.sum(w, axis=(0, 1))
    steps = jnp.maximum(jnp.sum(w, axis=0), 1)  # (batch, hidden): each sequence's length
    seq_mean = total(alpha, 0) / steps
    seq_var = total(jnp.square(alpha - seq_mean), 0) / steps
    return {
        "alpha_mean": total(alpha) / n,
        "alpha_min": jnp.min(jnp.where(w, alpha, jnp.inf)),
        "alpha_max": jnp.max(jnp.where(w, alpha, -jnp.inf)),
        "alpha_p10": q[0],
        "alpha_p50": q[1],
        "alpha_p90": q[2],
        "tau_mean": total(1.0 / alpha) / n,
        "tau_p50": 1.0 / q[1],
        "tau_p90": 1.0 / q[0],
        "neuron_spread": jnp.std(per_neuron),
        "time_std": jnp.mean(jnp.sqrt(seq_var)),
    }


def gates(fns, *, every: int | None = None) -> Measure:
    """The ``gates`` instrument (gated cells): :func:`gate_stats` of this step's gate trace
    (:class:`StepViews`: the first 16 examples of the batch, every valid step)."""

    def measure(ctx, state, views: StepViews):
        return gate_stats(views.alpha, valid=views.valid), state

    return Measure("gates", lambda p: (), measure, every=every)
