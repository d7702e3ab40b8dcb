r"""Exact lag sensitivity and its effective-learning-rate profile (THEORY.md §4.4), probe tier.

On the probe batch, for every example ``b`` and pair ``1 <= k < t <= T`` (lag ``ell = t - k``,
optionally capped at ``max_lag`` and at a subset of end times):

1. :math:`S_{t,k} = \|J_t \cdots J_{k+1}\|_2`, the exact largest singular value;
2. the profile :math:`\tilde\mu(\ell) = \mathrm{med}_{t-k=\ell} S / \mathrm{med}_{t-k=1} S`;
3. the gate-product predictors :math:`P_{t,k}` (neuron mean of :math:`\prod_{j=k+1}^t\alpha_j`,
   the candidate weight, and of :math:`\prod(1-\alpha_j)`, the retention) and the OLS power
   fit ``log S = c + s log P`` over all ``(b, t, k)`` with the 1 %/99 % trim, with its ``R^2``.

``compat="paper-code"`` follows the authors' code instead (THEORY.md §2.3): ``B`` from the
post-update state, the reversed product :math:`J_{k+1}\cdots J_t`, 5 plain power iterations for
the norm, and ``ell + 1`` gate factors (:math:`\prod_{j=k}^{t}`) in the predictor.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatezoo.instruments import steps
from gatezoo.instruments.products import lag_products, probe_states
from gatezoo.instruments.protocol import ModelFns
from gatezoo.instruments.stats import (
    LOG_FLOOR,
    lag_grid,
    masked_median,
    power_fit,
    power_norm,
    prefix_sum,
    spectral_norm,
)
from gatezoo.instruments.views import Measure, StepViews

__all__ = ["Sensitivity", "lag_sensitivity", "sensitivity_metrics", "sensitivity"]


class Sensitivity(NamedTuple):
    """Lag sensitivities of a probe batch; arrays ``(n_lags, n_ends, batch)``, lag ``l`` at row
    ``l - 1``; entries where ``valid`` is False are NaN.

    Attributes:
      s: :math:`S_{t,t-\\ell}`.
      log_candidate, log_retention: ``log P`` of the two predictors (``None`` without gates).
      valid: the pair exists (``t - ell >= 1``).
      ends: the end times ``t`` (1-indexed), ``(n_ends,)``.
    """

    s: jax.Array
    log_candidate: jax.Array | None
    log_retention: jax.Array | None
    valid: jax.Array
    ends: jax.Array


def lag_sensitivity(
    fns: ModelFns,
    params: Any,
    xs: jax.Array,
    ys: jax.Array,
    *,
    compat: str = "exact",
    max_lag: int | None = None,
    ends: jax.Array | None = None,
) -> Sensitivity:
    """:math:`S_{t,k}` for lags ``1..max_lag`` (default ``T-1``) and end times ``ends``
    (1-indexed, default every ``t = 2..T``) on the batch ``xs``; see the module docstring."""
    steps.check_compat(compat)
    T, batch = xs.shape[1], xs.shape[0]
    n_lags = T - 1 if max_lag is None else min(int(max_lag), T - 1)
    ends = jnp.arange(2, T + 1) if ends is None else jnp.asarray(ends)
    n_ends = ends.shape[0]
    cp, prev, xs_t = probe_states(fns, params, xs, ys)
    end_n = jnp.repeat(ends, batch)
    ex_n = jnp.tile(jnp.arange(batch), n_ends)
    norm = spectral_norm if compat == "exact" else power_norm
    _, s, valid = lag_products(
        fns, cp, prev, xs_t, end_n, ex_n, n_lags, compat=compat, per_lag=norm
    )
    shape = (n_lags, n_ends, batch)
    s = jnp.where(valid, s, jnp.nan).reshape(shape)
    valid = valid.reshape(shape)
    log_c = log_r = None
    if fns.gated:
        alpha = steps.gate_trace(fns, cp, prev, xs_t)  # (T, batch, hidden)
        lags = jnp.arange(1, n_lags + 1)[:, None]
        k = ends[None, :] - lags  # (n_lags, n_ends)
        lo = jnp.clip(k - 1 if compat == "paper-code" else k, 0)
        hi = ends[None, :] + jnp.zeros_like(k)

        def log_pred(log_f):
            log_f = jnp.maximum(log_f, LOG_FLOOR)  # differences of -inf would be NaN
            cum = jnp.concatenate([jnp.zeros_like(log_f[:1]), prefix_sum(log_f)])
            window = cum[hi] - cum[lo]  # (n_lags, n_ends, batch, hidden)
            return jnp.log(jnp.mean(jnp.exp(window), axis=-1))

        log_c = log_pred(jnp.log(alpha))
        log_r = log_pred(jnp.log1p(-alpha))
    return Sensitivity(s, log_c, log_r, valid, ends)


def sensitivity_metrics(sens: Sensitivity, trim: float = 0.01) -> dict[str, jax.Array]:
    """Scalar summaries, keyed by bare quantity (:mod:`gatezoo.metric_schema`):
    ``median_lag1``, ``profile@ell`` on the lag grid, and per predictor
    ``{candidate,retention}_s``, ``_r2`` and ``_rms`` (root-mean-square log error of the fitted
    profile :math:`(P(\\ell)/P(1))^s` against the measured one over all lags)."""
    s, valid = sens.s, sens.valid
    n_lags = s.shape[0]
    med = masked_median(s, valid, axis=(1, 2))
    profile = med / med[0]
    out = {"median_lag1": med[0]}
    for ell in lag_grid(n_lags + 1):
        out[f"profile@{ell}"] = profile[ell - 1]
    for tag, log_p in (("candidate", sens.log_candidate), ("retention", sens.log_retention)):
        if log_p is None:
            continue
        slope, r2 = power_fit(log_p, jnp.log(s), valid & (s > 0), trim)
        p_med = masked_median(jnp.exp(log_p), valid, axis=(1, 2))
        fit = slope * jnp.log(p_med / p_med[0])
        err = fit - jnp.log(profile)
        ok = jnp.isfinite(err)
        rms = jnp.sqrt(jnp.sum(jnp.where(ok, err * err, 0.0)) / jnp.sum(ok))
        out[f"{tag}_s"] = slope
        out[f"{tag}_r2"] = r2
        out[f"{tag}_rms"] = rms
    return out


def sensitivity(
    fns,
    *,
    every: int = 50,
    compat: str = "exact",
    max_lag: int | None = None,
    num_ends: int | None = 16,
    trim: float = 0.01,
) -> Measure:
    """The ``sensitivity`` probe instrument (any cell; predictors only with gates).

    ``num_ends`` end times spread evenly over ``2..T`` (``None``: all, the S1 measurement) and
    ``max_lag`` (default ``T - 1``) bound the cost, ``O(num_ends * probe_batch * max_lag)``
    Jacobians, products and SVDs; the default 16 end times bound a probe's cost independently of
    ``T``. :func:`lag_sensitivity` with ``ends=None`` gives every pair.
    """
    steps.check_compat(compat)

    def measure(ctx, state, views: StepViews):
        T = ctx.probe_xs.shape[1]
        ends = None
        if num_ends is not None and num_ends < T - 1:
            ends = jnp.round(jnp.linspace(2, T, num_ends)).astype(jnp.int32)
        sens = lag_sensitivity(
            ctx.fns, ctx.params, ctx.probe_xs, ctx.probe_ys, compat=compat, max_lag=max_lag,
            ends=ends,
        )
        return sensitivity_metrics(sens, trim), state

    return Measure("sensitivity", lambda p: (), measure, every=every, tier="probe")
