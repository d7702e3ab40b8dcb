r"""The error signal by lag (docs/theory.md §4.1-§4.3).

Measured profile: the adjoint norm :math:`\|\partial L/\partial h_{T-\ell}\|` at lag ``ell`` from
the last step, from the same backward pass as the gradient (no extra pass). What the theory
predicts for it, and the attribution of its persistence, are the ``transport`` instrument's
(:mod:`gatezoo.instruments.transport`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gatezoo.instruments.stats import (
    fast_median,
    lag_grid,
    masked_quantiles,
    power_fit,
    suffix_mean_products,
)
from gatezoo.instruments.views import Measure, StepViews

__all__ = ["adjoint_profile", "batch_median", "window_products", "lags"]


def adjoint_profile(norms: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Median over the batch of ``||dL/dh_{T-ell}||``, ``ell = 0..T-1``: ``(T, batch) -> (T,)``.

    With ``valid`` (``(T, batch)``, rows aligned at each sequence's end) the median at each lag
    is over the sequences long enough to have that lag (NaN where none is).
    """
    if valid is None:
        return fast_median(norms[::-1])
    return batch_median(norms[::-1], valid[::-1])


def batch_median(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Median over the last axis of the entries where ``valid``, row by row (NaN for none)."""
    return jax.vmap(lambda r, m: masked_quantiles(r, m, (0.5,))[0])(x, valid)


def window_products(factor: jax.Array) -> jax.Array:
    """Neuron-mean products over the last ``ell`` steps, ``(..., T, batch, hidden) -> (..., T-1,
    batch)`` (leading axes, e.g. one per predictor, pass through).

    Row ``ell - 1`` holds :math:`\\tfrac1{d_h}\\sum_i\\prod_{j>T-\\ell} f^{(i)}_j` for
    ``ell = 1..T-1``: a cumulative product from the last step (no logs, see
    :func:`~gatezoo.instruments.stats.suffix_mean_products`).
    """
    lead = factor.ndim - 3
    means = suffix_mean_products(jnp.moveaxis(factor, lead, 0))[:-1]  # (T-1, ..., batch)
    return jnp.moveaxis(means, 0, lead)


def lags(fns, *, every: int | None = None) -> Measure:
    """The ``lags`` instrument (any cell): the adjoint-norm profile by lag from the last step.

    Metrics: ``lags/adjoint_last`` (median ``||dL/dh_T||``), ``lags/ratio@ell`` (profile at lag
    ``ell`` over lag 0, on the grid 1, 2, 4, ...), ``lags/decay_rate`` (OLS slope of
    ``log profile`` on ``ell``: the log-gain per step of lag). Lags of a padded batch count from
    each sequence's own last valid step.
    """

    def measure(ctx, state, views: StepViews):
        norms = views.adjoint_norms
        prof = adjoint_profile(views.end_aligned(norms), views.end_valid(norms.shape[1]))
        T = prof.shape[0]
        out = {"adjoint_last": prof[0]}
        for ell in lag_grid(T):
            out[f"ratio@{ell}"] = prof[ell] / prof[0]
        ell = jnp.arange(T, dtype=prof.dtype)
        out["decay_rate"] = power_fit(ell, jnp.log(prof), jnp.isfinite(prof), trim=0.0)[0]
        return out, state

    return Measure("lags", lambda p: (), measure, every=every)
