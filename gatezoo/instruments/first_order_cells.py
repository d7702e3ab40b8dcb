r"""Closed-form first-order adjoint streams for the built-in gated cells (speed only).

:func:`gatezoo.instruments.first_order_gradients` needs, for every step, the residual
``e = lambda - lambda(0)`` and the first-order adjoint ``lambda1`` (THEORY.md §3.3):

.. math::
    e_{k} = A_{k+1}^\top e_{k+1} + B_{k+1}^\top \lambda_{k+1}, \qquad
    \lambda^1_{k} = A_{k+1}^\top \lambda^1_{k+1} + B_{k+1}^\top \lambda_{k+1}
                    - B_{k+1}^\top e_{k+1}, \qquad e_T = \lambda^1_T = 0.

The generic path linearises the cell's ``split_step`` at every step of a reverse scan. Here, for
cells whose step is known in closed form, the gate activations of all steps come first from
the stored states in one batched pass, ``B^T lambda`` (``lambda`` is known) is one batched
product outside the loop, and the reverse loop is left with ``A^T`` on the stacked
``[e; lambda1]`` and ``B^T`` on ``e``: for every cell two matrix products per step, the
``A^T`` one shared by both streams. ``A`` and ``B`` follow the cells' ``split_call``: ``B`` is
the path through every pre-activation that reads ``gate_carry``.

Each function has the signature of :attr:`ModelFns.first_order_streams`,
``streams(cell_params, xs_t, prev, adjoints) -> (e_all, lambda1_all)``, with ``xs_t``
``(T, batch, in)`` the layer's inputs, ``prev`` the states before each step (``prev[0] = h_0``)
and ``adjoints`` ``dL/dh_t``, leaves ``(T, batch, ...)``; ``e_all[i]`` and ``lambda1_all[i]``
belong to the state ``h_{i+1}`` (the state step ``i`` produces), as in the generic scan.
:func:`first_order_streams` picks one by the cell's exact class, so a user's subclass (which
may change the step) takes the generic path.

Example:
  >>> from flax import nnx
  >>> import gatezoo as gz
  >>> first_order_streams(gz.GRU(2, 4, rngs=nnx.Rngs(0))) is gru_streams
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gatezoo.models.gates import ScalarGate, VectorGate
from gatezoo.models.gru import GRU
from gatezoo.models.lstm import LSTM

__all__ = ["first_order_streams", "gated_leaky_streams", "gru_streams", "lstm_streams"]


def _arr(cp: Any, name: str) -> jax.Array | None:
    return cp[name][...] if name in cp else None


def _affine(x: jax.Array, h: jax.Array, cp: Any, u: str, w: str, b: str) -> jax.Array:
    """``x U + b + h W`` (in the cells' order, so the values match theirs)."""
    out = x.astype(cp[u][...].dtype) @ cp[u][...]
    bias = _arr(cp, b)
    out = out if bias is None else out + bias
    return out + h @ cp[w][...]


def _reverse(step: Callable, coefs: Any, b_lam: Any, like: Any) -> tuple[Any, Any]:
    """The reverse loop shared by every cell: ``step(coef_t, e, lam1) -> (A^T e, A^T lam1,
    B^T e)``; ``b_lam`` holds ``B^T lambda`` of every step."""
    tm = jax.tree_util.tree_map

    def body(carry, inp):
        e, lam1 = carry
        coef, bl = inp
        a_e, a_l1, b_e = step(coef, e, lam1)
        e_new = tm(jnp.add, a_e, bl)
        lam1_new = tm(lambda a, x, y: a + x - y, a_l1, bl, b_e)
        return (e_new, lam1_new), (e, lam1)

    zero = tm(lambda c: jnp.zeros_like(c[0]), like)
    _, (e_all, lam1_all) = jax.lax.scan(body, (zero, zero), (coefs, b_lam), reverse=True)
    return e_all, lam1_all


def gated_leaky_streams(cp: Any, xs_t: jax.Array, prev: jax.Array, adjoints: jax.Array):
    r""":class:`gatezoo.ScalarGate` / :class:`gatezoo.VectorGate`:
    ``h' = h + alpha (phi - h)``, ``phi = tanh(x U + b + h W)``, ``alpha = sigma(x U_g + b_g +
    h W_g)``; ``A^T v = v (1 - alpha) + (v alpha (1 - phi^2)) W^T``, ``B^T v = (\rho(v (phi -
    h)) alpha (1 - alpha)) W_g^T`` with ``rho`` the sum over neurons for the scalar gate."""
    alpha = jax.nn.sigmoid(_affine(xs_t, prev, cp, "U_g", "W_g", "b_g"))
    phi = jnp.tanh(_affine(xs_t, prev, cp, "U", "W", "b"))
    scalar = alpha.shape[-1] == 1 and prev.shape[-1] != 1
    w_t, wg_t = cp["W"][...].T, cp["W_g"][...].T
    cand = alpha * (1 - phi * phi)
    gate = alpha * (1 - alpha)

    def through_gate(v, diff, g):
        d = v * diff
        return (jnp.sum(d, axis=-1, keepdims=True) if scalar else d) * g

    b_lam = through_gate(adjoints, phi - prev, gate) @ wg_t

    def step(coef, e, lam1):
        keep, c, diff, g = coef
        a = (jnp.stack([e, lam1]) * c) @ w_t + jnp.stack([e, lam1]) * keep
        return a[0], a[1], through_gate(e, diff, g) @ wg_t

    return _reverse(step, (1 - alpha, cand, phi - prev, gate), b_lam, adjoints)


def gru_streams(cp: Any, xs_t: jax.Array, prev: jax.Array, adjoints: jax.Array):
    r""":class:`gatezoo.GRU`: with ``z, r`` frozen, ``A^T v = v (1 - z) + ((v z (1 - g^2)) W^T)
    r``; through the gates, ``B^T v = [v (g - h) z (1 - z), ((v z (1 - g^2)) W^T) h r (1 - r)]
    [W_z | W_r]^T``."""
    z = jax.nn.sigmoid(_affine(xs_t, prev, cp, "U_z", "W_z", "b_z"))
    r = jax.nn.sigmoid(_affine(xs_t, prev, cp, "U_r", "W_r", "b_r"))
    xc = xs_t.astype(cp["U"][...].dtype) @ cp["U"][...]
    xc = xc if _arr(cp, "b") is None else xc + cp["b"][...]
    g = jnp.tanh(xc + (r * prev) @ cp["W"][...])
    w_t = cp["W"][...].T
    wzr_t = jnp.concatenate([cp["W_z"][...], cp["W_r"][...]], axis=1).T
    cand = z * (1 - g * g)
    cz = (g - prev) * z * (1 - z)
    cr = prev * r * (1 - r)

    def through_gates(v, d_rh, cz_, cr_):
        return jnp.concatenate([v * cz_, d_rh * cr_], axis=-1) @ wzr_t

    b_lam = through_gates(adjoints, (adjoints * cand) @ w_t, cz, cr)

    def step(coef, e, lam1):
        keep, c, r_, cz_, cr_ = coef
        v = jnp.stack([e, lam1])
        d_rh = (v * c) @ w_t
        a = v * keep + d_rh * r_
        return a[0], a[1], through_gates(e, d_rh[0], cz_, cr_)

    return _reverse(step, (1 - z, cand, r, cz, cr), b_lam, adjoints)


def lstm_streams(cp: Any, xs_t: jax.Array, prev: Any, adjoints: Any):
    r""":class:`gatezoo.LSTM` on ``(c, h)``: with ``\bar c = v_c + v_h o (1 - \tanh^2 c')``,
    ``A^T v = (\bar c f, (\bar c i (1 - g^2)) W^T)`` and ``B^T v = (0, [\bar c g i (1 - i),
    \bar c c f (1 - f), v_h \tanh(c') o (1 - o)] [W_i | W_f | W_o]^T)``."""
    c, h = prev
    i = jax.nn.sigmoid(_affine(xs_t, h, cp, "U_i", "W_i", "b_i"))
    f = jax.nn.sigmoid(_affine(xs_t, h, cp, "U_f", "W_f", "b_f"))
    o = jax.nn.sigmoid(_affine(xs_t, h, cp, "U_o", "W_o", "b_o"))
    g = jnp.tanh(_affine(xs_t, h, cp, "U", "W", "b"))
    tc = jnp.tanh(f * c + i * g)
    w_t = cp["W"][...].T
    wifo_t = jnp.concatenate([cp[k][...] for k in ("W_i", "W_f", "W_o")], axis=1).T
    k_out = o * (1 - tc * tc)
    k_cand = i * (1 - g * g)
    k_gates = (g * i * (1 - i), c * f * (1 - f), tc * o * (1 - o))

    def through_gates(dc, vh, kg):
        return jnp.concatenate([dc * kg[0], dc * kg[1], vh * kg[2]], axis=-1) @ wifo_t

    lam_c, lam_h = adjoints
    b_lam = (jnp.zeros_like(lam_c), through_gates(lam_c + lam_h * k_out, lam_h, k_gates))

    def step(coef, e, lam1):
        ko, kc, f_, kg = coef
        vc, vh = jnp.stack([e[0], lam1[0]]), jnp.stack([e[1], lam1[1]])
        dc = vc + vh * ko
        a_c, a_h = dc * f_, (dc * kc) @ w_t
        b_e = (jnp.zeros_like(e[0]), through_gates(dc[0], e[1], kg))
        return (a_c[0], a_h[0]), (a_c[1], a_h[1]), b_e

    e_all, lam1_all = _reverse(step, (k_out, k_cand, f, k_gates), b_lam, adjoints)
    return tuple(e_all), tuple(lam1_all)


_STREAMS: dict[type, Callable[..., tuple[Any, Any]]] = {
    ScalarGate: gated_leaky_streams,
    VectorGate: gated_leaky_streams,
    GRU: gru_streams,
    LSTM: lstm_streams,
}


def first_order_streams(cell: Any) -> Callable[..., tuple[Any, Any]] | None:
    """The closed-form streams of ``cell``'s exact class, or ``None`` (generic path)."""
    return _STREAMS.get(type(cell))
