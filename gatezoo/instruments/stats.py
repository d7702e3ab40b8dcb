"""Small statistics shared by the instruments: power fits, lag grids, spectrum summaries.

All functions are pure, jit-able and take masks instead of boolean indexing (static shapes).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gatezoo.fits import line_fit

__all__ = [
    "lag_grid",
    "power_fit",
    "spectrum_stats",
    "subsample",
    "pearson",
    "masked_median",
    "order_statistic",
    "fast_median",
    "fast_quantiles",
    "masked_quantiles",
    "prefix_sum",
    "suffix_mean_products",
    "window_products_at",
]

#: floor for logs of gate factors: a factor of exactly 0 (alpha = 1 in the retention) gives
#: exp(window sum) = 0 without the NaN of (-inf) - (-inf) in cumulative-sum differences
LOG_FLOOR = -1e3

#: the lags of the S2 propagation-anisotropy measurement (docs/theory.md §6.4)
ANISOTROPY_LAGS = (1, 2, 4, 8, 12, 16, 24, 32, 40)


def lag_grid(seq_len: int) -> tuple[int, ...]:
    """Lags ``1, 2, 4, 8, ...`` below ``seq_len`` (where scalar metrics sample a profile)."""
    if seq_len < 2:
        return ()
    return tuple(2**i for i in range(int(math.log2(seq_len - 1)) + 1))


def subsample(values: jax.Array, cap: int = 4096) -> jax.Array:
    """A deterministic strided subsample of at most ``cap`` entries of ``values`` (flattened).

    Quantiles of a (T, batch, hidden) array need a sort; on a strided subsample of 4k entries
    their error is a few per mille to 1 % and the cost does not grow with T.
    """
    flat = values.reshape(-1)
    stride = max(1, -(-flat.shape[0] // cap))
    return flat[::stride]


def _sortable_keys(x: jax.Array) -> jax.Array:
    """Unsigned integers ordered like the floats ``x`` (IEEE bit patterns, negatives flipped)."""
    bits = {2: 16, 4: 32, 8: 64}[x.dtype.itemsize]
    sint, uint = jnp.dtype(f"int{bits}"), jnp.dtype(f"uint{bits}")
    b = jax.lax.bitcast_convert_type(x, sint)
    b = jnp.where(b < 0, b ^ jnp.array(jnp.iinfo(sint).max, sint), b)
    return jax.lax.bitcast_convert_type(b, uint) ^ jnp.array(1 << (bits - 1), uint)


def order_statistic(x: jax.Array, k: jax.Array) -> jax.Array:
    """The ``k``-th smallest entry (1-based) along the last axis, exactly and without sorting.

    XLA:CPU sorts slowly (a large share of a small train step; figures in benchmarks/README.md),
    so per-step statistics bisect instead: on the floats' order-preserving integer keys, one
    fused count of ``key <= mid`` per bit (32 rounds in float32, 64 in float64), which ends on
    the exact key of the ``k``-th entry. ``k`` broadcasts against ``x.shape[:-1]``.
    """
    keys = _sortable_keys(x)
    lo, hi = jnp.min(keys, axis=-1), jnp.max(keys, axis=-1)
    k = jnp.broadcast_to(k, lo.shape)

    def body(_, c):
        lo, hi = c
        mid = lo + (hi - lo) // 2
        up = jnp.sum(keys <= mid[..., None], axis=-1) >= k
        return jnp.where(up, lo, mid + 1), jnp.where(up, mid, hi)

    _, hi = jax.lax.fori_loop(0, 8 * x.dtype.itemsize, body, (lo, hi))
    return jnp.min(jnp.where(keys >= hi[..., None], x, jnp.inf), axis=-1)


def fast_median(x: jax.Array) -> jax.Array:
    """``numpy.median`` along the last axis by :func:`order_statistic` (mean of the two middle
    entries for an even count; both found in one bisection loop, since on CPU the loop's
    per-iteration overhead, not the counting, is the cost)."""
    n = x.shape[-1]
    if n % 2:
        return order_statistic(x, (n + 1) // 2)
    both = jax.vmap(lambda k: order_statistic(x, k))(jnp.asarray([n // 2, n // 2 + 1]))
    return 0.5 * (both[0] + both[1])


def fast_quantiles(x: jax.Array, qs: tuple[float, ...]) -> jax.Array:
    """Quantiles of all entries of ``x`` by linear interpolation between order statistics
    (``numpy.quantile``'s default), without sorting; ``(len(qs),)``."""
    flat = x.reshape(-1)
    n = flat.shape[0]
    pos = jnp.asarray(qs, flat.dtype) * (n - 1)  # 0-based fractional rank
    below = jnp.floor(pos)
    frac = pos - below
    ks = jnp.concatenate([below + 1, jnp.minimum(below + 2, n)]).astype(jnp.int32)
    stats = jax.vmap(lambda k: order_statistic(flat, k))(ks)
    m = len(qs)
    return stats[:m] + frac * (stats[m:] - stats[:m])


def masked_quantiles(x: jax.Array, mask: jax.Array, qs: tuple[float, ...]) -> jax.Array:
    """``numpy.quantile`` (linear interpolation) of the entries of the vector ``x`` where
    ``mask``, by :func:`order_statistic` (no sort); NaN for an empty mask."""
    n = jnp.sum(mask)
    pos = jnp.asarray(qs, x.dtype) * (n - 1).astype(x.dtype)
    below = jnp.floor(pos)
    ks = jnp.concatenate([below + 1, jnp.minimum(below + 2, n)]).astype(jnp.int32)
    vals = jnp.where(mask, x, jnp.inf)
    stats = jax.vmap(lambda k: order_statistic(vals, k))(ks)
    m = len(qs)
    out = stats[:m] + (pos - below) * (stats[m:] - stats[:m])
    return jnp.where(n > 0, out, jnp.nan)


def masked_median(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Median of ``x`` where ``mask``, NaN where the mask is empty."""
    return jnp.nanmedian(jnp.where(mask, x, jnp.nan), axis=axis)


def power_fit(
    log_p: jax.Array, log_s: jax.Array, mask: jax.Array, trim: float = 0.01
) -> tuple[jax.Array, jax.Array]:
    r"""Slope ``s`` and :math:`R^2` of the OLS fit ``log S = c + s log P`` (docs/theory.md §4.4).

    Points enter where ``mask`` holds and both logs are finite; with ``trim > 0`` only points
    whose ``P`` lies between its ``trim`` and ``1 - trim`` quantiles (over the masked points)
    count, as the authors' ``--trim 0.01``. Returns NaN for fewer than 3 points or no spread.
    """
    ok = mask & jnp.isfinite(log_p) & jnp.isfinite(log_s)
    if trim > 0:
        lo, hi = masked_quantiles(log_p.reshape(-1), ok.reshape(-1), (trim, 1.0 - trim))
        ok = ok & (log_p >= lo) & (log_p <= hi)
    slope, r2 = line_fit(log_p, log_s, ok, min_points=3)
    return jnp.where(jnp.isfinite(r2), slope, jnp.nan), r2


def spectrum_stats(
    sv: jax.Array, r: int = 10, top: int | None = None, floor: float = 0.0
) -> dict[str, jax.Array]:
    r"""Anisotropy summaries of singular values ``sv`` (descending, last axis).

    ``floor`` is added to the denominators of ``ai`` and ``ce`` (0 for the exact statistics; the
    release's S2 uses ``1e-12``, docs/theory.md §2.3 item 6).

    * ``ai``: anisotropy index :math:`\sigma_1/\sigma_r` (``r`` capped at the number of values);
    * ``ce``: energy concentration :math:`\sum_{i\le r}\sigma_i^2 / \sum_{i\le top}\sigma_i^2`
      (``top=None``: all values; the S2 Jacobian measurement uses ``top=16``, docs/theory.md §4.5);
    * ``erank``: effective rank :math:`\exp(-\sum p_i \log p_i)` with
      :math:`p_i=\sigma_i^2/\sum\sigma^2` (a project addition, docs/theory.md §8 item 11);
    * ``pr``: participation ratio :math:`(\sum\sigma^2)^2/\sum\sigma^4` (a project addition).
    """
    k = sv.shape[-1]
    r = min(r, k)
    e = sv.astype(jnp.result_type(sv, jnp.float32)) ** 2
    denom = jnp.sum(e[..., : (k if top is None else min(top, k))], axis=-1)
    total = jnp.sum(e, axis=-1)
    p = e / total[..., None]
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return {
        "ai": sv[..., 0] / (sv[..., r - 1] + floor),
        "ce": jnp.sum(e[..., :r], axis=-1) / (denom + floor),
        "erank": jnp.exp(entropy),
        "pr": total**2 / jnp.sum(e * e, axis=-1),
    }


def pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pearson correlation of two vectors (NaN if either is constant)."""
    da, db = a - jnp.mean(a), b - jnp.mean(b)
    return jnp.sum(da * db) / jnp.sqrt(jnp.sum(da * da) * jnp.sum(db * db))


def prefix_sum(x: jax.Array, axis: int = 0) -> jax.Array:
    """Cumulative sum along ``axis`` by a parallel associative scan (``O(n log n)`` work; XLA's
    CPU lowering of ``jnp.cumsum`` can be quadratic in the length)."""
    return jax.lax.associative_scan(jnp.add, x, axis=axis)


def suffix_mean_products(f: jax.Array) -> jax.Array:
    """``out[l] = mean_last_axis(prod_{j >= T-1-l} f[j])`` along axis 0: the last-axis mean of the
    products of the last ``l + 1`` entries, ``(T, ..., n) -> (T, ...)``.

    Products of gate factors in ``[0, 1]`` need no logs: ``exp(sum log f)`` costs two
    transcendental evaluations per entry and underflows to 0 exactly where the product does (a
    factor of exactly 0 gives 0 either way). One sequential ``lax.scan`` that multiplies and
    reduces in the same step writes no ``(T, ..., n)`` intermediate, unlike a parallel associative
    scan of the products followed by the mean (faster on CPU: benchmarks/README.md).
    """

    def step(c, x):
        c = c * x
        return c, jnp.mean(c, axis=-1)

    return jax.lax.scan(step, jnp.ones_like(f[0]), f[::-1])[1]


def window_products_at(f: jax.Array, ends: jax.Array, lags: tuple[int, ...]) -> jax.Array:
    """``out[i, n] = prod_{j = ends[n] - lags[i] + 1}^{ends[n]} f[j]`` (0-based, along axis 0);
    ``(len(lags), len(ends), ...)``. Windows reaching before index 0 give 0 (mask them).

    By doubling, with multiplications only: ``P_k[n]`` (the product of the ``2^k`` entries ending
    at ``n``) is ``P_{k-1}[n] P_{k-1}[n - 2^{k-1}]``, and a window of any length is the product
    of the ``P_k`` of its binary digits, gathered at the ends only. ``lags`` are static.
    """
    if not lags:
        return jnp.zeros((0, ends.shape[0]) + f.shape[1:], f.dtype)
    top = max(int(max(lags)).bit_length() - 1, 0)
    levels = [f]  # levels[k][i]: product of the 2^k entries ending at i + 2^k - 1
    for k in range(1, top + 1):
        half = 1 << (k - 1)
        prev = levels[-1]
        levels.append(prev[half:] * prev[:-half])
    out = []
    for ell in lags:
        acc, offset = None, 0
        for k in range(top + 1):
            if (int(ell) >> k) & 1:
                idx = ends - offset - ((1 << k) - 1)
                ok = (idx >= 0).reshape((-1,) + (1,) * (f.ndim - 1))
                term = jnp.where(ok, levels[k][jnp.clip(idx, 0, levels[k].shape[0] - 1)], 0.0)
                acc = term if acc is None else acc * term
                offset += 1 << k
        out.append(acc)
    return jnp.stack(out)
