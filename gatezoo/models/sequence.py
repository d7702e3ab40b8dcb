"""A sequence model: a :class:`~gatezoo.models.recurrent.Recurrent` layer plus a linear readout."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.init import InitSpec, matrix_init
from gatezoo.models.protocol import param_dtype_of
from gatezoo.models.recurrent import Recurrent

__all__ = ["SequenceModel", "READOUTS"]

READOUTS = ("last", "all")


class SequenceModel(Recurrent):
    r"""Runs ``cell`` over a sequence and reads out the last step or every step.

    .. math::
        h_t = \mathrm{cell}(h_{t-1}, x_t), \quad
        \hat y = W_o h_T + b_o \ (\text{readout}=\text{"last"}), \quad
        \hat y_t = W_o h_t + b_o \ (\text{readout}=\text{"all"}).

    Shapes: ``xs`` is ``(batch, T, in)``; the output is ``(batch, out)`` for ``"last"`` and
    ``(batch, T, out)`` for ``"all"``. It *is* a :class:`Recurrent` layer (``unroll_states``,
    the scan and the instruments' taps are the layer's) with a readout on top, so its
    parameters are ``cell`` and ``W_o``/``b_o``. The readout follows the cell's parameter dtype.
    Built-in GRU/LSTM and the input-gated linear cells (minGRU, minLSTM, RG-LRU, S6) run a
    whole-sequence function when ``eps`` is None (see :class:`Recurrent`); ``unroll`` applies
    to the generic ``lax.scan`` only. The paper's experiments read the last step without a
    bias, ``readout_bias=False``, under a mean squared error loss (docs/theory.md §1.7).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> import gatezoo as gz
      >>> model = gz.SequenceModel(gz.GRU(2, 16, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
      >>> model(jnp.ones((4, 10, 2))).shape
      (4, 1)

    References:
      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.
    """

    def __init__(
        self,
        cell: nnx.Module,
        out_features: int,
        *,
        readout: str = "last",
        readout_bias: bool = True,
        unroll: int = 1,
        rngs: nnx.Rngs,
    ):
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if not isinstance(out_features, int) or out_features < 1:
            raise ValueError(f"out_features must be a positive integer, got {out_features!r}")
        super().__init__(cell, unroll=unroll, rngs=False)
        self.readout = readout
        hidden = _hidden_size(cell)
        spec = getattr(cell, "init", None)
        spec = spec if isinstance(spec, InitSpec) else InitSpec()
        dtype = param_dtype_of(cell)
        kernel_init = matrix_init(spec, recurrent=False)
        self.W_o = nnx.Param(kernel_init(rngs.params(), (hidden, out_features), dtype))
        self.b_o = nnx.Param(jnp.zeros((out_features,), dtype)) if readout_bias else None

    def read(self, ys: jax.Array) -> jax.Array:
        """The readout applied to cell outputs ``(..., hidden) -> (..., out)``."""
        out = ys @ self.W_o[...]
        return out if self.b_o is None else out + self.b_o[...]

    def __call__(self, xs: jax.Array, *, seq_lengths: jax.Array | None = None) -> jax.Array:
        """``xs (batch, T, in)``; with ``seq_lengths (batch,)`` the ``"last"`` readout reads
        each sequence at its last valid step ``seq_lengths - 1``."""
        # (batch, T, hidden); tapped when the instruments measure
        ys = super().__call__(xs, seq_lengths=seq_lengths)
        if self.readout == "all":
            return self.read(ys)
        if seq_lengths is None:
            return self.read(ys[:, -1])
        rows = jnp.arange(ys.shape[0])
        return self.read(ys[rows, jnp.asarray(seq_lengths) - 1])


def _hidden_size(cell: Any) -> int:
    for attr in ("hidden_features", "hidden_size", "features"):
        value = getattr(cell, attr, None)
        if isinstance(value, int):
            return value
    carry = cell.initialize_carry((1, 1), rngs=nnx.Rngs(0))
    return int(jax.tree_util.tree_leaves(carry)[-1].shape[-1])
