"""Per-step building blocks on a model's pure step function: shifted states, gates, A/B splits.

Conventions (0-indexed arrays, 1-indexed maths as in docs/theory.md): ``carries[i]`` is the state
``h_{i+1}`` produced by step ``i`` from ``prev[i] = h_i`` and ``xs_t[i] = x_{i+1}``; ``h_0`` is
the layer's initial carry (zero unless the model gives another). The Jacobian of step ``i`` is
``J_{i+1} = A_{i+1} + B_{i+1}`` (docs/theory.md §2.1): ``A`` is the gate-frozen part, ``B`` the part
that flows through the gates' recurrent input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gatezoo.instruments.protocol import LayerFns
from gatezoo.models.jacobians import CONVENTIONS
from gatezoo.models.protocol import flatten_carry, unflatten_carry

__all__ = [
    "previous_states",
    "time_major",
    "gate_trace",
    "split_vjp",
    "plain_step",
    "transpose_a",
    "transpose_b",
    "split_jacobians",
    "flat_states",
]


def check_compat(compat: str) -> str:
    if compat not in CONVENTIONS:
        raise ValueError(f"compat must be one of {CONVENTIONS}, got {compat!r}")
    return compat


def time_major(xs: jax.Array) -> jax.Array:
    """``(batch, T, ...) -> (T, batch, ...)``."""
    return jnp.swapaxes(xs, 0, 1)


def previous_states(carries: Any, carry0: Any = None) -> Any:
    """``prev[i] = h_i``: the carries shifted one step later, ``h_0 = carry0`` (the layer's
    recorded initial carry, ``(batch, ...)`` per leaf; ``None``: zero)."""

    def shift(c, c0):
        first = jnp.zeros_like(c[:1]) if c0 is None else c0[None].astype(c.dtype)
        return jnp.concatenate([first, c[:-1]], axis=0)

    if carry0 is None:
        return jax.tree_util.tree_map(lambda c: shift(c, None), carries)
    return jax.tree_util.tree_map(shift, carries, carry0)


def flat_states(carries: Any) -> jax.Array:
    """Leaves ``(T, batch, ...)`` concatenated along the last axis: ``(T, batch, state_size)``."""
    return flatten_carry(carries)


def _merge_lead(tree: Any, n: int) -> Any:
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[n:]), tree)


def gate_trace(fns: LayerFns, cell_params: Any, prev: Any, xs_t: jax.Array) -> jax.Array:
    """``alpha_t`` for every step and example, ``(T, batch, hidden)``, in one batched call.

    The gate does not depend on the step's own output, so all ``T`` steps are evaluated at once
    from the stored states (no scan).
    """
    if fns.time_scale is None:
        raise ValueError("this cell has no time-scale gate (LayerFns.time_scale is None)")
    lead = xs_t.shape[:2]
    alpha = fns.time_scale(cell_params, _merge_lead(prev, 2), xs_t.reshape((-1,) + xs_t.shape[2:]))
    return alpha.reshape(lead + alpha.shape[1:])


def split_vjp(
    fns: LayerFns, params: Any, h: Any, x: jax.Array
) -> Callable[[Any], tuple[Any, Any, Any]]:
    """The transposed Jacobians of one step, ``v -> (A^T v, B^T v, (d+h/dtheta)^T v)``.

    ``params`` are the *full* model parameters (the parameter cotangent has their structure,
    zero outside the cell). ``h`` and ``x`` may carry a batch axis; the parameter cotangent is
    then summed over it. With ``LayerFns.split_step`` this is one ``jax.vjp``; otherwise two
    (``eps = 0`` gives ``A``, ``eps = 1`` gives ``A + B``); for a cell without gates ``B = 0``.
    """
    if fns.split_step is not None:

        def f(h_, hg_, p_):
            return fns.split_step(fns.cell_params(p_), h_, x, hg_)[0]

        _, vjp = jax.vjp(f, h, h, params)
        return vjp
    if not fns.gated:

        def f_plain(h_, p_):
            return fns.step(fns.cell_params(p_), h_, x)[0]

        _, vjp = jax.vjp(f_plain, h, params)

        def plain(v):
            a, p = vjp(v)
            return a, jax.tree_util.tree_map(jnp.zeros_like, a), p

        return plain

    def f_eps(eps):
        return lambda h_, p_: fns.step(fns.cell_params(p_), h_, x, eps=eps)[0]

    _, vjp0 = jax.vjp(f_eps(0.0), h, params)
    _, vjp1 = jax.vjp(f_eps(1.0), h, params)

    def two(v):
        a, p = vjp0(v)
        j, _ = vjp1(v)
        return a, jax.tree_util.tree_map(jnp.subtract, j, a), p

    return two


def plain_step(fns: LayerFns, cell_params: Any, h: Any, x: jax.Array) -> Any:
    """The new carry of the undeformed step (``split_step(h, x, h)`` when available)."""
    if fns.split_step is not None:
        return fns.split_step(cell_params, h, x, h)[0]
    return fns.step(cell_params, h, x)[0]


def transpose_a(fns: LayerFns, cell_params: Any, h: Any, x: jax.Array) -> Callable[[Any], Any]:
    """``v -> A^T v`` at ``(h, x)`` (parameters held constant; ``A = J`` without gates)."""
    if fns.split_step is not None:
        _, vjp = jax.vjp(lambda u: fns.split_step(cell_params, u, x, h)[0], h)
    elif fns.gated:
        _, vjp = jax.vjp(lambda u: fns.step(cell_params, u, x, eps=0.0)[0], h)
    else:
        _, vjp = jax.vjp(lambda u: fns.step(cell_params, u, x)[0], h)
    return lambda v: vjp(v)[0]


def transpose_b(fns: LayerFns, cell_params: Any, h: Any, x: jax.Array) -> Callable[[Any], Any]:
    """``v -> B^T v`` at ``(h, x)``: through the gates' recurrent input (zero without gates;
    ``J^T v - A^T v`` from two passes when the cell gives no ``split_step``)."""
    if fns.split_step is not None:
        _, vjp = jax.vjp(lambda g: fns.split_step(cell_params, h, x, g)[0], h)
        return lambda v: vjp(v)[0]
    if not fns.gated:
        return lambda v: jax.tree_util.tree_map(jnp.zeros_like, v)
    _, vjp1 = jax.vjp(lambda u: fns.step(cell_params, u, x, eps=1.0)[0], h)
    a_t = transpose_a(fns, cell_params, h, x)
    return lambda v: jax.tree_util.tree_map(jnp.subtract, vjp1(v)[0], a_t(v))


def split_jacobians(
    fns: LayerFns, cell_params: Any, h: Any, x: jax.Array, compat: str = "exact"
) -> tuple[jax.Array, jax.Array]:
    """``(A, B)`` of one step for ONE example, each ``(state_size, state_size)``, by forward-mode
    autodiff of the model's pure step (any cell; the closed forms of the built-in cells are
    :func:`gatezoo.models.jacobians.state_jacobians`).

    ``J = A + B`` is the exact ``dh_t/dh_{t-1}``. Under ``compat="paper-code"`` ``B`` is built
    from the post-update state as in the authors' code, ``B_code = (I - Gamma_t) B`` (docs/theory.md
    §2.3 item 1; for a multi-leaf carry every leaf's rows are scaled by ``1 - alpha_t``).
    """
    hf = flatten_carry(h)

    def out(hflat, hgflat, eps):
        hh = unflatten_carry(hflat, h)
        if fns.split_step is not None:
            new = fns.split_step(cell_params, hh, x, unflatten_carry(hgflat, h))[0]
        elif fns.gated:
            new = fns.step(cell_params, hh, x, eps=eps)[0]
        else:
            new = fns.step(cell_params, hh, x)[0]
        return flatten_carry(new)

    if fns.split_step is not None:
        a, b = jax.jacfwd(lambda u, g: out(u, g, None), argnums=(0, 1))(hf, hf)
    elif fns.gated:
        a = jax.jacfwd(lambda u: out(u, u, 0.0))(hf)
        b = jax.jacfwd(lambda u: out(u, u, 1.0))(hf) - a
    else:
        a = jax.jacfwd(lambda u: out(u, u, None))(hf)
        b = jnp.zeros_like(a)
    if compat == "paper-code" and fns.gated:
        alpha = fns.time_scale(cell_params, h, x)
        keep = jnp.tile(1.0 - alpha, hf.shape[-1] // alpha.shape[-1])
        b = keep[:, None] * b
    return a, b
