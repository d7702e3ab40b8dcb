r"""Exact lag sensitivity and its effective-learning-rate profile (docs/theory.md §4.4), probe tier.

On the probe batch, for every example ``b`` and pair ``0 <= k < t <= T`` (lag ``ell = t - k``,
optionally capped at ``max_lag`` and at a subset of end times):

1. :math:`S_{t,k} = \|J_t \cdots J_{k+1}\|_2`, the largest singular value (exact by SVD, or
   by warm-started power iterations: S1's setting, ``norm="power"``);
2. the profile :math:`\tilde\mu(\ell) = \mathrm{med}_{t-k=\ell} S / \mathrm{med}_{t-k=1} S`;
3. the gate-product predictors :math:`P_{t,k}` (neuron mean of :math:`\prod_{j=k+1}^t\alpha_j`,
   the candidate weight, and of :math:`\prod(1-\alpha_j)`, the retention) and the OLS power
   fit ``log S = c + s log P`` over all ``(b, t, k)`` with the 1 %/99 % trim, with its ``R^2``.

``compat="paper-code"`` follows the authors' code instead (docs/theory.md §2.3): pairs from
``k = 1``, ``B`` from the post-update state, the reversed product :math:`J_{k+1}\cdots J_t`, 5
plain power iterations for the norm, and ``ell + 1`` gate factors (:math:`\prod_{j=k}^{t}`) in
the predictor.

:func:`lag_sensitivity` and :func:`lag_profile` are the one implementation of these quantities:
``gatezoo reproduce s1`` calls them with S1's settings.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.instruments import steps
from gatezoo.instruments.norms import power_iteration, release_power_norm, spectral_norm
from gatezoo.instruments.products import lag_products, probe_states
from gatezoo.instruments.protocol import LayerFns
from gatezoo.instruments.stats import (
    LOG_FLOOR,
    lag_grid,
    masked_median,
    masked_quantiles,
    power_fit,
    prefix_sum,
)
from gatezoo.instruments.views import Measure, StepViews

__all__ = ["Sensitivity", "NORMS", "lag_sensitivity", "lag_profile", "sensitivity_metrics",
           "sensitivity"]


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


#: norms of :func:`lag_sensitivity`: ``svd`` exact at every lag; ``power`` exact at lag 1 and
#: warm-started power iterations beyond (S1's cost at ``T = 80``); paper-code: the release's
NORMS = ("svd", "power")
_END_BLOCKS = 4  # end-time blocks scanned to their own longest lag (about 5/8 of the work)
_FRESH_ITERS = 40  # iterations that converge a lag-1 vector before the warm-started lags


def lag_sensitivity(
    fns: LayerFns,
    params: Any,
    xs: jax.Array,
    ys: jax.Array,
    *,
    compat: str = "exact",
    max_lag: int | None = None,
    ends: Any = None,
    norm: str = "svd",
    power_iters: int | None = None,
    key: jax.Array | None = None,
) -> Sensitivity:
    r""":math:`S_{t,k} = \|J_t \cdots J_{k+1}\|_2` and its gate-product predictors on the batch
    ``xs``: the one implementation behind the ``sensitivity`` instrument and S1.

    Pairs are ``0 <= k < t <= T`` (``1 <= k`` under ``compat="paper-code"``, the release's),
    lags ``1..max_lag`` (default: every lag) and end times ``ends`` (1-indexed; default every
    one). ``norm="svd"`` takes every norm exactly; ``norm="power"`` takes lag 1 exactly and each
    longer window by ``power_iters`` (default 4) iterations warm-started from the window one lag
    shorter (:func:`~gatezoo.instruments.norms.power_iteration`; its convergence error is tested
    against the SVD). Under paper-code the norm is the release's
    (:func:`~gatezoo.instruments.norms.release_power_norm`, ``power_iters`` default 5) from
    Gaussian start vectors drawn from ``key``, fresh for every window, or from the normalised
    ones vector when ``key`` is None.
    """
    steps.check_compat(compat)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    paper = compat == "paper-code"
    first = 1 if paper else 0
    batch, T = xs.shape[0], xs.shape[1]
    n_lags = T - first if max_lag is None else min(int(max_lag), T - first)
    ends = np.arange(first + 1, T + 1) if ends is None else ends
    iters = power_iters if power_iters is not None else (5 if paper else 4)
    cp, prev, xs_t = probe_states(fns, params, xs, ys)
    s_rows, valid_rows = [], []
    for block, key_b in _end_blocks(ends, first, n_lags, key):
        end_n = jnp.repeat(block.ends, batch)
        ex_n = jnp.tile(jnp.arange(batch), block.ends.shape[0])
        per_lag, init = _lag_norm(norm if not paper else "release", iters, key_b,
                                  end_n.shape[0], fns.state_size, xs_t.dtype)
        _, s, valid = lag_products(fns, cp, prev, xs_t, end_n, ex_n, block.n_lags, compat=compat,
                                   first=first, per_lag=per_lag, per_lag_init=init)
        pad = n_lags - block.n_lags
        s_rows.append(jnp.pad(s, ((0, pad), (0, 0)), constant_values=jnp.nan))
        valid_rows.append(jnp.pad(valid, ((0, pad), (0, 0))))
    ends = jnp.asarray(ends)
    shape = (n_lags, ends.shape[0], batch)
    valid = jnp.concatenate(valid_rows, axis=1).reshape(shape)
    s = jnp.where(valid, jnp.concatenate(s_rows, axis=1).reshape(shape), jnp.nan)
    log_c = log_r = None
    if fns.gated:
        alpha = steps.gate_trace(fns, cp, prev, xs_t)  # (T, batch, hidden)
        log_c = _log_predictor(jnp.log(alpha), ends, n_lags, paper)
        log_r = _log_predictor(jnp.log1p(-alpha), ends, n_lags, paper)
    return Sensitivity(s, log_c, log_r, valid, ends)


class _Block(NamedTuple):
    ends: jax.Array
    n_lags: int


def _end_blocks(ends: Any, first: int, n_lags: int, key: jax.Array | None):
    """Contiguous blocks of the end times, each scanned only to its own longest lag (static end
    times only; traced ones are one block), with one start-vector key per block."""
    try:
        concrete = np.asarray(ends)
    except jax.errors.TracerArrayConversionError:
        concrete = None
    if concrete is None or concrete.size < _END_BLOCKS:
        blocks = [_Block(jnp.asarray(ends), n_lags)]
    else:
        parts = np.array_split(concrete, _END_BLOCKS)
        blocks = [_Block(jnp.asarray(p), int(min(n_lags, max(int(p.max()) - first, 1))))
                  for p in parts if p.size]
    keys = [None] * len(blocks) if key is None else list(jax.random.split(key, len(blocks)))
    return list(zip(blocks, keys, strict=True))


def _lag_norm(kind: str, iters: int, key, n: int, d: int, dtype):
    """``(per_lag, init)`` for :func:`lag_products`: the norm of every window at every lag."""
    if kind == "svd":
        return (lambda prod, aux: (spectral_norm(prod), aux)), None
    if kind == "release":
        def release(prod, lag):
            if key is None:
                v = jnp.ones((n, d), dtype)
            else:
                v = jax.random.normal(jax.random.fold_in(key, lag), (n, d), dtype)
            return release_power_norm(prod, v, iters), lag + 1

        return release, jnp.ones((), jnp.int32)

    def warm(prod, carry):
        # the window grows to the past, so its output-side singular vector moves least: iterate
        # on the transpose; lag 1 is exact and converges the vector the longer lags start from
        u, lag = carry
        left = jnp.swapaxes(prod, -1, -2)

        def exact(u):
            return spectral_norm(prod), power_iteration(left, u, _FRESH_ITERS)[1]

        s, u = jax.lax.cond(lag == 1, exact, lambda u: power_iteration(left, u, iters), u)
        return s, (u, lag + 1)

    return warm, (jnp.ones((n, d), dtype) / jnp.sqrt(d), jnp.ones((), jnp.int32))


def _log_predictor(log_f: jax.Array, ends: jax.Array, n_lags: int, paper: bool) -> jax.Array:
    """``log`` of the neuron mean of :math:`\\prod_j f_j` over each window ``(lag, end)``:
    factors ``j = k+1..t`` (``k..t``, ``ell + 1`` of them, under paper-code), ``(n_lags, n_ends,
    batch)``; ``log_f (T, batch, hidden)``."""
    lags = jnp.arange(1, n_lags + 1)[:, None]
    k = ends[None, :] - lags  # (n_lags, n_ends)
    lo = jnp.clip(k - 1 if paper else k, 0)
    hi = ends[None, :] + jnp.zeros_like(k)
    log_f = jnp.maximum(log_f, LOG_FLOOR)  # differences of -inf would be NaN
    cum = jnp.concatenate([jnp.zeros_like(log_f[:1]), prefix_sum(log_f)])
    window = cum[hi] - cum[lo]  # (n_lags, n_ends, batch, hidden)
    return jnp.log(jnp.mean(jnp.exp(window), axis=-1))


def lag_profile(
    sens: Sensitivity, trim: float = 0.01, predictor: str = "candidate"
) -> dict[str, jax.Array]:
    r"""The normalised profile of one batch's sensitivities and its power fit (docs/theory.md §4.4).

    Per lag ``ell = 1..n_lags``: ``profile`` :math:`\tilde\mu(\ell) = \mathrm{med}_{t-k=\ell}
    S / \mathrm{med}_{t-k=1} S`, ``zeroth_order`` :math:`\bar P(\ell)/\bar P(1)` (``P`` the
    ``predictor``: ``candidate`` or ``retention``, ``\bar P`` its lag-wise median) and ``fitted``
    ``zeroth_order ** slope``, where ``slope`` and ``r2`` are the OLS fit of ``log S`` on
    ``log P`` over every pair with ``S > 0`` and ``P`` within its ``trim`` and ``1 - trim``
    quantiles (``trim_low``, ``trim_high``); ``median_lag1`` is the lag-1 median of ``S``.
    Medians run over every ``(end, example)`` of the lag. Jit-able; NaN where undefined.
    """
    log_p = {"candidate": sens.log_candidate, "retention": sens.log_retention}.get(predictor)
    if predictor not in ("candidate", "retention"):
        raise ValueError(f"predictor must be 'candidate' or 'retention', got {predictor!r}")
    if log_p is None:
        raise ValueError(f"lag_profile needs the {predictor} predictor: this cell has no gates")
    s, valid = sens.s, sens.valid
    med = masked_median(s, valid, axis=(1, 2))
    p = jnp.exp(log_p)
    p_med = masked_median(p, valid, axis=(1, 2))
    ok = valid & (s > 0) & jnp.isfinite(log_p) & (p > 0)
    slope, r2 = power_fit(log_p, jnp.log(s), ok, trim)
    bounds = masked_quantiles(p.reshape(-1), ok.reshape(-1), (trim, 1.0 - trim))
    zeroth = p_med / p_med[0]
    return {
        "lags": jnp.arange(1, s.shape[0] + 1), "profile": med / med[0], "zeroth_order": zeroth,
        "fitted": zeroth**slope, "slope": slope, "r2": r2, "trim_low": bounds[0],
        "trim_high": bounds[1], "median_lag1": med[0],
    }


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
    every: int | None = None,
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
        ends = None  # static (numpy) end times: lag_sensitivity scans each block to its own lag
        if num_ends is not None and num_ends < T - 1:
            ends = np.round(np.linspace(2, T, num_ends)).astype(np.int32)
        sens = lag_sensitivity(
            ctx.fns, ctx.params, ctx.probe_xs, ctx.probe_ys, compat=compat, max_lag=max_lag,
            ends=ends,
        )
        return sensitivity_metrics(sens, trim), state

    return Measure("sensitivity", lambda p: (), measure, every=every)
