r"""The diagonal linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` over a whole sequence.

Cells whose gates read only the input (minGRU, minLSTM, RG-LRU, S6) have a step that is linear
in the state, so a sequence is a product of affine maps ``h -> a ⊙ h + b``. Composing two of
them, the earlier ``(a_1, b_1)`` first, gives another one,

.. math::
    (a_2, b_2) \circ (a_1, b_1) = (a_2 \odot a_1,\; a_2 \odot b_1 + b_2),

an associative operation, so all ``T`` prefix compositions come out of
``jax.lax.associative_scan`` in ``O(log T)`` depth (Blelloch 1990; Martin & Cundy 2018) instead
of ``T`` dependent steps. The initial state enters as ``b_1 <- a_1 ⊙ h_0 + b_1``. ``method =
"sequential"`` runs the same recurrence as a ``lax.scan``, the reference path. Both are plain JAX
code, differentiable in forward and reverse mode. ``"auto"`` picks the sequential scan on a CPU,
where the prefix scan's extra work is not repaid by width (benchmarks/README.md, scans), and the
associative one on accelerators.

Shapes: ``a`` and ``b`` ``(T, ...)`` time-major with the same trailing shape as ``h0``.

Example:
  >>> import jax.numpy as jnp
  >>> a, b = jnp.full((4, 2), 0.5), jnp.ones((4, 2))
  >>> linear_recurrence(a, b, jnp.zeros(2))[:, 0].tolist()
  [1.0, 1.5, 1.75, 1.875]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["SCANS", "check_scan", "linear_recurrence"]

SCANS = ("auto", "associative", "sequential")


def check_scan(scan: str, owner: str = "scan") -> str:
    """Returns ``scan`` if it names a method of :func:`linear_recurrence`, else raises."""
    if scan not in SCANS:
        raise ValueError(f"{owner} must be one of {SCANS}, got {scan!r}")
    return scan


def _compose(first, second):
    a1, b1 = first
    a2, b2 = second
    return a2 * a1, a2 * b1 + b2


def linear_recurrence(
    a: jax.Array, b: jax.Array, h0: jax.Array, method: str = "auto"
) -> jax.Array:
    """All states ``h_1..h_T`` of ``h_t = a_t * h_{t-1} + b_t`` from ``h0``, ``(T, ...)``.

    Args:
      a: retentions ``(T, ...)``; b: drives, same shape; h0: the initial state ``(...)``.
      method: ``"associative"`` (parallel prefix, ``jax.lax.associative_scan``),
        ``"sequential"`` (``jax.lax.scan``, one step at a time) or ``"auto"`` (sequential on a
        CPU backend, associative elsewhere).
    """
    check_scan(method, "method")
    if method == "auto":
        method = "sequential" if jax.default_backend() == "cpu" else "associative"
    if a.shape != b.shape or a.shape[1:] != jnp.shape(h0):
        raise ValueError(
            f"linear_recurrence needs a, b (T, ...) and h0 (...) of one shape, got a {a.shape}, "
            f"b {b.shape}, h0 {jnp.shape(h0)}"
        )
    if method == "sequential":

        def body(h, ab):
            h = ab[0] * h + ab[1]
            return h, h

        return jax.lax.scan(body, h0, (a, b))[1]
    b = b.at[0].add(a[0] * h0)
    return jax.lax.associative_scan(_compose, (a, b), axis=0)[1]
