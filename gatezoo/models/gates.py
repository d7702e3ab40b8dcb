"""Scalar-gated and vector-gated leaky cells (docs/theory.md §1.4-§1.5)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.base import RecurrentCell
from gatezoo.models.init import InitSpec

__all__ = ["ScalarGate", "VectorGate"]


class _GatedLeaky(RecurrentCell):
    """``h_t = h_{t-1} + alpha_t * (tanh(a_t) - h_{t-1})`` with a learned gate ``alpha_t``."""

    _input_blocks = (("U", "b"), ("U_g", "b_g"))
    _gate_size: int  # 1 for the scalar gate, hidden for the vector gate

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
        g = 1 if self._gate_size == 1 else hidden_features
        self.U = self._kernel(in_features, hidden_features, recurrent=False)
        self.W = self._kernel(hidden_features, hidden_features, recurrent=True)
        self.b = self._bias(hidden_features)
        self.U_g = self._kernel(in_features, g, recurrent=False)
        self.W_g = self._kernel(hidden_features, g, recurrent=g > 1)
        self.b_g = self._bias(g, gate=True)
        self._done()

    def _gate(self, xp_g: jax.Array, gate_carry: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(xp_g + gate_carry @ self.W_g[...])

    def recur(self, carry: jax.Array, xp: jax.Array, gate_carry: jax.Array):
        xp_c, xp_g = self._split(xp)
        phi = jnp.tanh(xp_c + carry @ self.W[...])
        alpha = self._gate(xp_g, gate_carry)
        h = carry + alpha * (phi - carry)
        return h, h

    def time_scale(self, carry: jax.Array, x: jax.Array) -> jax.Array:
        _, xp_g = self._split(self.project(x))
        return jnp.broadcast_to(self._gate(xp_g, carry), jnp.shape(carry))


class ScalarGate(_GatedLeaky):
    r"""Leaky cell with one learned time-scale gate shared by all neurons.

    .. math::
        \alpha_t = \sigma(w_g^\top h_{t-1} + u_g^\top x_t + b_g), \qquad
        h_t = (1 - \alpha_t) h_{t-1} + \alpha_t \tanh(W h_{t-1} + U x_t + b).

    Parameters: ``U (in, hidden)``, ``W (hidden, hidden)``, ``b (hidden,)``, ``U_g (in, 1)``,
    ``W_g (hidden, 1)``, ``b_g (1,)``. Its gate-induced Jacobian has rank one (docs/theory.md §2.1).
    The gate acts on learning as a data-driven learning-rate schedule (docs/theory.md §1.4,
    §4.2).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = ScalarGate(3, 8, rngs=nnx.Rngs(0))
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> h.shape, cell.W_g.shape
      ((2, 8), (8, 1))
      >>> alpha = cell.time_scale(h, jnp.ones((2, 3)))  # one gate, broadcast over the neurons
      >>> alpha.shape, bool((alpha == alpha[:, :1]).all())
      ((2, 8), True)

    References:
      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.
    """

    _gate_size = 1


class VectorGate(_GatedLeaky):
    r"""Leaky cell with one learned time scale per neuron (the "multi-gate" cell).

    .. math::
        \alpha_t = \sigma(W_g h_{t-1} + U_g x_t + b_g) \in (0, 1)^{d_h}, \qquad
        h_t = (1 - \alpha_t) \odot h_{t-1} + \alpha_t \odot \tanh(W h_{t-1} + U x_t + b).

    Parameters: as :class:`ScalarGate` with ``U_g (in, hidden)``, ``W_g (hidden, hidden)``,
    ``b_g (hidden,)``. The gate acts on learning as a per-neuron diagonal preconditioner
    (docs/theory.md §1.5, §4.3).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = VectorGate(3, 8, rngs=nnx.Rngs(0))
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> alpha = cell.time_scale(h, jnp.ones((2, 3)))  # one gate per neuron
      >>> h.shape, alpha.shape, cell.W_g.shape
      ((2, 8), (2, 8), (8, 8))

    References:
      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.
    """

    _gate_size = 0
