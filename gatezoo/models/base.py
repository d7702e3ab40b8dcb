"""Shared machinery of gatezoo's built-in cells."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.init import InitSpec, gate_bias_init, matrix_init

__all__ = ["RecurrentCell"]


def _check_features(in_features: int, hidden_features: int) -> None:
    for name, value in (("in_features", in_features), ("hidden_features", hidden_features)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class RecurrentCell(nnx.Module):
    r"""Base of the built-in cells: parameter creation, carry, and the input projection.

    The leaky and gated cells have the convex-combination form of docs/theory.md §1.1,

    .. math::
        h_t = (1 - \alpha_t) \odot h_{t-1} + \alpha_t \odot \phi_t,
        \qquad \phi_t = \tanh(W h_{t-1} + U x_t + b),

    with the time-scale gate :math:`\alpha_t` (what ``time_scale`` answers) the weight of the
    new candidate and :math:`1 - \alpha_t` the retention of the old state; the GRU, the LSTM
    and the input-gated cells map onto it as docs/theory.md §1.6 says.

    Parameters are stored in Flax's kernel orientation, ``(fan_in, fan_out)``, so the
    pre-activation ``a_t = W h_{t-1} + U x_t + b`` of docs/theory.md is computed as
    ``h @ W + x @ U + b``; the matrix called ``W`` in docs/theory.md is ``cell.W.T``.

    Subclasses list their input-side blocks in ``_input_blocks`` (names of ``(U, b)`` pairs, in
    the order of the projected features) and implement ``recur(carry, xp, gate_carry)``, the step
    after the input projection ``xp = project(x)``. Hoisting ``project`` out of the time loop is
    what :class:`gatezoo.SequenceModel` does, a single large matmul instead of T small ones.
    Cells with several blocks may instead implement ``_fuse`` (concatenated kernels, built once
    per sequence) and ``_recur(fused, carry, xp, gate_carry)``, as the GRU and LSTM do.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> from gatezoo.models import VectorGate
      >>> cell = VectorGate(3, 8, rngs=nnx.Rngs(0))
      >>> isinstance(cell, RecurrentCell), cell.U.shape, cell.W.shape
      (True, (3, 8), (8, 8))
      >>> h0 = cell.initialize_carry((2, 3))
      >>> alpha = cell.time_scale(h0, jnp.ones((2, 3)))
      >>> alpha.shape, bool(((alpha > 0) & (alpha < 1)).all())
      ((2, 8), True)

    References:
      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.
    """

    _input_blocks: tuple[tuple[str, str], ...] = ()

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
        _check_features(in_features, hidden_features)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.use_bias = bool(use_bias)
        self.init = init or InitSpec()
        self.param_dtype = param_dtype
        self._rngs = rngs

    # -- parameter helpers (used only in __init__) -------------------------------------------
    def _kernel(self, fan_in: int, fan_out: int, recurrent: bool) -> nnx.Param:
        fn = matrix_init(self.init, recurrent)
        return nnx.Param(fn(self._rngs.params(), (fan_in, fan_out), self.param_dtype))

    def _bias(self, size: int, gate: bool = False, value: jax.Array | None = None):
        if not self.use_bias:
            return None
        if value is not None:
            return nnx.Param(value.astype(self.param_dtype))
        if gate:
            return nnx.Param(gate_bias_init(self.init, self._rngs.params(), size, self.param_dtype))
        return nnx.Param(jnp.zeros((size,), self.param_dtype))

    def _done(self) -> None:
        # rngs are only needed while building parameters; keeping them would make them state.
        del self._rngs

    # -- the Flax recurrent contract --------------------------------------------------------
    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None) -> Any:
        """Zero state for inputs of shape ``batch + (in_features,)``."""
        return jnp.zeros(tuple(input_shape[:-1]) + (self.hidden_features,), self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1

    def __call__(self, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        return self.recur(carry, self.project(x), carry)

    def split_call(self, carry: Any, x: jax.Array, gate_carry: Any) -> tuple[Any, jax.Array]:
        """One step whose gates read ``gate_carry`` (the gate protocol, see ``protocol.py``)."""
        return self.recur(carry, self.project(x), gate_carry)

    def project(self, x: jax.Array) -> jax.Array:
        """Input projection of all blocks at once, ``x @ [U_1 | U_2 | ...] + [b_1 | ...]``."""
        self._check_input(x)
        return self._project(self._fuse(), x)

    def recur(self, carry: Any, xp: jax.Array, gate_carry: Any) -> tuple[Any, jax.Array]:
        """The step after the input projection; ``xp = project(x)``."""
        return self._recur(self._fuse(), carry, xp, gate_carry)

    # -- fused kernels ------------------------------------------------------------------------
    # A scan calls ``_fuse`` once, outside the loop, and then ``_project``/``_recur`` with the
    # result at every step. The concatenated kernels are then loop constants, so the backward
    # pass accumulates one gradient per fused kernel inside the loop and splits it once after
    # (concatenating inside the step body is slower; figures in benchmarks/README.md).
    def _fuse(self) -> dict[str, Any]:
        """The input kernel ``[U_1 | U_2 | ...]`` and bias ``[b_1 | ...]`` (None without bias)."""
        kernels = [getattr(self, u)[...] for u, _ in self._input_blocks]
        fused: dict[str, Any] = {
            "U": kernels[0] if len(kernels) == 1 else jnp.concatenate(kernels, axis=1),
            "b": None,
        }
        if self.use_bias:
            biases = [getattr(self, b)[...] for _, b in self._input_blocks]
            fused["b"] = biases[0] if len(biases) == 1 else jnp.concatenate(biases)
        return fused

    def _project(self, fused: dict[str, Any], x: jax.Array) -> jax.Array:
        xp = x.astype(fused["U"].dtype) @ fused["U"]
        return xp if fused["b"] is None else xp + fused["b"]

    def _recur(self, fused: dict[str, Any], carry: Any, xp: jax.Array, gate_carry: Any):
        raise NotImplementedError  # abstract: every subclass defines its step

    def _check_input(self, x: jax.Array) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects inputs with {self.in_features} features in the "
                f"last axis, got shape {x.shape}"
            )

    def _split(self, xp: jax.Array) -> list[jax.Array]:
        sizes = [getattr(self, u).shape[1] for u, _ in self._input_blocks]
        out, start = [], 0
        for s in sizes:
            out.append(xp[..., start : start + s])
            start += s
        return out
