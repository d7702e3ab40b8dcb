"""LSTM on the joint state ``(c, h)`` (docs/theory.md §1.6)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.base import RecurrentCell
from gatezoo.models.init import InitSpec, gate_bias_init
from gatezoo.models.lstm_scan import lstm_sequence

__all__ = ["LSTM"]


class LSTM(RecurrentCell):
    r"""Long short-term memory cell; the carry is ``(c, h)`` as in Flax's LSTM cells.

    .. math::
        i_t, f_t, o_t &= \sigma(W_{i,f,o} h_{t-1} + U_{i,f,o} x_t + b_{i,f,o}), \quad
        g_t = \tanh(W h_{t-1} + U x_t + b), \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t, \quad h_t = o_t \odot \tanh(c_t).

    The retention is the forget gate, so the time-scale gate is ``alpha_t = 1 - f_t``. The gate
    bias option sets the pre-activation of ``alpha``, hence ``b_f = -gate_bias``; chrono
    initialisation sets ``b_f = log u`` and ``b_i = -log u`` with ``u ~ U(1, T_max - 1)``.
    Parameters ``U*`` are ``(in, hidden)``, ``W*`` ``(hidden, hidden)``, ``b*`` ``(hidden,)``.
    See docs/theory.md §1.6 for how it fits the gated-cell form.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = LSTM(3, 8, rngs=nnx.Rngs(0))
      >>> carry = cell.initialize_carry((2, 3))
      >>> (c, h), y = cell(carry, jnp.ones((2, 3)))
      >>> c.shape, h.shape, bool((y == h).all())
      ((2, 8), (2, 8), True)
      >>> cell.time_scale(carry, jnp.ones((2, 3))).shape  # 1 - f_t
      (2, 8)

    References:
      Hochreiter and Schmidhuber, `Long Short-Term Memory
      <https://doi.org/10.1162/neco.1997.9.8.1735>`__, Neural Computation 9(8), 1997.

      Gers, Schmidhuber and Cummins, `Learning to Forget: Continual Prediction with LSTM
      <https://doi.org/10.1162/089976600300015015>`__, Neural Computation 12(10), 2000 (the
      forget gate).

      Tallec and Ollivier, `Can Recurrent Neural Networks Warp Time?
      <https://arxiv.org/abs/1804.11188>`__, ICLR 2018 (the chrono initialisation).
    """

    _input_blocks = (("U_i", "b_i"), ("U_f", "b_f"), ("U_o", "b_o"), ("U", "b"))

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        use_bias: bool = True,
        init: InitSpec | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features, hidden_features, use_bias=use_bias, init=init,
            param_dtype=param_dtype, rngs=rngs,
        )
        d, h = in_features, hidden_features
        alpha_bias = gate_bias_init(self.init, rngs.params(), h, param_dtype)
        chrono = self.init.gate_bias == "chrono"
        self.U_i = self._kernel(d, h, recurrent=False)
        self.W_i = self._kernel(h, h, recurrent=True)
        self.b_i = self._bias(h, value=alpha_bias if chrono else None)
        self.U_f = self._kernel(d, h, recurrent=False)
        self.W_f = self._kernel(h, h, recurrent=True)
        self.b_f = self._bias(h, value=-alpha_bias)
        self.U_o = self._kernel(d, h, recurrent=False)
        self.W_o = self._kernel(h, h, recurrent=True)
        self.b_o = self._bias(h)
        self.U = self._kernel(d, h, recurrent=False)
        self.W = self._kernel(h, h, recurrent=True)
        self.b = self._bias(h)
        self._done()

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None):
        shape = tuple(input_shape[:-1]) + (self.hidden_features,)
        return jnp.zeros(shape, self.param_dtype), jnp.zeros(shape, self.param_dtype)

    def _fuse(self) -> dict[str, Any]:
        fused = super()._fuse()
        fused["W"] = jnp.concatenate(
            [self.W_i[...], self.W_f[...], self.W_o[...], self.W[...]], axis=1
        )
        return fused

    def _recur(self, fused, carry, xp: jax.Array, gate_carry):
        c, h = carry
        n = self.hidden_features
        kernel = fused["W"]
        if gate_carry is carry:
            # nobody measures: one fused (hidden, 4 hidden) recurrent matmul
            pre = xp + h @ kernel
        else:
            pre = xp + jnp.concatenate(
                [gate_carry[1] @ kernel[:, : 3 * n], h @ kernel[:, 3 * n :]], axis=-1
            )
        gates = jax.nn.sigmoid(pre[..., : 3 * n])
        i, f, o = gates[..., :n], gates[..., n : 2 * n], gates[..., 2 * n :]
        g = jnp.tanh(pre[..., 3 * n :])
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        return (c_new, h_new), h_new

    def _sequence(self, fused, xs: jax.Array, carry0, offsets: Any = None):
        """``(ys, (cs, hs))`` over time-major ``xs`` with the hand-written backward pass."""
        if type(self)._recur is not LSTM._recur:  # a subclass changed the step: no shortcut
            return None
        c0, h0 = carry0
        if offsets is not None:
            offsets = tuple(offsets)  # the custom VJP returns a tuple cotangent
        hs, cs = lstm_sequence(fused["U"], fused["W"], fused["b"], xs.astype(fused["U"].dtype),
                               c0, h0, offsets)
        return hs, (cs, hs)

    def time_scale(self, carry, x: jax.Array) -> jax.Array:
        _, xf, _, _ = self._split(self.project(x))
        return 1.0 - jax.nn.sigmoid(xf + carry[1] @ self.W_f[...])
