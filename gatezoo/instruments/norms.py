r"""Largest singular values of Jacobian products: exact, by power iteration, and the release's.

Three ways to take :math:`\|M\|_2` of a batch of matrices ``(n, d, d)``:

* :func:`spectral_norm`: exact, by SVD (:func:`gatezoo.linalg.singular_values`);
* :func:`power_iteration`: iterations on :math:`M^\top M` from given start vectors, which converge
  to :math:`\sigma_{\max}` and return the vectors for a warm start of the next, similar matrix
  (the products of one window that grows by one factor per lag);
* :func:`release_power_norm`: the estimate of the authors' release (docs/theory.md §2.3 items 3, 5),
  ``iters`` plain iterations :math:`v \leftarrow Mv / (\|Mv\| + 10^{-12})` then :math:`\|Mv\|`,
  a lower bound that collapses toward 0 once :math:`\|Mv\|` nears the floor.

Example:
  >>> import jax, jax.numpy as jnp
  >>> m = jnp.array([[[3.0, 1.0], [0.0, 2.0]]])
  >>> round(float(spectral_norm(m)[0]), 4)
  3.2566
  >>> s, v = power_iteration(m, jnp.ones((1, 2)) / jnp.sqrt(2.0), 50)
  >>> round(float(s[0]), 4)
  3.2566
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gatezoo.linalg import singular_values

__all__ = ["spectral_norm", "power_iteration", "release_power_norm", "scaled_norm"]


def spectral_norm(m: jax.Array) -> jax.Array:
    """Exact largest singular value of (a batch of) matrices, ``(..., n, k) -> (...)``, by SVD
    (safe from the CPU thread-pool deadlock, :mod:`gatezoo.linalg`)."""
    return singular_values(m)[..., 0]


def scaled_norm(w: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis, scaled by the largest entry so that tiny vectors
    (long products of contracting Jacobians, in float32) do not underflow when squared."""
    m = jnp.max(jnp.abs(w), axis=-1, keepdims=True)
    safe = jnp.where(m > 0, m, 1.0)
    return m[..., 0] * jnp.sqrt(jnp.sum((w / safe) ** 2, axis=-1))


def power_iteration(m: jax.Array, v: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
    r""":math:`\sigma_{\max}` of each ``m (n, d, k)`` by ``iters`` power iterations on
    :math:`M^\top M` from ``v (n, k)``; returns ``(sigma (n,), v (n, k))``, ``v`` to warm-start
    the next call.

    The vector is normalised between :math:`M` and :math:`M^\top` (no squared norms, so no
    underflow at long lags) by :func:`scaled_norm`.
    """
    tiny = jnp.finfo(m.dtype).tiny

    def body(_, v):
        w = jnp.einsum("nij,nj->ni", m, v)
        w = w / (scaled_norm(w)[:, None] + tiny)
        w = jnp.einsum("nji,nj->ni", m, w)
        return w / (scaled_norm(w)[:, None] + tiny)

    v = jax.lax.fori_loop(0, iters, body, v)
    return scaled_norm(jnp.einsum("nij,nj->ni", m, v)), v


def release_power_norm(m: jax.Array, v: jax.Array, iters: int = 5) -> jax.Array:
    r"""The release's estimate of :math:`\|M\|_2` for each ``m (n, d, d)`` from start vectors
    ``v (n, d)`` (the release draws them Gaussian, fresh for every window).

    ``v`` is normalised, then ``iters`` times :math:`v \leftarrow Mv / (\|Mv\| + 10^{-12})` in
    ``m``'s dtype, then :math:`\|Mv\|`. Where :math:`\|Mv\|` nears the floor the vector stops
    being unit and the estimate collapses toward 0 (about
    :math:`\sigma^{iters + 1} / 10^{-12\, iters}`), as in the release. Norms are taken as PyTorch
    takes float32 norms on a CPU (:func:`_release_norm`), so the estimates of the longest, most
    collapsed windows underflow to 0 exactly where the release's do.
    """

    def unit(w):
        return w / (_release_norm(w)[..., None] + 1e-12)

    v = jax.lax.fori_loop(0, iters, lambda _, v: unit(jnp.einsum("nij,nj->ni", m, v)),
                          unit(v.astype(m.dtype)))
    return _release_norm(jnp.einsum("nij,nj->ni", m, v))


def _release_norm(w: jax.Array) -> jax.Array:
    """``||w||`` over the last axis as PyTorch takes a float32 norm on a CPU: each square
    rounded onto float32's grid *with* subnormals (XLA flushes them to zero), then summed
    (in float64 here: the sum's rounding differs from PyTorch's by float32 rounding only).
    Squares below half the smallest float32 subnormal are 0, so a vector of entries below
    about ``4e-23`` has norm 0. Needs ``jax_enable_x64`` for the exact threshold (the CLI runs
    reproductions under it); without it the squares flush below ``1e-38``."""
    if w.dtype != jnp.float32 or not jax.config.read("jax_enable_x64"):
        return jnp.sqrt(jnp.sum(w * w, axis=-1))
    sq = jnp.square(w.astype(jnp.float64))
    step = 2.0**-149  # float32's smallest subnormal: the grid below 2^-126
    sq = jnp.where(sq < 2.0**-126, jnp.round(sq / step) * step,
                   sq.astype(jnp.float32).astype(jnp.float64))
    return jnp.sqrt(jnp.sum(sq, axis=-1)).astype(w.dtype)
