"""Elman and leaky-integrator cells (docs/theory.md §1.2-§1.3)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.base import RecurrentCell
from gatezoo.models.init import InitSpec

__all__ = ["Leaky", "Elman"]


class Leaky(RecurrentCell):
    r"""Leaky integrator with a constant time-scale ``alpha`` (a forward-Euler firing-rate model).

    .. math::
        h_t = (1 - \alpha) h_{t-1} + \alpha \tanh(W h_{t-1} + U x_t + b),
        \qquad 0 < \alpha \le 1.

    Shapes: ``carry`` is ``batch + (hidden,)``, ``x`` is ``batch + (in,)``; the output is the new
    state. ``alpha = 1`` is the Elman cell. The gate protocol answers the constant ``alpha``, and
    the gate-induced Jacobian ``B`` is zero. The constant gate rescales every immediate
    parameter contribution by ``alpha`` and weights the state path with a lag kernel
    (docs/theory.md §1.3, §4.1).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = Leaky(3, 8, alpha=0.8, rngs=nnx.Rngs(0))
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> h.shape
      (2, 8)
      >>> bool((cell.time_scale(h, jnp.ones((2, 3))) == jnp.float32(0.8)).all())
      True

    References:
      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.
    """

    _input_blocks = (("U", "b"),)

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        alpha: float = 0.8,
        use_bias: bool = True,
        init: InitSpec | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}") from None
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
        super().__init__(
            in_features, hidden_features, use_bias=use_bias, init=init,
            param_dtype=param_dtype, rngs=rngs,
        )
        self.alpha = alpha
        self.U = self._kernel(in_features, hidden_features, recurrent=False)
        self.W = self._kernel(hidden_features, hidden_features, recurrent=True)
        self.b = self._bias(hidden_features)
        self._done()

    def recur(self, carry: jax.Array, xp: jax.Array, gate_carry: Any):
        phi = jnp.tanh(xp + carry @ self.W[...])
        if self.alpha == 1.0:
            h = phi
        else:
            h = carry + self.alpha * (phi - carry)
        return h, h

    def time_scale(self, carry: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.full(jnp.shape(carry), self.alpha, jnp.result_type(carry))


class Elman(Leaky):
    r"""The vanilla (Elman) RNN: ``Leaky`` with ``alpha = 1``.

    .. math::
        h_t = \tanh(W h_{t-1} + U x_t + b).

    The state is replaced at every step (no leak), so its time-scale gate is the constant 1 and
    the gate-induced Jacobian is zero (docs/theory.md §1.2).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = Elman(3, 8, rngs=nnx.Rngs(0))
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.zeros((2, 3)))
      >>> h.shape, cell.alpha, bool((h == 0).all())  # tanh(0) from a zero state and input
      ((2, 8), 1.0, True)

    References:
      Elman, `Finding Structure in Time <https://doi.org/10.1207/s15516709cog1402_1>`__,
      Cognitive Science 14(2), 1990.
    """

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
            in_features, hidden_features, alpha=1.0, use_bias=use_bias, init=init,
            param_dtype=param_dtype, rngs=rngs,
        )
