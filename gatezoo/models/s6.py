r"""A selective diagonal state-space layer: Mamba's S6 (Gu & Dao, 2023), as a recurrent cell."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.init import InitSpec
from gatezoo.models.linear_cell import InputGatedCell

__all__ = ["S6"]


def _dt_bias(key: jax.Array, size: int, dtype: Any, lo: float, hi: float) -> jax.Array:
    """``b_Δ = softplus⁻¹(Δ₀)`` with ``Δ₀`` log-uniform in ``[lo, hi]`` (Mamba's Δ init)."""
    dt = jnp.exp(jax.random.uniform(key, (size,), jnp.float32, math.log(lo), math.log(hi)))
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


class S6(InputGatedCell):
    r"""Selective SSM with ``d_state = N`` states per channel and ``d = hidden`` channels.

    .. math::
        u_t &= U x_t + b, \quad \Delta_t = \mathrm{softplus}(U_\Delta x_t + b_\Delta), \quad
        B_t = U_B^\top x_t, \quad C_t = U_C^\top x_t, \\
        h_{t,cn} &= e^{\Delta_{t,c} A_{cn}}\, h_{t-1,cn} + \Delta_{t,c} B_{t,n}\, u_{t,c}, \qquad
        y_{t,c} = \sum_n C_{t,n} h_{t,cn} + D_c u_{t,c},

    with :math:`A = -\exp(A_{\log}) < 0` diagonal, the zero-order-hold decay and the simplified
    (Euler) input matrix of Mamba. ``Δ``, ``B`` and ``C`` read ``x_t`` directly (Mamba reads the
    channel input ``u_t``; an affine map of it, the same family).

    State: ``(d, N)`` numbers per example, stored flat as ``batch + (d * N,)`` in row-major
    ``(channel, state)`` order, so that the carry has one feature axis like every other cell and
    the instruments' flattened-state conventions apply unchanged. The output is ``(batch, d)``.

    Time-scale gate: :math:`\alpha_{t,cn} = 1 - e^{\Delta_{t,c} A_{cn}}`, per state coordinate: a
    large step :math:`\Delta` forgets and writes, a small one holds. No quantity reads
    :math:`h_{t-1}`, so :math:`J_t = \mathrm{diag}(e^{\Delta_t A})` and :math:`B = 0` within the
    layer (:math:`G_1 = 0`); the gates act only through :math:`\exp(A \sum_j \Delta_j)` over a lag.

    Initialisation (the paper's): :math:`A_{cn} = -n`, ``n = 1..N`` for every channel; ``D = 1``;
    :math:`\Delta` at zero input log-uniform in ``[1e-3, 1e-1]`` through the softplus bias
    ``b_Δ``, which exists with or without ``use_bias`` (it holds the time scales; the gate-bias
    option does not apply). Parameters: ``U, U_dt (in, d)``, ``U_B, U_C (in, N)``,
    ``b, b_dt, D (d,)``, ``A_log (d, N)``.

    With ``offsets`` (the adjoint probes of :meth:`gatezoo.SequenceModel.unroll_states`), the
    whole-sequence path feeds the offset state to the output, so the adjoint is the total
    :math:`dL/dh_t`, including the output's direct read of :math:`h_t`.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = S6(3, 4, d_state=5, rngs=nnx.Rngs(0))
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> h.shape, y.shape
      ((2, 20), (2, 4))

    References:
      Gu and Dao, `Mamba: Linear-Time Sequence Modeling with Selective State Spaces
      <https://arxiv.org/abs/2312.00752>`__, arXiv:2312.00752, 2023.
    """

    _input_blocks = (("U", "b"), ("U_dt", "b_dt"), ("U_B", None), ("U_C", None))
    # its output C h + D u is not its state, but its whole-sequence path reads the offset state
    output_reads_offset_state = True

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        d_state: int = 16,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        scan: str = "auto",
        use_bias: bool = True,
        init: InitSpec | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if isinstance(d_state, bool) or not isinstance(d_state, int) or d_state < 1:
            raise ValueError(f"S6 d_state must be a positive integer, got {d_state!r}")
        if not 0.0 < dt_min <= dt_max:
            raise ValueError(f"S6 needs 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        super().__init__(
            in_features, hidden_features, scan=scan, use_bias=use_bias, init=init,
            param_dtype=param_dtype, rngs=rngs,
        )
        d, n = hidden_features, d_state
        self.d_state = d_state
        self.U = self._kernel(in_features, d, recurrent=False)
        self.b = self._bias(d)
        self.U_dt = self._kernel(in_features, d, recurrent=False)
        self.b_dt = nnx.Param(_dt_bias(rngs.params(), d, param_dtype, dt_min, dt_max))
        self.U_B = self._kernel(in_features, n, recurrent=False)
        self.U_C = self._kernel(in_features, n, recurrent=False)
        a_log = jnp.log(jnp.arange(1, n + 1, dtype=jnp.float32))
        self.A_log = nnx.Param(jnp.broadcast_to(a_log, (d, n)).astype(param_dtype))
        self.D = nnx.Param(jnp.ones((d,), param_dtype))
        self._done()

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None) -> jax.Array:
        """Zero state ``batch + (hidden * d_state,)`` for inputs ``batch + (in_features,)``."""
        shape = tuple(input_shape[:-1]) + (self.hidden_features * self.d_state,)
        return jnp.zeros(shape, self.param_dtype)

    def _fuse(self) -> dict[str, Any]:
        kernels = [getattr(self, u)[...] for u, _ in self._input_blocks]
        b = self.b[...] if self.b is not None else jnp.zeros_like(self.b_dt[...])
        zeros = jnp.zeros((2 * self.d_state,), b.dtype)  # B and C carry no bias
        return {"U": jnp.concatenate(kernels, axis=1),
                "b": jnp.concatenate([b, self.b_dt[...], zeros])}

    def _decay(self, xp):
        """``(Δ A, Δ, u, B, C)``; ``Δ A`` is ``batch + (d, N)``."""
        u, s_dt, B, C = self._split(xp)
        dt = jax.nn.softplus(s_dt)
        return dt[..., None] * -jnp.exp(self.A_log[...]), dt, u, B, C

    def _flat(self, v: jax.Array) -> jax.Array:
        return v.reshape(v.shape[:-2] + (v.shape[-2] * v.shape[-1],))  # -1 fails on batch 0

    def _alpha(self, fused, xp):
        return self._flat(-jnp.expm1(self._decay(xp)[0]))

    def _coefficients(self, fused, xp):
        dA, dt, u, B, _ = self._decay(xp)
        return self._flat(jnp.exp(dA)), self._flat((dt * u)[..., None] * B[..., None, :])

    def _readout(self, fused, h, xp):
        u, _, _, C = self._split(xp)
        states = h.reshape(h.shape[:-1] + (self.hidden_features, self.d_state))
        return jnp.einsum("...cn,...n->...c", states, C) + self.D[...] * u
