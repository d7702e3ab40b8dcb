r"""minGRU and minLSTM (Feng et al., "Were RNNs All We Needed?", 2024).

The GRU and the LSTM with every gate and the candidate reading only the input: the step becomes
linear in the state, the Jacobian diagonal, and the gate-induced Jacobian zero (see
:mod:`gatezoo.models.linear_cell`). Both are the paper's plain (not log-space) forms.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.init import InitSpec, gate_bias_init
from gatezoo.models.linear_cell import InputGatedCell

__all__ = ["MinGRU", "MinLSTM"]


class MinGRU(InputGatedCell):
    r"""minGRU: a GRU whose update gate and candidate read only ``x_t``.

    .. math::
        z_t = \sigma(U_z x_t + b_z), \quad \tilde h_t = U x_t + b, \quad
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t.

    Time-scale gate: :math:`\alpha_t = z_t`, exactly the GRU's. ``z`` never reads
    :math:`h_{t-1}`, so within the layer :math:`J_t = \mathrm{diag}(1 - z_t)` and :math:`B_t = 0`:
    the gates precondition learning only through :math:`\prod_j (1 - z_j)` over the lag.

    Parameters: ``U_z, U (in, hidden)``, ``b_z, b (hidden,)``; ``b_z`` follows the gate-bias
    initialisation (the pre-activation of ``alpha``). ``scan`` chooses the sequence path
    (``"auto"``, ``"associative"`` or ``"sequential"``, see
    :mod:`gatezoo.models.linear_cell`).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = MinGRU(3, 8, rngs=nnx.Rngs(0))
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> h.shape
      (2, 8)

    References:
      Feng et al., `Were RNNs All We Needed? <https://arxiv.org/abs/2410.01201>`__,
      arXiv:2410.01201, 2024.
    """

    _input_blocks = (("U_z", "b_z"), ("U", "b"))

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        scan: str = "auto",
        use_bias: bool = True,
        init: InitSpec | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features, hidden_features, scan=scan, use_bias=use_bias, init=init,
            param_dtype=param_dtype, rngs=rngs,
        )
        d, h = in_features, hidden_features
        self.U_z = self._kernel(d, h, recurrent=False)
        self.b_z = self._bias(h, gate=True)
        self.U = self._kernel(d, h, recurrent=False)
        self.b = self._bias(h)
        self._done()

    def _alpha(self, fused, xp):
        return jax.nn.sigmoid(self._split(xp)[0])

    def _coefficients(self, fused, xp):
        s_z, candidate = self._split(xp)
        z = jax.nn.sigmoid(s_z)
        return 1.0 - z, z * candidate


class MinLSTM(InputGatedCell):
    r"""minLSTM: an LSTM whose forget and input gates read only ``x_t``, normalised to sum to one.

    .. math::
        f_t = \sigma(U_f x_t + b_f), \quad i_t = \sigma(U_i x_t + b_i), \quad
        f'_t = \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t}, \\
        \tilde h_t = U x_t + b, \qquad h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t.

    Time-scale gate: :math:`\alpha_t = 1 - f'_t = i'_t`, the normalised input gate. No gate reads
    :math:`h_{t-1}`: :math:`J_t = \mathrm{diag}(f'_t)` and :math:`B_t = 0` within the layer.

    Parameters: ``U_f, U_i, U (in, hidden)``, ``b_f, b_i, b (hidden,)``. The gate-bias option sets
    ``b_i = s`` and ``b_f = -s`` for the chosen ``s``, so that at zero input
    :math:`\alpha = \sigma(s)`, the same convention as the other cells.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = MinLSTM(3, 8, rngs=nnx.Rngs(0))
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> alpha = cell.time_scale(h, jnp.ones((2, 3)))  # i'_t, in (0, 1)
      >>> h.shape, alpha.shape, bool(((alpha > 0) & (alpha < 1)).all())
      ((2, 8), (2, 8), True)

    References:
      Feng et al., `Were RNNs All We Needed? <https://arxiv.org/abs/2410.01201>`__,
      arXiv:2410.01201, 2024.
    """

    _input_blocks = (("U_f", "b_f"), ("U_i", "b_i"), ("U", "b"))

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        scan: str = "auto",
        use_bias: bool = True,
        init: InitSpec | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_features, hidden_features, scan=scan, use_bias=use_bias, init=init,
            param_dtype=param_dtype, rngs=rngs,
        )
        d, h = in_features, hidden_features
        s = gate_bias_init(self.init, rngs.params(), h, param_dtype)
        self.U_f = self._kernel(d, h, recurrent=False)
        self.b_f = self._bias(h, value=-s)
        self.U_i = self._kernel(d, h, recurrent=False)
        self.b_i = self._bias(h, value=s)
        self.U = self._kernel(d, h, recurrent=False)
        self.b = self._bias(h)
        self._done()

    def _gates(self, xp):
        s_f, s_i, candidate = self._split(xp)
        f, i = jax.nn.sigmoid(s_f), jax.nn.sigmoid(s_i)
        total = f + i
        return f / total, i / total, candidate

    def _alpha(self, fused, xp):
        return self._gates(xp)[1]

    def _coefficients(self, fused, xp):
        keep, write, candidate = self._gates(xp)
        return keep, write * candidate
