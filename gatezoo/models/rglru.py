r"""The real-gated linear recurrent unit of Griffin and Hawk (De et al., 2024)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.init import InitSpec
from gatezoo.models.linear_cell import InputGatedCell

__all__ = ["RGLRU"]


def _lambda_init(key: jax.Array, size: int, dtype: Any, lo: float, hi: float) -> jax.Array:
    """``Λ`` with ``a = σ(Λ)`` in ``[lo, hi]``, ``a²`` uniform (uniform on the ring's area)."""
    a = jnp.sqrt(jax.random.uniform(key, (size,), jnp.float32, lo**2, hi**2))
    return (jnp.log(a) - jnp.log1p(-a)).astype(dtype)


class RGLRU(InputGatedCell):
    r"""RG-LRU: a diagonal linear recurrence with a recurrence gate and an input gate on ``x_t``.

    .. math::
        u_t &= U x_t + b, \quad r_t = \sigma(U_a x_t + b_a), \quad i_t = \sigma(U_x x_t + b_x),
        \\
        a_t &= a^{c\, r_t}, \quad a = \sigma(\Lambda), \quad c = 8, \qquad
        h_t = a_t \odot h_{t-1} + \sqrt{1 - a_t^2} \odot (i_t \odot u_t).

    ``u_t`` is the recurrence's own input, the projection of ``x_t`` to ``hidden`` features; the
    gates read ``x_t`` directly (an affine map of ``u_t`` in Griffin's block, the same family).
    Computed in log space: :math:`\log a_t = -c\, r_t\, \mathrm{softplus}(-\Lambda)`.

    Time-scale gate: :math:`\alpha_t = 1 - a_t = 1 - a^{c r_t}`: the recurrence gate ``r_t``
    moves each neuron's retention between :math:`a^c` (:math:`r \to 1`, the fastest forgetting)
    and 1 (:math:`r \to 0`: the state is held and the input shut out, as
    :math:`\sqrt{1 - a_t^2} \to 0`). Neither
    gate reads :math:`h_{t-1}`, so :math:`J_t = \mathrm{diag}(a_t)` and :math:`B_t = 0` within a
    layer: :math:`G_1 = 0`, and the gates act only through :math:`\prod_j a_j` over the lag.

    Initialisation (the paper's): :math:`a = \sigma(\Lambda) \in [0.9, 0.999]` with :math:`a^2`
    uniform; ``b_a = b_x = 0``. The time scales live in ``Λ``, so the gate-bias option does not
    apply. Parameters: ``U, U_a, U_x (in, hidden)``, ``b, b_a, b_x, Lambda (hidden,)``.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = RGLRU(3, 8, rngs=nnx.Rngs(0))
      >>> bool(((cell.a_base() >= 0.9) & (cell.a_base() <= 0.999)).all())
      True
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> h.shape, y.shape
      ((2, 8), (2, 8))

    References:
      De et al., `Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient
      Language Models <https://arxiv.org/abs/2402.19427>`__, arXiv:2402.19427, 2024.
    """

    _input_blocks = (("U_a", "b_a"), ("U_x", "b_x"), ("U", "b"))

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        c: float = 8.0,
        a_min: float = 0.9,
        a_max: float = 0.999,
        scan: str = "auto",
        use_bias: bool = True,
        init: InitSpec | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not 0.0 < a_min <= a_max < 1.0:
            raise ValueError(f"RGLRU needs 0 < a_min <= a_max < 1, got {a_min}, {a_max}")
        if not c > 0:
            raise ValueError(f"RGLRU c must be > 0, got {c}")
        super().__init__(
            in_features, hidden_features, scan=scan, use_bias=use_bias, init=init,
            param_dtype=param_dtype, rngs=rngs,
        )
        d, h = in_features, hidden_features
        self.c = float(c)
        self.U_a = self._kernel(d, h, recurrent=False)
        self.b_a = self._bias(h)
        self.U_x = self._kernel(d, h, recurrent=False)
        self.b_x = self._bias(h)
        self.U = self._kernel(d, h, recurrent=False)
        self.b = self._bias(h)
        self.Lambda = nnx.Param(_lambda_init(rngs.params(), h, param_dtype, a_min, a_max))
        self._done()

    def a_base(self) -> jax.Array:
        """``a = σ(Λ)``, ``(hidden,)``: each neuron's retention at ``r = 1/c``."""
        return jax.nn.sigmoid(self.Lambda[...])

    def _log_a(self, xp):
        s_a, s_x, u = self._split(xp)
        log_a = -self.c * jax.nn.sigmoid(s_a) * jax.nn.softplus(-self.Lambda[...])
        return log_a, jax.nn.sigmoid(s_x) * u

    def _alpha(self, fused, xp):
        return -jnp.expm1(self._log_a(xp)[0])

    def _coefficients(self, fused, xp):
        log_a, gated = self._log_a(xp)
        # sqrt(1 - a²) = sqrt(-expm1(2 log a)): accurate when a is close to 1
        return jnp.exp(log_a), jnp.sqrt(-jnp.expm1(2.0 * log_a)) * gated
