r"""Direction-resolved effective learning rates: anisotropy by lag and of the update
(docs/theory.md §4.5 and §6.4, the S2 measurement), probe tier.

Propagation: for each lag ``ell`` in ``{1, 2, 4, 8, 12, 16, 24, 32, 40}`` (capped at ``T - 1``),
``triples`` random ``(b, t, k = t - ell)`` on the probe batch; the singular values of the
Jacobian product :math:`M_{t,k}`; per product the anisotropy index :math:`\sigma_1/\sigma_{10}`
and the energy concentration :math:`CE_{10}` over the top 16 values (the S2 code's denominator);
the median over triples per lag.

Update: the per-sample gradients of the probe batch, flattened into rows, each row normalised,
columns centred, near-constant columns (norm ``<= 1e-10 sqrt(M)``) dropped and ``1e-8`` jitter
added; the singular values of that ``M x P`` matrix give :math:`\sigma_1/\sigma_{10}` and
:math:`CE_{10}` over all values. (S2 draws ``M = 256`` fresh sequences; here ``M`` is the probe
batch size.)

Effective rank and participation ratio (``erank``, ``pr``) of both spectra are project additions
(docs/theory.md §8 item 11), over all singular values.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gatezoo.instruments import steps
from gatezoo.instruments.products import lag_products, probe_states
from gatezoo.instruments.protocol import LayerFns
from gatezoo.instruments.stats import ANISOTROPY_LAGS, spectrum_stats
from gatezoo.instruments.views import Measure, StepViews
from gatezoo.linalg import singular_values

__all__ = ["window_spectra", "jacobian_spectra", "gradient_spectrum", "anisotropy"]


def window_spectra(
    fns: LayerFns,
    params: Any,
    xs: jax.Array,
    ys: jax.Array,
    examples: jax.Array,
    starts: jax.Array,
    lags: jax.Array,
    max_lag: int,
    *,
    compat: str = "exact",
    dtype: Any = None,
) -> jax.Array:
    r"""Singular values ``(N, d)`` of the Jacobian products :math:`J_{k+\ell} \cdots J_{k+1}` of
    ``N`` windows: example ``examples[n]``, start state ``k = starts[n]`` (``0 <= k``), lag
    ``ell = lags[n] <= max_lag`` (static bound), the reversed product under paper-code; the
    products are cast to ``dtype`` (default: the model's) before the decomposition. The one
    implementation behind the ``anisotropy`` instrument and S2's propagation anisotropy."""
    cp, prev, xs_t = probe_states(fns, params, xs, ys)
    prod, _, _ = lag_products(fns, cp, prev, xs_t, starts + lags, examples, int(max_lag),
                              stop=lags, compat=compat, first=0)
    return singular_values(prod if dtype is None else prod.astype(dtype))


def jacobian_spectra(
    fns: LayerFns,
    params: Any,
    xs: jax.Array,
    ys: jax.Array,
    key: jax.Array,
    *,
    lags: tuple[int, ...] = ANISOTROPY_LAGS,
    triples: int = 64,
    compat: str = "exact",
) -> tuple[tuple[int, ...], jax.Array]:
    """``(lags used, singular values (len(lags), triples, d))`` of random lag-``ell`` products
    (:func:`window_spectra`)."""
    batch, T = xs.shape[:2]
    lags = tuple(ell for ell in lags if ell <= T - 1)
    if not lags:
        raise ValueError(f"sequence length {T} is too short for any anisotropy lag")
    lag_n = jnp.repeat(jnp.asarray(lags), triples)
    kb, kt = jax.random.split(key)
    ex_n = jax.random.randint(kb, lag_n.shape, 0, batch)
    u = jax.random.uniform(kt, lag_n.shape)
    # end t uniform in [ell + 1, T] so that k = t - ell >= 1
    end_n = lag_n + 1 + jnp.floor(u * (T - lag_n)).astype(lag_n.dtype)
    sv = window_spectra(fns, params, xs, ys, ex_n, end_n - lag_n, lag_n, max(lags),
                        compat=compat)
    return lags, sv.reshape(len(lags), triples, -1)


def gradient_spectrum(fns: LayerFns, params: Any, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Singular values of the normalised, centred per-sample gradient matrix (see docstring)."""

    def one(x, y):
        g = jax.grad(lambda p: fns.loss(p, x[None], y[None])[0])(params)
        return jnp.concatenate([leaf.reshape(-1) for leaf in jax.tree_util.tree_leaves(g)])

    rows = jax.vmap(one)(xs, ys)
    m = rows.shape[0]
    rows = rows / jnp.maximum(jnp.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
    rows = rows - jnp.mean(rows, axis=0, keepdims=True)
    keep = jnp.linalg.norm(rows, axis=0) > 1e-10 * jnp.sqrt(m)
    rows = jnp.where(keep[None, :], rows, 0.0)
    rows = rows + 1e-8 * jax.random.normal(jax.random.key(0), rows.shape, rows.dtype)
    return singular_values(rows)


def anisotropy(
    fns, *, every: int | None = None, triples: int = 64, compat: str = "exact", seed: int = 0
) -> Measure:
    """The ``anisotropy`` probe instrument (any cell).

    Metrics, on the lags ``ell`` used: ``anisotropy/jac_{ai,ce,erank,pr}@ell`` (medians over
    triples), and ``anisotropy/grad_{ai,ce,erank,pr}``. The triples are redrawn at every probe
    from ``fold_in(key(seed), step)``.
    """
    steps.check_compat(compat)

    def measure(ctx, state, views: StepViews):
        key = jax.random.fold_in(jax.random.key(seed), ctx.step)
        lags, sv = jacobian_spectra(
            ctx.fns, ctx.params, ctx.probe_xs, ctx.probe_ys, key, triples=triples, compat=compat
        )
        stats = spectrum_stats(sv, r=10, top=16)
        out = {}
        for name, vals in stats.items():
            med = jnp.median(vals, axis=1)
            for i, ell in enumerate(lags):
                out[f"jac_{name}@{ell}"] = med[i]
        gstats = spectrum_stats(gradient_spectrum(ctx.fns, ctx.params, ctx.probe_xs,
                                                  ctx.probe_ys), r=10)
        for name, val in gstats.items():
            out[f"grad_{name}"] = val
        return out, state

    return Measure("anisotropy", lambda p: (), measure, every=every)
