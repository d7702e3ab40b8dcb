r"""Products of step Jacobians over lags, built by one ``lax.scan`` over the lag.

For end times ``t_n`` (1-indexed states ``h_t``), examples ``b_n`` and lags ``ell = 1..L``:

.. math::
    M_{t,t-\ell} = M_{t,t-\ell+1} J_{t-\ell+1}  \quad (\text{exact order } J_t \cdots J_{t-\ell+1}),

or, under ``compat="paper-code"``, :math:`R_{t,t-\ell} = J_{t-\ell+1} R_{t,t-\ell+1}` (the
authors' reversed order, docs/theory.md §2.3 item 2), both by
:func:`gatezoo.models.jacobians.extend_product`. When the table of all ``T x batch`` step
Jacobians fits in :data:`TABLE_LIMIT` entries it is formed once and gathered; otherwise each scan
step computes the ``N`` Jacobians it needs from the stored states, so memory is ``O(N d^2)``
whatever ``T`` is. A product only grows while ``ell <= stop_n`` and the window stays inside the
sequence (``t - ell >= first``); ``per_lag`` reduces the current products at every lag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gatezoo.instruments import steps
from gatezoo.instruments.protocol import LayerFns
from gatezoo.models.jacobians import extend_product

__all__ = ["lag_products", "probe_states", "TABLE_LIMIT"]

#: most entries (``T * batch * d^2``) of a step-Jacobian table formed once instead of per lag
TABLE_LIMIT = 1 << 24


def probe_states(fns: LayerFns, params: Any, xs: jax.Array, ys: jax.Array):
    """``(cell_params, prev, xs_t)`` of a forward pass on ``xs`` (time-major states)."""
    _, carries = fns.loss(params, xs, ys)
    seq = xs if fns.inputs is None else fns.inputs(params, xs, ys)
    carry0 = None if fns.initial is None else fns.initial(params, xs, ys)
    return fns.cell_params(params), steps.previous_states(carries, carry0), steps.time_major(seq)


def lag_products(
    fns: LayerFns,
    cell_params: Any,
    prev: Any,
    xs_t: jax.Array,
    ends: jax.Array,
    examples: jax.Array,
    n_lags: int,
    *,
    stop: jax.Array | None = None,
    compat: str = "exact",
    first: int = 1,
    per_lag: Callable[[jax.Array, Any], tuple[Any, Any]] | None = None,
    per_lag_init: Any = None,
) -> tuple[jax.Array, Any, jax.Array]:
    """Jacobian products for ``N`` windows ending at ``ends`` (1-indexed) in ``examples``.

    ``per_lag(products (N, d, d), aux) -> (values, aux)`` runs after every lag with a carried
    ``aux`` (from ``per_lag_init``; a warm start, say). Returns ``(products (N, d, d), per_lag
    values (n_lags, N, ...) or None, valid (n_lags, N))`` where ``valid[l-1, n]`` says the
    lag-``l`` product of window ``n`` exists (``t - l >= first``, the earliest state a window
    may start from, and ``l <= stop``).
    """
    n = ends.shape[0]
    d = fns.state_size
    dtype = xs_t.dtype
    stop = jnp.full((n,), n_lags) if stop is None else stop
    jac = jax.vmap(lambda h, x: sum(steps.split_jacobians(fns, cell_params, h, x, compat)))
    T, batch = xs_t.shape[:2]
    if T * batch * d * d <= TABLE_LIMIT:
        table = jax.vmap(jac)(prev, xs_t)  # (T, batch, d, d), [i, b] = J_{i+1} of example b

        def factors(ic):
            return table[ic, examples]
    else:
        def factors(ic):
            h = jax.tree_util.tree_map(lambda c: c[ic, examples], prev)
            return jac(h, xs_t[ic, examples])

    def body(carry, ell):
        prod, aux = carry
        i = ends - ell  # 0-indexed step of J_{t-ell+1}
        active = (i >= first) & (ell <= stop)
        new = extend_product(prod, factors(jnp.clip(i, 0)), older=True,
                             reverse=compat == "paper-code")
        prod = jnp.where(active[:, None, None], new, prod)
        vals = None
        if per_lag is not None:
            vals, aux = per_lag(prod, aux)
        return (prod, aux), (vals, active)

    eye = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (n, d, d))
    (prod, _), (vals, valid) = jax.lax.scan(body, (eye, per_lag_init), jnp.arange(1, n_lags + 1))
    return prod, vals, valid
