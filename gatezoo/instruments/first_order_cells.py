r"""Closed-form first-order adjoint streams for the built-in gated cells (speed only).

:func:`gatezoo.instruments.first_order_gradients` needs, for every step, the residual
``e = lambda - lambda(0)`` and the first-order adjoint ``lambda1`` (docs/theory.md §3.3):

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

The same activations then give the immediate parameter cotangents of any state cotangent
``v`` (``(d+h/dtheta)^T v``, summed over steps and examples) without recomputing the forward:
the pre-activation cotangents are elementwise in ``v`` (GRU: one more product for the reset
gate), and the pre-activations, with the stored gate values, are linear in the parameters, so
``jax.linear_transpose`` turns them into ``H^T dA``, ``X^T dA``, ``sum dA``.

Each function has the signature of :attr:`LayerFns.first_order_streams`,
``streams(cell_params, xs_t, prev, adjoints) -> (e_all, lambda1_all, immediate)``, with
``xs_t`` ``(T, batch, in)`` the layer's inputs, ``prev`` the states before each step
(``prev[0] = h_0``) and ``adjoints`` ``dL/dh_t``, leaves ``(T, batch, ...)``; ``e_all[i]`` and
``lambda1_all[i]`` belong to the state ``h_{i+1}`` (the state step ``i`` produces), as in the
generic scan; ``immediate(v) -> (cell-parameter cotangent, xs_t cotangent)`` for ``v`` shaped
like ``adjoints``.
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


def _affine(x: jax.Array, h: jax.Array, cp: Any, *blocks: tuple[str, str, str]) -> jax.Array:
    """``x [U_1 | U_2 ..] + [b_1 | b_2 ..] + h [W_1 | W_2 ..]`` for the ``(U, W, b)`` names
    ``blocks``: the cells' pre-activations, concatenated kernels giving one product each."""
    cat = lambda names: names[0] if len(names) == 1 else jnp.concatenate(names, axis=-1)  # noqa: E731
    u = cat([cp[b[0]][...] for b in blocks])
    # on (T * batch, features): two-dimensional products (and their transposes) are the fast
    # ones on CPU
    out = _flat(x).astype(u.dtype) @ u
    if _arr(cp, blocks[0][2]) is not None:
        out = out + cat([cp[b[2]][...] for b in blocks])
    out = out + _flat(h) @ cat([cp[b[1]][...] for b in blocks])
    return out.reshape(x.shape[:-1] + out.shape[-1:])


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape((-1,) + a.shape[2:])


def _immediate(pre: Callable, pullback: Callable, cp: Any, xs_t: jax.Array) -> Callable:
    """``v -> ((d+h/dtheta)^T v, (d+h/dx)^T v)`` over all steps at once, summed over steps and
    examples for ``theta``: ``pullback(v)`` gives the cotangents of the pre-activations
    ``pre(cell_params, xs_t)`` (a tuple of ``(T, batch, k)`` arrays), which, with the gate
    values held at the stored ones, are linear in each argument; their transposes are a few
    large two-dimensional products (``H^T dA``, ``X^T dA``, ``sum dA``)."""

    def cotangents(v):
        da = tuple(_flat(a) for a in pullback(v))

        def pre_flat(p, x):
            return tuple(_flat(a) for a in pre(p, x))

        (d_p,) = jax.linear_transpose(lambda p: pre_flat(p, xs_t), cp)(da)
        (d_x,) = jax.linear_transpose(lambda x: pre_flat(cp, x), xs_t)(da)
        return d_p, d_x

    return cotangents


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


_LEAKY = (("U", "W", "b"), ("U_g", "W_g", "b_g"))
_GRU_GATES = (("U_z", "W_z", "b_z"), ("U_r", "W_r", "b_r"))
_GRU_CAND = (("U", "W", "b"),)
_LSTM = (("U_i", "W_i", "b_i"), ("U_f", "W_f", "b_f"), ("U_o", "W_o", "b_o"), ("U", "W", "b"))


def gated_leaky_streams(cp: Any, xs_t: jax.Array, prev: jax.Array, adjoints: jax.Array):
    r""":class:`gatezoo.ScalarGate` / :class:`gatezoo.VectorGate`:
    ``h' = h + alpha (phi - h)``, ``phi = tanh(x U + b + h W)``, ``alpha = sigma(x U_g + b_g +
    h W_g)``; ``A^T v = v (1 - alpha) + (v alpha (1 - phi^2)) W^T``, ``B^T v = (\rho(v (phi -
    h)) alpha (1 - alpha)) W_g^T`` with ``rho`` the sum over neurons for the scalar gate."""
    n = prev.shape[-1]
    pre = _affine(xs_t, prev, cp, *_LEAKY)
    phi, alpha = jnp.tanh(pre[..., :n]), jax.nn.sigmoid(pre[..., n:])
    scalar = alpha.shape[-1] == 1 and n != 1
    w_t, wg_t = cp["W"][...].T, cp["W_g"][...].T
    cand, diff, gate = alpha * (1 - phi * phi), phi - prev, alpha * (1 - alpha)

    def through_gate(v, diff, g):
        d = v * diff
        return (jnp.sum(d, axis=-1, keepdims=True) if scalar else d) * g

    b_lam = through_gate(adjoints, diff, gate) @ wg_t

    def step(coef, e, lam1):
        keep, c, diff_, g = coef
        v = jnp.stack([e, lam1])
        a = (v * c) @ w_t + v * keep
        return a[0], a[1], through_gate(e, diff_, g) @ wg_t

    def pullback(v):
        return (jnp.concatenate([v * cand, through_gate(v, diff, gate)], axis=-1),)

    e_all, lam1_all = _reverse(step, (1 - alpha, cand, diff, gate), b_lam, adjoints)
    return e_all, lam1_all, _immediate(lambda p, x: (_affine(x, prev, p, *_LEAKY),), pullback,
                                       cp, xs_t)


