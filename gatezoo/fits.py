r"""The one straight-line fit of the package: ordinary least squares on masked points.

Every slope gatezoo reports (the power ``s`` of :math:`S \propto P^s`, a truncation error's
order in :math:`\varepsilon`, a decay rate by lag) is :func:`line_fit` of one log against
another, so that the points kept, the degenerate cases and the rounding are the same everywhere.

Example:
  >>> import jax.numpy as jnp
  >>> slope, r2 = line_fit(jnp.array([0.0, 1.0, 2.0]), jnp.array([1.0, 3.0, 5.0]))
  >>> float(slope), float(r2)
  (2.0, 1.0)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["line_fit"]


def line_fit(
    x: jax.Array, y: jax.Array, mask: jax.Array | None = None, *, min_points: int = 2
) -> tuple[jax.Array, jax.Array]:
    r"""Slope and :math:`R^2` of the OLS fit ``y = c + s x`` over the points where ``mask``
    holds and both values are finite (all points by default):

    .. math:: s = \frac{\sum (x - \bar x)(y - \bar y)}{\sum (x - \bar x)^2}, \qquad
        R^2 = \frac{\big(\sum (x - \bar x)(y - \bar y)\big)^2}{\sum (x - \bar x)^2
        \sum (y - \bar y)^2}.

    The slope is NaN with fewer than ``min_points`` points or no spread in ``x``; :math:`R^2`
    also when ``y`` has no spread. Jit-able: a mask, not boolean indexing.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    ok = jnp.isfinite(x) & jnp.isfinite(y)
    if mask is not None:
        ok = ok & mask
    w = ok.astype(jnp.result_type(x, y))
    n = jnp.sum(w)
    xs, ys = jnp.where(ok, x, 0.0), jnp.where(ok, y, 0.0)
    dx, dy = (xs - jnp.sum(xs) / n) * w, (ys - jnp.sum(ys) / n) * w
    sxx, syy, sxy = jnp.sum(dx * dx), jnp.sum(dy * dy), jnp.sum(dx * dy)
    fits = (n >= min_points) & (sxx > 0)
    slope = jnp.where(fits, sxy / jnp.where(fits, sxx, 1.0), jnp.nan)
    spread = fits & (syy > 0)
    r2 = jnp.where(spread, sxy * sxy / jnp.where(spread, sxx * syy, 1.0), jnp.nan)
    return slope, r2
