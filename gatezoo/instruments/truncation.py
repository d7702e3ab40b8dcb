r"""The first-order truncation check of the Jacobian product (theory §3.2, §6.2), probe tier.

Over the last ``n`` steps of a probe sequence, :math:`F(\epsilon) = \prod_j (A_j + \epsilon B_j)`
(temporal order, or the authors' reversed order under ``compat="paper-code"``, with their
post-update ``B``); :math:`L_1 = dF/d\epsilon|_0` by ``jax.jvp``; the truncation error
:math:`E(\epsilon) = \|F(\epsilon) - F(0) - \epsilon L_1\|_F` on an ``eps`` grid and the OLS slope
of ``log E`` on ``log eps`` over its small end, which is 2 when the expansion holds.

The grid is the appendix's, ``1e-5 .. 1`` with the slope over its first five points, in float64;
in float32 rounding swamps ``E`` below ``eps ~ 1e-3``, so the grid starts at ``1e-2`` and the slope
uses ``1e-2 .. 1e-1``. Products are divided by ``max |F(0)|`` first (long windows overflow
float32; every reported quantity is scale-free).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gatezoo.instruments import steps
from gatezoo.instruments.products import probe_states
from gatezoo.instruments.protocol import LayerFns
from gatezoo.instruments.stats import power_fit
from gatezoo.instruments.views import Measure, StepViews

__all__ = ["eps_grid", "window_factors", "truncation_curve", "truncation"]

_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def eps_grid(dtype: Any) -> tuple[tuple[float, ...], int]:
    """``(grid, number of leading points for the slope)`` for ``dtype`` (see module docstring)."""
    if jnp.dtype(dtype) == jnp.float64:
        return _GRID, 5
    return _GRID[6:], 3


def window_factors(
    fns: LayerFns, cell_params: Any, prev: Any, xs_t: jax.Array, example: int | jax.Array,
    window: int, compat: str = "exact",
) -> tuple[jax.Array, jax.Array]:
    """``(A, B)`` of the last ``window`` steps of one example, each ``(window, d, d)``."""
    T = xs_t.shape[0]
    idx = jnp.arange(T - window, T)
    h = jax.tree_util.tree_map(lambda c: c[idx, example], prev)
    return jax.vmap(lambda h_, x_: steps.split_jacobians(fns, cell_params, h_, x_, compat))(
        h, xs_t[idx, example]
    )


def truncation_curve(
    a: jax.Array, b: jax.Array, eps: jax.Array, compat: str = "exact"
) -> dict[str, jax.Array]:
    """``E(eps)/max|F(0)|`` on the grid ``eps``, plus ``||F(1)||``, ``||F(0)||``, ``||L1||`` and
    ``||F(0) + L1||`` (same scale), for factors ``a, b`` of shape ``(n, d, d)`` in time order."""

    def product(e):
        def body(f, ab):
            j = ab[0] + e * ab[1]
            return (j @ f if compat == "exact" else f @ j), None

        eye = jnp.eye(a.shape[-1], dtype=a.dtype)
        return jax.lax.scan(body, eye, (a, b))[0]

    f0, l1 = jax.jvp(product, (jnp.zeros((), a.dtype),), (jnp.ones((), a.dtype),))
    scale = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(f0)), 1e-30))
    f0, l1 = f0 / scale, l1 / scale
    fe = jax.vmap(product)(eps) / scale
    err = jnp.linalg.norm((fe - f0 - eps[:, None, None] * l1).reshape(eps.shape[0], -1), axis=1)
    fro = lambda m: jnp.linalg.norm(m.reshape(-1))  # noqa: E731
    return {
        "err": err,
        "f1": fro(product(jnp.ones((), a.dtype)) / scale),
        "f0": fro(f0),
        "l1": fro(l1),
        "linear": fro(f0 + l1),
    }


def truncation(
    fns, *, every: int | None = None, window: int = 100, examples: int = 4, compat: str = "exact"
) -> Measure:
    """The ``truncation`` probe instrument (gated cells).

    Over the last ``min(window, T)`` steps of the first ``examples`` probe sequences (medians
    across them): ``truncation/slope`` (expected 2), ``truncation/rel_err`` (``E(1)/||F(1)||``),
    ``truncation/rel_err_linear`` (``E(1)/||F(0)+L1||``), ``truncation/l1_over_f0``
    (``||L1||/||F(0)||``) and ``truncation/c2`` (``E(eps)/(eps^2 ||F(1)||)`` at the smallest
    ``eps``).
    """
    steps.check_compat(compat)

    def measure(ctx, state, views: StepViews):
        xs = ctx.probe_xs
        T = xs.shape[1]
        n = min(window, T)
        cp, prev, xs_t = probe_states(ctx.fns, ctx.params, xs, ctx.probe_ys)
        grid, n_fit = eps_grid(xs.dtype)
        eps = jnp.asarray(grid, xs.dtype)
        n_ex = min(examples, xs.shape[0])

        def one(example):
            a, b = window_factors(ctx.fns, cp, prev, xs_t, example, n, compat)
            curve = truncation_curve(a, b, eps, compat)
            err = curve["err"]
            slope = power_fit(
                jnp.log(eps[:n_fit]), jnp.log(err[:n_fit]), jnp.ones(n_fit, bool), trim=0.0
            )[0]
            return {
                "slope": slope,
                "rel_err": err[-1] / curve["f1"],
                "rel_err_linear": err[-1] / curve["linear"],
                "l1_over_f0": curve["l1"] / curve["f0"],
                "c2": err[0] / (eps[0] ** 2 * curve["f1"]),
            }

        per = jax.lax.map(one, jnp.arange(n_ex))
        return {k: jnp.median(v) for k, v in per.items()}, state

    return Measure("truncation", lambda p: (), measure, every=every)
