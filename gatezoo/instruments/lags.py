r"""The error signal by lag and the gate-product predictors of its decay (THEORY.md §4.1-§4.3).

Measured profile: the adjoint norm :math:`\|\partial L/\partial h_{T-\ell}\|` at lag ``ell`` from
the last step, from the same backward pass as the gradient (no extra pass).

Predictors, per example ``b`` and lag ``ell``, as neuron means of products over the window
(cumulative products from the last step, no loop over lags):

* candidate weight :math:`P^{c}_\ell = \tfrac1{d_h}\sum_i \prod_{j=T-\ell+1}^{T} \alpha^{(i)}_j`
  (the S1 code's predictor, :math:`\alpha^\ell` for a constant gate);
* retention :math:`P^{r}_\ell = \tfrac1{d_h}\sum_i \prod_j (1-\alpha^{(i)}_j)` (the follow-up's).

Each is fitted as a power law, ``log ||lambda|| = c + s log P`` over all ``(b, ell >= 1)`` with the
1 %/99 % trim of §4.4; ``s`` and ``R^2`` say how well it explains the measured decay.
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

__all__ = ["adjoint_profile", "window_products", "lags", "gate_transport"]


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


def gate_transport(fns, *, every: int | None = None) -> Measure:
    """The ``transport`` instrument (gated cells): gate-product predictors vs the adjoint profile.

    Metrics ``transport/{candidate,retention}_s`` and ``..._r2`` (fitted power and R^2), and
    ``transport/{candidate,retention}@ell`` (the batch-median predictor at the lag grid). The
    fit uses the examples of the gate trace (:class:`StepViews`: the first 16 of the batch).
    """

    def measure(ctx, state, views: StepViews):
        alpha = views.end_aligned(views.alpha)
        b = alpha.shape[1]
        norms = views.end_aligned(views.adjoint_norms[:, :b])  # (T, b)
        T = norms.shape[0]
        measured = jnp.log(norms[::-1][1:])  # lag 1..T-1
        valid = views.end_valid(b)
        factors = jnp.stack([alpha, 1.0 - alpha])
        if valid is not None:  # padding (now first) multiplies by 1; its lags are left out
            factors = jnp.where(valid[None, ..., None], factors, 1.0)
        # both predictors in one pass: (2, T, b, hidden) factors, products, fits and medians
        p = window_products(factors)  # (2, T-1, b)
        mask = jnp.ones_like(measured, bool) if valid is None else valid[::-1][1:]
        s, r2 = jax.vmap(lambda lp: power_fit(lp, measured, mask))(jnp.log(p))
        med = fast_median(p) if valid is None else jax.vmap(lambda q: batch_median(q, mask))(p)
        out = {}
        for i, tag in enumerate(("candidate", "retention")):
            out[f"{tag}_s"] = s[i]
            out[f"{tag}_r2"] = r2[i]
            for ell in lag_grid(T):
                out[f"{tag}@{ell}"] = med[i, ell - 1]
        return out, state

    return Measure("transport", lambda p: (), measure, every=every)
