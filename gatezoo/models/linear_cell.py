r"""Base of the input-gated diagonal linear cells: minGRU, minLSTM, RG-LRU and S6.

Each of them is, per state coordinate,

.. math::
    h_t = a_t \odot h_{t-1} + b_t, \qquad (a_t, b_t) = \text{functions of } x_t \text{ alone},

so its time-scale gate (docs/theory.md §1.1) is :math:`\alpha_t = 1 - a_t` and the state retains
:math:`a_t`. Two consequences drive the instruments:

* **B = 0 within a layer.** No gate reads :math:`h_{t-1}`, so the gate-induced Jacobian
  :math:`B_t = \partial h_t/\partial(\text{gate path})` vanishes and the step Jacobian is the
  diagonal :math:`J_t = A_t = \mathrm{diag}(a_t)`. The deformed transport
  :math:`\prod (A_j + \epsilon B_j)` does not depend on :math:`\epsilon`: the first-order
  correction is :math:`G_1 = 0` and :math:`G(\epsilon) = G_0` for every :math:`\epsilon`. The gates'
  whole effect on learning is the zeroth-order, lag-dependent rate
  :math:`\partial h_t/\partial h_k = \mathrm{diag}(\prod_{j=k+1}^{t} (1 - \alpha_j))`.
  ``split_call`` therefore ignores ``gate_carry``: there is nothing to deform.
* **Parallel in time.** The step is affine in the state, so a sequence is a composition of
  affine maps and runs as a parallel prefix scan (:func:`gatezoo.models.linear_scan.
  linear_recurrence`). ``scan="associative"`` uses it whenever
  :class:`gatezoo.SequenceModel` runs the cell without a gate deformation (training, the
  instruments' adjoints through ``offsets``); ``scan="sequential"`` uses ``lax.scan``, the
  reference path; ``scan="auto"`` (default) is sequential on a CPU and associative on an
  accelerator. All give the same values and gradients to float rounding.

Subclasses define ``_input_blocks`` and ``_coefficients(fused, xp) -> (a, b)``; they may
override ``_alpha`` (a more accurate ``1 - a``) and ``_readout`` (the output read from the state;
the state itself by default).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.base import RecurrentCell
from gatezoo.models.init import InitSpec
from gatezoo.models.linear_scan import check_scan, linear_recurrence

__all__ = ["InputGatedCell"]


class InputGatedCell(RecurrentCell):
    """A cell ``h_t = a_t * h_{t-1} + b_t`` whose gates read only ``x_t`` (see module docstring).

    Shapes: ``carry`` ``batch + (state,)``, ``x`` ``batch + (in,)``; the output is
    ``batch + (hidden,)`` (the state itself unless the subclass reads it out).
    """

    #: no gate reads ``h_{t-1}``: ``B_t = 0``, declared for the instruments (gate protocol)
    gates_read_state = False

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
            in_features, hidden_features, use_bias=use_bias, init=init,
            param_dtype=param_dtype, rngs=rngs,
        )
        self.scan = check_scan(scan, f"{type(self).__name__} scan")

    # -- what a subclass defines ---------------------------------------------------------------
    def _coefficients(self, fused: dict[str, Any], xp: jax.Array) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError  # abstract: the retention a_t and drive b_t from xp

    def _alpha(self, fused: dict[str, Any], xp: jax.Array) -> jax.Array:
        return 1.0 - self._coefficients(fused, xp)[0]

    def _readout(self, fused: dict[str, Any], h: jax.Array, xp: jax.Array) -> jax.Array:
        return h

    # -- the step, the gate protocol and the whole sequence -------------------------------------
    def _recur(self, fused, carry: jax.Array, xp: jax.Array, gate_carry: Any):
        del gate_carry  # no gate reads the state: B_t = 0, nothing to deform
        a, b = self._coefficients(fused, xp)
        h = a * carry + b
        return h, self._readout(fused, h, xp)

    def time_scale(self, carry: jax.Array, x: jax.Array) -> jax.Array:
        """``alpha_t = 1 - a_t``, shaped like ``carry`` (it does not depend on its value)."""
        fused = self._fuse()
        return jnp.broadcast_to(self._alpha(fused, self._project(fused, x)), jnp.shape(carry))

    def _sequence(self, fused, xs: jax.Array, carry0: jax.Array, offsets: Any = None):
        """``(ys, hs)`` over time-major ``xs (T, batch, in)``, by the cell's ``scan`` method.

        ``offsets`` (``(T, batch, state)``, meant to be zero) are added to each new state, which
        the output and the next step then read; their gradient is the adjoint ``dL/dh_t``.
        """
        xp = self._project(fused, xs)
        a, b = self._coefficients(fused, xp)
        if offsets is not None:
            b = b + offsets
        h0 = jnp.broadcast_to(carry0, a.shape[1:]).astype(a.dtype)
        hs = linear_recurrence(a, b, h0, self.scan)
        return self._readout(fused, hs, xp), hs