def gru_streams(cp: Any, xs_t: jax.Array, prev: jax.Array, adjoints: jax.Array):
    r""":class:`gatezoo.GRU`: with ``z, r`` frozen, ``A^T v = v (1 - z) + ((v z (1 - g^2)) W^T)
    r``; through the gates, ``B^T v = [v (g - h) z (1 - z), ((v z (1 - g^2)) W^T) h r (1 - r)]
    [W_z | W_r]^T``."""
    n = prev.shape[-1]
    zr = jax.nn.sigmoid(_affine(xs_t, prev, cp, *_GRU_GATES))
    z, r = zr[..., :n], zr[..., n:]
    g = jnp.tanh(_affine(xs_t, r * prev, cp, *_GRU_CAND))
    w_t = cp["W"][...].T
    wzr_t = jnp.concatenate([cp["W_z"][...], cp["W_r"][...]], axis=1).T
    cand = z * (1 - g * g)
    cz = (g - prev) * z * (1 - z)
    cr = prev * r * (1 - r)

    def gate_cot(v, d_rh, cz_, cr_):
        return jnp.concatenate([v * cz_, d_rh * cr_], axis=-1)

    b_lam = gate_cot(adjoints, (adjoints * cand) @ w_t, cz, cr) @ wzr_t

    def step(coef, e, lam1):
        keep, c, r_, cz_, cr_ = coef
        v = jnp.stack([e, lam1])
        d_rh = (v * c) @ w_t
        a = v * keep + d_rh * r_
        return a[0], a[1], gate_cot(e, d_rh[0], cz_, cr_) @ wzr_t

    def pre(p, x):
        return _affine(x, prev, p, *_GRU_GATES), _affine(x, r * prev, p, *_GRU_CAND)

    def pullback(v):
        da_g = v * cand
        return gate_cot(v, da_g @ w_t, cz, cr), da_g

    e_all, lam1_all = _reverse(step, (1 - z, cand, r, cz, cr), b_lam, adjoints)
    return e_all, lam1_all, _immediate(pre, pullback, cp, xs_t)


def lstm_streams(cp: Any, xs_t: jax.Array, prev: Any, adjoints: Any):
    r""":class:`gatezoo.LSTM` on ``(c, h)``: with ``\bar c = v_c + v_h o (1 - \tanh^2 c')``,
    ``A^T v = (\bar c f, (\bar c i (1 - g^2)) W^T)`` and ``B^T v = (0, [\bar c g i (1 - i),
    \bar c c f (1 - f), v_h \tanh(c') o (1 - o)] [W_i | W_f | W_o]^T)``."""
    c, h = prev
    n = h.shape[-1]
    pre = _affine(xs_t, h, cp, *_LSTM)
    gates, g = jax.nn.sigmoid(pre[..., : 3 * n]), jnp.tanh(pre[..., 3 * n :])
    i, f, o = gates[..., :n], gates[..., n : 2 * n], gates[..., 2 * n :]
    tc = jnp.tanh(f * c + i * g)
    w_t = cp["W"][...].T
    wifo_t = jnp.concatenate([cp[k][...] for k in ("W_i", "W_f", "W_o")], axis=1).T
    k_out = o * (1 - tc * tc)
    k_cand = i * (1 - g * g)
    k_gates = (g * i * (1 - i), c * f * (1 - f), tc * o * (1 - o))

    def gate_cot(dc, vh, kg):
        return jnp.concatenate([dc * kg[0], dc * kg[1], vh * kg[2]], axis=-1)

    lam_c, lam_h = adjoints
    # B has no c-rows: broadcast zeros there instead of (T, batch, n) arrays of them
    none = jnp.zeros((), lam_c.dtype)
    b_lam = (jnp.zeros((lam_c.shape[0], 1, 1), lam_c.dtype),
             gate_cot(lam_c + lam_h * k_out, lam_h, k_gates) @ wifo_t)

    def step(coef, e, lam1):
        ko, kc, f_, kg = coef
        vc, vh = jnp.stack([e[0], lam1[0]]), jnp.stack([e[1], lam1[1]])
        dc = vc + vh * ko
        a_c, a_h = dc * f_, (dc * kc) @ w_t
        b_e = (none, gate_cot(dc[0], e[1], kg) @ wifo_t)
        return (a_c[0], a_h[0]), (a_c[1], a_h[1]), b_e

    def pullback(v):
        dc = v[0] + v[1] * k_out
        return (jnp.concatenate([gate_cot(dc, v[1], k_gates), dc * k_cand], axis=-1),)

    e_all, lam1_all = _reverse(step, (k_out, k_cand, f, k_gates), b_lam, adjoints)
    return tuple(e_all), tuple(lam1_all), _immediate(
        lambda p, x: (_affine(x, h, p, *_LSTM),), pullback, cp, xs_t
    )


_STREAMS: dict[type, Callable[..., tuple[Any, Any, Callable]]] = {
    ScalarGate: gated_leaky_streams,
    VectorGate: gated_leaky_streams,
    GRU: gru_streams,
    LSTM: lstm_streams,
}


def first_order_streams(cell: Any) -> Callable[..., tuple[Any, Any, Callable]] | None:
    """The closed-form streams of ``cell``'s exact class, or ``None`` (generic path)."""
    return _STREAMS.get(type(cell))
