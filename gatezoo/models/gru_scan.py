r"""The GRU over a whole sequence with a hand-written backward pass (speed only).

Same values and, up to float rounding, the same gradients as ``lax.scan`` of
:meth:`gatezoo.GRU.__call__` (see ``lstm_scan.py`` for why: the reverse loop only propagates
adjoints and stacks the pre-activation adjoints; the weight gradients are then a few large
matrix products instead of T small ones accumulated inside the loop). With
:math:`a^z, a^r` the gate pre-activations and :math:`a^g` the candidate's,

.. math::
    \bar z_t &= \bar h_t \odot (g_t - h_{t-1}), \quad \bar a^g_t = \bar h_t z_t (1 - g_t^2),
    \quad \overline{(r h)}_t = \bar a^g_t W^\top, \\
    \bar a^z_t &= \bar z_t z_t (1 - z_t), \quad
    \bar a^r_t = \overline{(r h)}_t h_{t-1} r_t (1 - r_t), \\
    \bar h_{t-1} &\mathrel{+}= \bar h_t (1 - z_t) + \overline{(r h)}_t r_t
    + [\bar a^z_t, \bar a^r_t] W_{zr}^\top,

then ``dW_zr = H_prev^T [dA^z, dA^r]``, ``dW = (R * H_prev)^T dA^g``, ``dU = X^T dA``,
``db = sum dA``. A ``jax.custom_vjp``: reverse mode only.

Optional additive ``offsets`` (one per step) give :math:`h_t = \mathrm{GRU}(h_{t-1}, x_t) +
\delta_t`, as in ``SequenceModel.unroll_states``; ``hs`` holds the offset states, which the
next step reads. The cotangent of :math:`\delta_t` is the adjoint :math:`\bar h_t` (after
adding the output cotangent), which the reverse loop computes anyway: it is only stacked.

Shapes: ``xs (T, B, in)``, ``h0 (B, n)``, ``U (in, 3n)`` (blocks ``[z, r, g]``),
``W_zr (n, 2n)``, ``W (n, n)``, ``b (3n,)`` or ``None``, ``offsets (T, B, n)`` or ``None``.
Returns ``hs (T, B, n)``.

Example:
  >>> import jax.numpy as jnp
  >>> T, B, d, n = 5, 2, 3, 4
  >>> hs = gru_sequence(jnp.ones((d, 3 * n)), jnp.zeros((n, 2 * n)), jnp.zeros((n, n)), None,
  ...                   jnp.ones((T, B, d)), jnp.zeros((B, n)), jnp.zeros((T, B, n)))
  >>> hs.shape
  (5, 2, 4)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values

from gatezoo.models.time_batch_product import time_batch_product

__all__ = ["gru_sequence"]


def _forward(U, W_zr, W, b, xs, h0, offsets):
    n = h0.shape[-1]

    def body(h, inp):
        x, off = inp
        xp = x @ U
        if b is not None:
            xp = xp + b
        zr = jax.nn.sigmoid(xp[..., : 2 * n] + h @ W_zr)
        z, r = zr[..., :n], zr[..., n:]
        g = jnp.tanh(xp[..., 2 * n :] + (r * h) @ W)
        h_new = h + z * (g - h)
        if off is not None:
            h_new = h_new + off
        return h_new, (h_new, jnp.concatenate([zr, g], axis=-1))

    _, (hs, acts) = jax.lax.scan(body, h0, (xs, offsets))
    return hs, acts


@jax.custom_vjp
def gru_sequence(U, W_zr, W, b, xs, h0, offsets=None):
    """``hs`` of the GRU run over ``xs`` from ``h0``, plus ``offsets`` if given (see module)."""
    return _forward(U, W_zr, W, b, xs, h0, offsets)[0]


def _fwd(*primals):
    U, W_zr, W, b, xs, h0, offsets = custom_vjp_primal_tree_values(primals)
    hs, acts = _forward(U, W_zr, W, b, xs, h0, offsets)
    # whether offsets came travels as a leafless residual: None or ()
    return hs, (U, W_zr, W, b, xs, h0, hs, acts, None if offsets is None else ())


def _bwd(res, dhs):
    U, W_zr, W, b, xs, h0, hs, acts, offsets_marker = res
    has_offsets = offsets_marker is not None
    if type(dhs) is SymbolicZero:
        dhs = jnp.zeros(dhs.aval.shape, dhs.aval.dtype)
    n = h0.shape[-1]
    T = xs.shape[0]
    w_t, w_zr_t = W.T, W_zr.T

    def body(dh, inp):
        t, dh_out, act = inp
        h_prev = jnp.where(t > 0, hs[jnp.maximum(t - 1, 0)], h0)
        z, r, g = act[..., :n], act[..., n : 2 * n], act[..., 2 * n :]
        dh = dh + dh_out
        da_g = dh * z * (1 - g * g)
        d_rh = da_g @ w_t
        da_zr = jnp.concatenate(
            [dh * (g - h_prev) * z * (1 - z), d_rh * h_prev * r * (1 - r)], axis=-1
        )
        dh_prev = dh * (1 - z) + d_rh * r + da_zr @ w_zr_t
        # dh is now the adjoint of the (offset) state h_t, hence the offset's cotangent
        return dh_prev, (jnp.concatenate([da_zr, da_g], axis=-1), dh if has_offsets else None)

    dh0, (da, doffsets) = jax.lax.scan(
        body, jnp.zeros_like(h0), (jnp.arange(T), dhs, acts), reverse=True
    )
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    r = acts[..., n : 2 * n]
    dU = time_batch_product(xs, da)
    dW_zr = time_batch_product(h_prev, da[..., : 2 * n])
    dW = time_batch_product(r * h_prev, da[..., 2 * n :])
    db = None if b is None else da.sum(axis=(0, 1))
    dxs = (da @ U.T).astype(xs.dtype)
    return dU, dW_zr, dW, db, dxs, dh0, doffsets


gru_sequence.defvjp(_fwd, _bwd, symbolic_zeros=True)
