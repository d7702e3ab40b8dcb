"""GRU in the convex-combination form of docs/theory.md §1.6."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.base import RecurrentCell
from gatezoo.models.gru_scan import gru_sequence
from gatezoo.models.init import InitSpec

__all__ = ["GRU"]


class GRU(RecurrentCell):
    r"""Gated recurrent unit whose update gate ``z`` weights the new candidate.

    .. math::
        z_t &= \sigma(W_z h_{t-1} + U_z x_t + b_z), \quad
        r_t = \sigma(W_r h_{t-1} + U_r x_t + b_r), \\
        g_t &= \tanh(W (r_t \odot h_{t-1}) + U x_t + b), \quad
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot g_t.

    The time-scale gate is ``alpha_t = z_t``. (Flax's ``nnx.GRUCell`` names the retention ``z``
    instead; the adapter accounts for that.) Parameters ``U*`` are ``(in, hidden)``, ``W*``
    ``(hidden, hidden)``, ``b*`` ``(hidden,)``; ``b_z`` follows the gate-bias initialisation.
    This is the vector-gate cell of docs/theory.md §1.5 with a reset gate inside the candidate
    (docs/theory.md §1.6).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = GRU(3, 8, rngs=nnx.Rngs(0))
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> z = cell.time_scale(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> h.shape, z.shape, bool(((z > 0) & (z < 1)).all())
      ((2, 8), (2, 8), True)

    References:
      Cho et al., `Learning Phrase Representations using RNN Encoder-Decoder for Statistical
      Machine Translation <https://arxiv.org/abs/1406.1078>`__, arXiv:1406.1078, 2014.

      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.
    """

    _input_blocks = (("U_z", "b_z"), ("U_r", "b_r"), ("U", "b"))

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
        self.U_z = self._kernel(d, h, recurrent=False)
        self.W_z = self._kernel(h, h, recurrent=True)
        self.b_z = self._bias(h, gate=True)
        self.U_r = self._kernel(d, h, recurrent=False)
        self.W_r = self._kernel(h, h, recurrent=True)
        self.b_r = self._bias(h)
        self.U = self._kernel(d, h, recurrent=False)
        self.W = self._kernel(h, h, recurrent=True)
        self.b = self._bias(h)
        self._done()

    def _fuse(self) -> dict[str, Any]:
        fused = super()._fuse()
        fused["W_zr"] = jnp.concatenate([self.W_z[...], self.W_r[...]], axis=1)
        fused["W"] = self.W[...]
        return fused

    def _gates(self, fused, xp_z, xp_r, gate_carry):
        pre = gate_carry @ fused["W_zr"]
        h = self.hidden_features
        return jax.nn.sigmoid(xp_z + pre[..., :h]), jax.nn.sigmoid(xp_r + pre[..., h:])

    def _recur(self, fused, carry: jax.Array, xp: jax.Array, gate_carry: jax.Array):
        xp_z, xp_r, xp_c = self._split(xp)
        z, r = self._gates(fused, xp_z, xp_r, gate_carry)
        g = jnp.tanh(xp_c + (r * carry) @ fused["W"])
        h = carry + z * (g - carry)
        return h, h

    def _sequence(self, fused, xs: jax.Array, carry0: jax.Array, offsets: Any = None):
        """``(ys, hs)`` over time-major ``xs`` with the hand-written backward pass."""
        if type(self)._recur is not GRU._recur:  # a subclass changed the step: no shortcut
            return None
        hs = gru_sequence(fused["U"], fused["W_zr"], fused["W"], fused["b"],
                          xs.astype(fused["U"].dtype), carry0, offsets)
        return hs, hs

    def time_scale(self, carry: jax.Array, x: jax.Array) -> jax.Array:
        fused = self._fuse()
        xp_z, xp_r, _ = self._split(self._project(fused, x))
        return self._gates(fused, xp_z, xp_r, carry)[0]
