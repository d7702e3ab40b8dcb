r"""The parameter products of the hand-written sequence backward passes.

.. math::
    P = \sum_t \sum_b a_{t,b}^\top\, c_{t,b}, \qquad a: (T, B, m),\ c: (T, B, k) \to P: (m, k),

is ``dU = X^T dA`` and ``dW = H_{prev}^T dA`` of :mod:`gatezoo.models.gru_scan` and
:mod:`~gatezoo.models.lstm_scan`. Two ways to write it, equal up to float rounding:

* ``(T*B, m)^T (T*B, k)``, a product of reshapes: XLA:CPU reads the transposed operand in place.
  The fastest on one device; but merging ``T`` with a batch axis split over devices (GSPMD, as
  gatezoo's trainer splits it on several) has no split layout, so XLA first gathers the whole
  batch on every device.
* one ``dot_general`` contracting ``(t, b)`` in that order: each device contracts its own rows
  and one all-reduce sums the ``(m, k)`` parts. On one device XLA:CPU copies ``a`` into
  ``(m, T*B)`` first. (``jnp.einsum`` contracts ``(b, t)``, a strided transpose, slower still.)

``split_batch=None`` takes the second form when several devices are present, the first
otherwise. The timings behind the choice: benchmarks/README.md, *cells*.

Example:
  >>> import jax.numpy as jnp
  >>> a, c = jnp.ones((3, 2, 4)), jnp.ones((3, 2, 5))
  >>> p = time_batch_product(a, c, split_batch=False)
  >>> p.shape, float(p[0, 0])
  ((4, 5), 6.0)
"""

from __future__ import annotations

import jax
from jax import lax

__all__ = ["time_batch_product"]


def time_batch_product(
    a: jax.Array, c: jax.Array, *, split_batch: bool | None = None
) -> jax.Array:
    """:math:`\\sum_{t,b} a_{t,b}^\\top c_{t,b}` of ``a (T, B, m)`` and ``c (T, B, k)``: ``(m, k)``.

    ``split_batch``: the form for a batch split over devices (True), for one device (False), or
    by whether more than one device is present (None).
    """
    if a.ndim != 3 or c.ndim != 3 or a.shape[:2] != c.shape[:2]:
        raise ValueError(
            f"time_batch_product takes (T, B, m) and (T, B, k); got {a.shape} and {c.shape}")
    if split_batch is None:
        split_batch = jax.device_count() > 1
    if split_batch:
        return lax.dot_general(a, c, (((0, 1), (0, 1)), ((), ())))
    return a.reshape(-1, a.shape[-1]).T @ c.reshape(-1, c.shape[-1])
