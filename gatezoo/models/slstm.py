"""sLSTM (xLSTM's scalar-memory LSTM): exponential gating with a stabiliser, block-diagonal
recurrence, carry ``(c, n, m, h)``."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.base import RecurrentCell
from gatezoo.models.init import InitSpec, gate_bias_init, matrix_init

__all__ = ["SLSTM", "FORGET_GATES"]

FORGET_GATES = ("sigmoid", "exp")


def forget_cap(dtype: Any) -> float:
    """The cap on ``log f'`` where the memory is empty: half the largest exponent of ``dtype``."""
    return 0.5 * math.log(float(jnp.finfo(dtype).max))


class SLSTM(RecurrentCell):
    r"""The sLSTM cell of xLSTM: exponential input gate, normaliser state, stabiliser state.

    Pre-activations (``R_*`` block-diagonal, one ``(d, d)`` block per head,
    ``d = hidden / num_heads``):

    .. math::
        \tilde z_t, \tilde\imath_t, \tilde f_t, \tilde o_t
            &= U_{z,i,f,o}\, x_t + R_{z,i,f,o}\, h_{t-1} + b_{z,i,f,o}, \qquad
        z_t = \tanh \tilde z_t, \quad o_t = \sigma(\tilde o_t), \\
        \log i_t &= \tilde\imath_t, \qquad
        \log f_t = \log\sigma(\tilde f_t) \ \text{(``forget="sigmoid"``)} \ \text{or}\
            \tilde f_t \ \text{(``forget="exp"``)}, \\
        m_t &= \max(\log f_t + m_{t-1},\, \log i_t) \ \ (m_t = \log i_t \text{ where }
            n_{t-1} = 0), \quad
        i'_t = e^{\log i_t - m_t}, \quad f'_t = e^{\log f_t + m_{t-1} - m_t}, \\
        c_t &= f'_t \odot c_{t-1} + i'_t \odot z_t, \quad
        n_t = f'_t \odot n_{t-1} + i'_t, \quad h_t = o_t \odot c_t / n_t .

    The stabiliser :math:`m_t` keeps :math:`i'_t, f'_t \le 1` (one of them is 1); it rescales
    ``c`` and ``n`` alike, so :math:`h_t` is the same as without it. The carry is
    ``(c, n, m, h)`` (``m`` is part of the state; the zero carry has ``m_0 = 0``) and the output
    is ``h``. Choice of forget gate: ``"sigmoid"`` (default, as in the xLSTM reference code,
    ``f_t < 1``) or ``"exp"`` (the paper's other option); both are stabilised.

    Gate protocol. The gates are :math:`i'_t, f'_t, o_t`: with ``split_call(carry, x, g)``
    their pre-activations read ``h`` of ``g`` and the stabiliser reads ``m`` of ``g`` (and
    where ``n`` of ``g`` is 0, a condition without derivative), while the
    candidate :math:`z_t` reads ``h`` of ``carry`` and the updates of ``c, n`` (and the read
    ``c/n``) read ``c, n`` of ``carry``. So ``A`` (gates frozen) is the LSTM's: ``diag(f')`` on
    ``c`` and ``n``, the candidate path ``i' z'`` through ``R_z`` and the read
    ``h = o c / n``; its row of ``m`` is zero. ``B`` holds everything through
    :math:`\tilde\imath, \tilde f, \tilde o` and :math:`m_{t-1}`, the whole row of ``m``
    included. ``m_t`` is a maximum, piecewise smooth: its derivative is the branch's (``1`` on
    ``m_{t-1}`` and ``(log f)'`` on ``f~`` where the forget branch is larger, ``1`` on ``i~``
    otherwise); at a tie it is JAX's ``jnp.maximum`` convention, half to each branch.

    Time scale. Per neuron, the normalised memory :math:`r_t = c_t / n_t` (so
    :math:`h_t = o_t \odot r_t`) is the convex combination

    .. math::
        r_t = (1 - \alpha_t)\, r_{t-1} + \alpha_t\, z_t, \qquad
        \alpha_t = \frac{i'_t}{n_t} = 1 - \frac{f'_t\, n_{t-1}}{n_t} \in (0, 1],

    which ``time_scale`` returns: the weight of the new content, the analogue of the LSTM's
    ``1 - f_t`` for a memory read through its normaliser (the minLSTM's normalised gates are
    the case ``n_{t-1} = 1``). It is free of the stabiliser (:math:`i'_t/n_t = i_t/\bar n_t`
    for the unstabilised :math:`\bar n_t = e^{m_t} n_t`); ``1 - f'_t`` would not be, and it is
    0 whenever the forget branch of the maximum wins. States reached from the zero carry have
    ``n >= 1``; on any other state ``|n_{t-1}|`` stands for ``n_{t-1}``, so ``alpha`` stays in
    [0, 1]. (The transport instrument's retention predictor reads ``1 - alpha`` on the first
    carry leaf, ``c``, whose gate-frozen retention is ``f'``: for the sLSTM its diagonal/mixing
    attribution splits the read memory ``c/n``'s retention from the rest, not ``c``'s.)

    Parameters: ``U_*`` ``(in, hidden)``, ``R_*`` ``(heads, d, d)``, ``b_*`` ``(hidden,)``, in
    the order ``z, i, f, o``. The gate-bias option sets the retention as for the LSTM
    (``b_f = -gate_bias``, chrono ``b_f = log u``, ``b_i = -log u``); with ``forget="exp"``
    ``b_f`` is the log of the sigmoid forget gate's value, so both start from the same
    ``f_t``. Numerics: where the memory is empty (``n_{t-1} = 0``, the zero carry) the
    stabiliser starts at :math:`m_t = \log i_t` (the xLSTM reference code does so when the
    whole batch has ``n = 0``; here per neuron), so
    ``i' = 1`` and ``n_t = 1``; from then on ``max(i', f') = 1`` keeps ``n_t >= 1`` on every
    state reached from the zero carry, whatever the size of the pre-activations. (That ``m_t``
    is another gauge of the same ``h``: ``c, n, m`` enter later steps only through
    :math:`e^{m} c, e^{m} n`. There ``f'`` multiplies ``0`` and is capped at half the dtype's
    largest exponent, so ``0 * f'`` stays 0.)

    Args:
      in_features, hidden_features: input and state sizes.
      num_heads: number of diagonal blocks of ``R_*``; must divide ``hidden_features``.
      forget: ``"sigmoid"`` or ``"exp"``.
      use_bias, init, param_dtype, rngs: as for every built-in cell.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = SLSTM(3, 8, num_heads=2, rngs=nnx.Rngs(0))
      >>> cell.R_z.shape, cell.U_z.shape
      ((2, 4, 4), (3, 8))
      >>> carry = cell.initialize_carry((2, 3))
      >>> (c, n, m, h), y = cell(carry, jnp.ones((2, 3)))
      >>> h.shape, bool((y == h).all()), bool((n > 0).all())
      ((2, 8), True, True)
      >>> alpha = cell.time_scale(carry, jnp.ones((2, 3)))  # i'/n: 1 from the zero state
      >>> alpha.shape, bool(jnp.allclose(alpha, 1.0))
      ((2, 8), True)

    References:
      Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter and Hochreiter,
      `xLSTM: Extended Long Short-Term Memory <https://arxiv.org/abs/2405.04517>`__,
      arXiv:2405.04517, 2024 (NeurIPS 2024), §2.2.
    """

    _input_blocks = (("U_z", "b_z"), ("U_i", "b_i"), ("U_f", "b_f"), ("U_o", "b_o"))

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_heads: int = 1,
        forget: str = "sigmoid",
        use_bias: bool = True,
        init: InitSpec | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features, hidden_features, use_bias=use_bias, init=init,
            param_dtype=param_dtype, rngs=rngs,
        )
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 \
                or hidden_features % num_heads:
            raise ValueError(f"num_heads must be a positive integer dividing hidden_features "
                             f"= {hidden_features}, got {num_heads!r}")
        if forget not in FORGET_GATES:
            raise ValueError(f"forget must be one of {FORGET_GATES}, got {forget!r}")
        self.num_heads, self.forget = num_heads, forget
        d, h = in_features, hidden_features
        alpha_bias = gate_bias_init(self.init, rngs.params(), h, param_dtype)
        chrono = self.init.gate_bias == "chrono"
        f_bias = -alpha_bias if forget == "sigmoid" else jax.nn.log_sigmoid(-alpha_bias)
        for gate in "zifo":
            setattr(self, f"U_{gate}", self._kernel(d, h, recurrent=False))
            setattr(self, f"R_{gate}", self._block_kernel())
        self.b_z = self._bias(h)
        self.b_i = self._bias(h, value=alpha_bias if chrono else None)
        self.b_f = self._bias(h, value=f_bias)
        self.b_o = self._bias(h)
        self._done()

    def _block_kernel(self) -> nnx.Param:
        """``(heads, d, d)``: each head's block drawn as a recurrent ``(d, d)`` kernel."""
        size = self.hidden_features // self.num_heads
        fn = matrix_init(self.init, recurrent=True)
        blocks = [fn(self._rngs.params(), (size, size), self.param_dtype)
                  for _ in range(self.num_heads)]
        return nnx.Param(jnp.stack(blocks))

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None):
        """Zero ``(c, n, m, h)`` for inputs of shape ``batch + (in_features,)``."""
        shape = tuple(input_shape[:-1]) + (self.hidden_features,)
        return tuple(jnp.zeros(shape, self.param_dtype) for _ in range(4))

    def _fuse(self) -> dict[str, Any]:
        fused = super()._fuse()
        fused["R"] = jnp.concatenate([getattr(self, f"R_{g}")[...] for g in "zifo"], axis=-1)
        return fused

    def block_matmul(self, h: jax.Array, R: jax.Array) -> jax.Array:
        """``h`` times the block-diagonal matrices ``R (heads, d, k d)``: ``(..., k hidden)``,
        the ``k`` blocks' outputs one after the other (each ``hidden`` wide, head-major)."""
        heads, d, kd = R.shape
        lead = h.shape[:-1]
        out = jnp.einsum("...hd,hde->...he", h.reshape(lead + (heads, d)), R)
        out = jnp.swapaxes(out.reshape(lead + (heads, kd // d, d)), -3, -2)
        return out.reshape(lead + (kd // d * heads * d,))

    def _gates(self, pre_ifo: jax.Array, m_prev: jax.Array, n_prev: jax.Array):
        """``(m_t, i', f', o)`` from the gate pre-activations ``[i~ | f~ | o~]``, ``m_{t-1}``
        and ``n_{t-1}`` (whose zeros, an empty memory, start the stabiliser at ``log i``)."""
        n = self.hidden_features
        log_i, f_pre, o_pre = pre_ifo[..., :n], pre_ifo[..., n : 2 * n], pre_ifo[..., 2 * n :]
        log_f = jax.nn.log_sigmoid(f_pre) if self.forget == "sigmoid" else f_pre
        kept = log_f + m_prev
        empty = n_prev == 0
        m = jnp.where(empty, log_i, jnp.maximum(kept, log_i))
        # f' multiplies the empty memory (0) there: bounded, so that 0 * f' stays 0
        log_fp = kept - m
        cap = forget_cap(log_fp.dtype)
        log_fp = jnp.where(empty & (log_fp > cap), cap, log_fp)
        return m, jnp.exp(log_i - m), jnp.exp(log_fp), jax.nn.sigmoid(o_pre)

    def _recur(self, fused, carry, xp: jax.Array, gate_carry):
        c, n, _, h = carry
        R = fused["R"]
        size = R.shape[1]
        if gate_carry is carry:
            # nobody measures: one fused block-diagonal product for all four blocks
            pre = xp + self.block_matmul(h, R)
        else:
            pre = xp + jnp.concatenate(
                [self.block_matmul(h, R[..., :size]),
                 self.block_matmul(gate_carry[3], R[..., size:])], axis=-1)
        hidden = self.hidden_features
        z = jnp.tanh(pre[..., :hidden])
        m_new, i, f, o = self._gates(pre[..., hidden:], gate_carry[2], gate_carry[1])
        c_new = f * c + i * z
        n_new = f * n + i
        h_new = o * c_new / n_new
        return (c_new, n_new, m_new, h_new), h_new

    def time_scale(self, carry, x: jax.Array) -> jax.Array:
        """``alpha_t = i'_t / (f'_t |n_{t-1}| + i'_t)``, the weight of ``z_t`` in ``c_t / n_t``."""
        fused = self._fuse()
        size = fused["R"].shape[1]
        pre = self.project(x)[..., self.hidden_features :] + self.block_matmul(
            carry[3], fused["R"][..., size:])
        _, i, f, _ = self._gates(pre, carry[2], carry[1])
        return i / (f * jnp.abs(carry[1]) + i)
