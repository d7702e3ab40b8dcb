r"""The LSTM over a whole sequence with a hand-written backward pass (speed only).

Same values and, up to float rounding, the same gradients as ``lax.scan`` of
:meth:`gatezoo.LSTM.__call__`; what changes is where the work happens in the backward pass.
Autodiff of the scan accumulates ``dW += h_{t-1}^T dA_t`` inside the reverse loop, T small
outer products plus T accumulations of a ``(hidden, 4 hidden)`` matrix. Here the reverse loop
only propagates the adjoints,

.. math::
    \bar c_t &= \bar c_{t+1} \odot f_{t+1} + \bar h_t \odot o_t \odot (1 - \tanh^2 c_t), \\
    \bar a_t &= [\bar c_t g_t\, i_t(1-i_t),\ \bar c_t c_{t-1} f_t(1-f_t),\
                \bar h_t \tanh(c_t)\, o_t(1-o_t),\ \bar c_t i_t (1-g_t^2)], \quad
    \bar h_{t-1} \mathrel{+}= \bar a_t W^\top,

and stacks :math:`\bar a_t`; the parameter gradients are then three large matrix products,
``dW = H_{prev}^T dA``, ``dU = X^T dA``, ``db = sum dA``, faster on a CPU than autodiff of the
scan (benchmarks/README.md, cells). Being a ``jax.custom_vjp``, it supports
reverse mode (``grad``, ``vjp``, ``vmap`` of those) but not forward mode; the sequence model
uses it whenever ``eps`` is None.

Optional additive ``offsets`` :math:`(\gamma_t, \delta_t)` follow
``SequenceModel.unroll_states``: the step's new carry is shifted,
:math:`c_t = f_t c_{t-1} + i_t g_t + \gamma_t` and :math:`h_t = o_t \tanh(\tilde c_t) +
\delta_t` with :math:`\tilde c_t = c_t - \gamma_t` the unshifted cell state (stored apart
so that the backward pass reads it exactly). The cotangents of :math:`\gamma_t, \delta_t`
are the adjoints :math:`\bar c_t` (before the :math:`\bar h_t` term is added) and
:math:`\bar h_t` of the reverse loop, only stacked.

Shapes: ``xs (T, B, in)``, ``c0, h0 (B, n)``, ``U (in, 4n)``, ``W (n, 4n)``, ``b (4n,)`` or
``None``, ``offsets`` a pair ``(T, B, n)`` (for ``c``, ``h``) or ``None``; gate order
``[i, f, o, g]``. Returns ``hs, cs``, each ``(T, B, n)``.

Example:
  >>> import jax.numpy as jnp
  >>> T, B, d, n = 5, 2, 3, 4
  >>> zeros = jnp.zeros((T, B, n))
  >>> hs, cs = lstm_sequence(jnp.ones((d, 4 * n)), jnp.zeros((n, 4 * n)), None,
  ...                        jnp.ones((T, B, d)), jnp.zeros((B, n)), jnp.zeros((B, n)),
  ...                        (zeros, zeros))
  >>> hs.shape, cs.shape
  ((5, 2, 4), (5, 2, 4))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values

from gatezoo.models.time_batch_product import time_batch_product

__all__ = ["lstm_sequence"]


def _step(U, W, b, c, h, x):
    n = h.shape[-1]
    # (x U + b) + h W, in the order of LSTM._project/_recur, so values match bit for bit
    pre = x @ U
    if b is not None:
        pre = pre + b
    pre = pre + h @ W
    gates = jax.nn.sigmoid(pre[..., : 3 * n])
    g = jnp.tanh(pre[..., 3 * n :])
    i, f, o = gates[..., :n], gates[..., n : 2 * n], gates[..., 2 * n :]
    c_new = f * c + i * g
    h_new = o * jnp.tanh(c_new)
    return c_new, h_new, jnp.concatenate([gates, g], axis=-1)


@jax.custom_vjp
def lstm_sequence(U, W, b, xs, c0, h0, offsets=None):
    """``(hs, cs)`` of the LSTM over ``xs`` from ``(c0, h0)``, with ``offsets`` (see module)."""
    return _forward(U, W, b, xs, c0, h0, offsets)[0]


def _forward(U, W, b, xs, c0, h0, offsets):
    def body(carry, inp):
        x, off = inp
        c, h = carry
        c, h, act = _step(U, W, b, c, h, x)
        if off is None:
            return (c, h), (h, c, act, None)
        c_shift, h = c + off[0], h + off[1]
        return (c_shift, h), (h, c_shift, act, c)

    _, (hs, cs, acts, c_raw) = jax.lax.scan(body, (c0, h0), (xs, offsets))
    return (hs, cs), (acts, c_raw)


def _fwd(*primals):
    # symbolic_zeros: leaves arrive wrapped with a ``perturbed`` flag, which is not needed here
    U, W, b, xs, c0, h0, offsets = custom_vjp_primal_tree_values(primals)
    (hs, cs), (acts, c_raw) = _forward(U, W, b, xs, c0, h0, offsets)
    return (hs, cs), (U, W, b, xs, c0, h0, hs, cs, acts, c_raw)


def _bwd(res, cotangents):
    U, W, b, xs, c0, h0, hs, cs, acts, c_raw = res
    # with offsets, tanh reads the unshifted cell state and c_{t-1} the shifted one
    has_offsets = c_raw is not None
    c_tanh = c_raw if has_offsets else cs
    # An unused output (the stacked ``cs`` for a last-step readout, say) comes as a symbolic
    # zero; skipping it saves building and reading a (T, B, n) array of zeros.
    dhs, dcs = (None if type(d) is SymbolicZero else d for d in cotangents)
    n = h0.shape[-1]
    T = xs.shape[0]
    w_t = W.T

    def body(carry, inp):
        dc, dh = carry
        t, dh_out, dc_out, act = inp
        c = c_tanh[t]
        c_prev = jnp.where(t > 0, cs[jnp.maximum(t - 1, 0)], c0)
        i, f, o, g = act[..., :n], act[..., n : 2 * n], act[..., 2 * n : 3 * n], act[..., 3 * n :]
        dh = dh if dh_out is None else dh + dh_out
        dc = dc if dc_out is None else dc + dc_out
        # dc, dh are now the adjoints of the (offset) carry at t, hence the offsets' cotangents
        doff = (dc, dh) if has_offsets else None
        tc = jnp.tanh(c)
        dc = dc + dh * o * (1 - tc * tc)
        da = jnp.concatenate(
            [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dh * tc * o * (1 - o),
             dc * i * (1 - g * g)],
            axis=-1,
        )
        return (dc * f, da @ w_t), (da, doff)

    zero = jnp.zeros_like(c0)
    (dc0, dh0), (da, doffsets) = jax.lax.scan(
        body, (zero, zero), (jnp.arange(T), dhs, dcs, acts), reverse=True
    )
    dU = time_batch_product(xs, da)
    dW = h0.T @ da[0]
    if T > 1:
        dW = dW + time_batch_product(hs[:-1], da[1:])
    db = None if b is None else da.sum(axis=(0, 1))
    dxs = (da @ U.T).astype(xs.dtype)
    return dU, dW, db, dxs, dc0, dh0, doffsets


lstm_sequence.defvjp(_fwd, _bwd, symbolic_zeros=True)
