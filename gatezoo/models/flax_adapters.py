r"""The gate protocol for Flax's own recurrent cells, by wrapping them.

An adapter holds a Flax cell instance (``nnx.GRUCell``, ``nnx.LSTMCell``,
``nnx.OptimizedLSTMCell`` or ``nnx.SimpleCell``) as its child ``cell``. Its plain ``__call__`` *is*
the Flax cell's call, so outputs and training are Flax's to the last bit; only
``split_call(carry, x, gate_carry)`` re-expresses the step, through the Flax cell's own
submodules, so that the gates read ``gate_carry`` while the candidate and the state update read
``carry`` (see :mod:`gatezoo.models.protocol`).

Time-scale gates ``alpha_t`` (the weight of the new candidate, docs/theory.md §1.1):

* ``nnx.GRUCell``: ``h' = (1 - z) n + z h`` where Flax's ``z`` is the *retention*, so
  ``alpha = 1 - z``. The reset gate ``r`` multiplies the candidate's recurrent projection
  ``dense_h(h)``'s n-part (whatever bias that projection carries comes along).
* ``nnx.LSTMCell`` / ``nnx.OptimizedLSTMCell``: ``alpha = 1 - f`` (the forget gate retains).
* ``nnx.SimpleCell``: no gate, ``alpha = 1`` and ``B = 0`` (like :class:`gatezoo.Elman`).

Example:
  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> cell = FlaxGRU(nnx.GRUCell(3, 5, rngs=nnx.Rngs(0)))
  >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
  >>> cell.time_scale(h, jnp.ones((2, 3))).shape
  (2, 5)
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.init import InitSpec, drawn_wide, gate_bias_init, is_narrow, matrix_init

__all__ = [
    "FlaxCellAdapter",
    "FlaxGRU",
    "FlaxLSTM",
    "FlaxOptimizedLSTM",
    "FlaxSimple",
    "flax_adapter",
    "make_flax_cell",
]


class FlaxCellAdapter(nnx.RNNCellBase):
    """Base of the adapters: Flax's recurrent contract, delegated to the wrapped cell."""

    wrapped: type = nnx.RNNCellBase

    def __init__(self, cell: nnx.Module):
        if type(cell) is not self.wrapped:
            raise ValueError(
                f"{type(self).__name__} wraps a {self.wrapped.__name__}, got {type(cell).__name__}"
            )
        self.cell = cell

    @property
    def in_features(self) -> int:
        return self.cell.in_features

    @property
    def hidden_features(self) -> int:
        return self.cell.hidden_features

    @property
    def param_dtype(self) -> Any:
        return self.cell.param_dtype

    @property
    def num_feature_axes(self) -> int:
        return self.cell.num_feature_axes

    def __call__(self, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        return self.cell(carry, x)

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
    ) -> Any:
        """The wrapped cell's carry. Without ``rngs`` (as :class:`gatezoo.SequenceModel` calls
        it) and without a carry initialiser this is Flax's default, zeros, which needs no key."""
        if rngs is None and self.cell.rngs is None and carry_init is None and (
            self.cell.carry_init is None
        ):
            zeros = jnp.zeros(tuple(input_shape[:-1]) + (self.hidden_features,), self.param_dtype)
            return self._carry_from_zeros(zeros)
        return self.cell.initialize_carry(input_shape, rngs, carry_init)

    def _carry_from_zeros(self, zeros: jax.Array) -> Any:
        return zeros

    def split_call(self, carry: Any, x: jax.Array, gate_carry: Any) -> tuple[Any, jax.Array]:
        raise NotImplementedError  # abstract: each adapter re-expresses its cell's step

    def time_scale(self, carry: Any, x: jax.Array) -> jax.Array:
        raise NotImplementedError  # abstract


class FlaxGRU(FlaxCellAdapter):
    """``nnx.GRUCell`` with the gate protocol; ``alpha = 1 - z`` (Flax's ``z`` retains)."""

    wrapped = nnx.GRUCell

    def _gates(self, xi: jax.Array, gate_h: jax.Array) -> tuple[jax.Array, jax.Array]:
        xi_r, xi_z, _ = jnp.split(xi, 3, axis=-1)
        gh_r, gh_z, _ = jnp.split(self.cell.dense_h(gate_h), 3, axis=-1)
        return self.cell.gate_fn(xi_r + gh_r), self.cell.gate_fn(xi_z + gh_z)

    def split_call(self, carry, x, gate_carry):
        cell = self.cell
        xi = cell.dense_i(x)
        r, z = self._gates(xi, gate_carry)
        hh_n = jnp.split(cell.dense_h(carry), 3, axis=-1)[2]
        n = cell.activation_fn(jnp.split(xi, 3, axis=-1)[2] + r * hh_n)
        new_h = (1.0 - z) * n + z * carry
        return new_h, new_h

    def time_scale(self, carry, x):
        return 1.0 - self._gates(self.cell.dense_i(x), carry)[1]


class FlaxLSTM(FlaxCellAdapter):
    """``nnx.LSTMCell`` with the gate protocol on the carry ``(c, h)``; ``alpha = 1 - f``."""

    wrapped = nnx.LSTMCell

    def _carry_from_zeros(self, zeros):
        return zeros, zeros

    def _gate(self, name_i: str, name_h: str, x, gate_h):
        cell = self.cell
        return cell.gate_fn(getattr(cell, name_i)(x) + getattr(cell, name_h)(gate_h))

    def split_call(self, carry, x, gate_carry):
        cell = self.cell
        c, h = carry
        gate_h = gate_carry[1]
        i = self._gate("ii", "hi", x, gate_h)
        f = self._gate("if_", "hf", x, gate_h)
        o = self._gate("io", "ho", x, gate_h)
        g = cell.activation_fn(cell.ig(x) + cell.hg(h))
        new_c = f * c + i * g
        new_h = o * cell.activation_fn(new_c)
        return (new_c, new_h), new_h

    def time_scale(self, carry, x):
        return 1.0 - self._gate("if_", "hf", x, carry[1])


class FlaxOptimizedLSTM(FlaxLSTM):
    """``nnx.OptimizedLSTMCell`` (fused ``[i, f, g, o]`` projections) with the gate protocol."""

    wrapped = nnx.OptimizedLSTMCell

    def split_call(self, carry, x, gate_carry):
        cell = self.cell
        c, h = carry
        xi = cell.dense_i(x)
        i, f, _, o = jnp.split(xi + cell.dense_h(gate_carry[1]), 4, axis=-1)
        g = jnp.split(xi + cell.dense_h(h), 4, axis=-1)[2]
        i, f, o, g = cell.gate_fn(i), cell.gate_fn(f), cell.gate_fn(o), cell.activation_fn(g)
        new_c = f * c + i * g
        new_h = o * cell.activation_fn(new_c)
        return (new_c, new_h), new_h

    def time_scale(self, carry, x):
        cell = self.cell
        f = jnp.split(cell.dense_i(x) + cell.dense_h(carry[1]), 4, axis=-1)[1]
        return 1.0 - cell.gate_fn(f)


class FlaxSimple(FlaxCellAdapter):
    """``nnx.SimpleCell`` with the (trivial) gate protocol: ``alpha = 1``, ``B = 0``."""

    wrapped = nnx.SimpleCell

    def split_call(self, carry, x, gate_carry):
        return self.cell(carry, x)  # no gate reads the carry

    def time_scale(self, carry, x):
        return jnp.ones(jnp.shape(carry), jnp.result_type(carry))


_ADAPTERS: dict[type, type[FlaxCellAdapter]] = {
    a.wrapped: a for a in (FlaxGRU, FlaxLSTM, FlaxOptimizedLSTM, FlaxSimple)
}


def flax_adapter(cell: nnx.Module) -> FlaxCellAdapter:
    """Wraps a Flax recurrent cell instance in its adapter."""
    adapter = _ADAPTERS.get(type(cell))
    if adapter is None:
        names = ", ".join(f"nnx.{t.__name__}" for t in _ADAPTERS)
        raise ValueError(f"no gate adapter for {type(cell).__name__}; adapters exist for {names}")
    return adapter(cell)


def make_flax_cell(
    kind: type,
    in_features: int,
    hidden_features: int,
    *,
    rngs: nnx.Rngs,
    init: InitSpec | None = None,
    use_bias: bool = True,
    param_dtype: Any = jnp.float32,
) -> FlaxCellAdapter:
    """Builds Flax's cell ``kind`` with gatezoo's options and wraps it.

    * ``param_dtype`` is passed to the Flax cell (for ``nnx.SimpleCell``, whose computation dtype
      defaults to float32 rather than following the inputs, also as its ``dtype``).
    * ``use_bias=False`` is rejected: Flax's cells always have biases.
    * ``init``: scheme ``"flax"`` keeps Flax's own initialisers (so the cell equals
      ``kind(in, hidden, rngs=rngs)`` exactly); ``"torch"`` and ``"normal"`` set both kernel
      initialisers as for gatezoo's cells (biases stay zero). With a ``param_dtype`` narrower
      than float32 (bfloat16) every kernel, Flax's own initialisers' too, is drawn in float32
      and rounded (:func:`gatezoo.models.init.drawn_wide`). A non-zero or chrono ``gate_bias``
      sets the bias of the time-scale gate's pre-activation after construction, as gatezoo's GRU and
      LSTM do: Flax GRU's retention ``z`` gets ``-gate_bias``, the LSTM's forget gate ``-gate_bias``
      (chrono: also the input gate ``+gate_bias``). SimpleCell has no gate and ignores it, like
      :class:`gatezoo.Elman`.
    """
    if kind not in _ADAPTERS:
        raise ValueError(f"no gate adapter for {getattr(kind, '__name__', kind)!r}")
    if not use_bias:
        raise ValueError(
            f"use_bias=False is not supported for Flax's nnx.{kind.__name__}: its biases are "
            "built in (use use_bias=True)"
        )
    spec = init or InitSpec()
    kwargs: dict[str, Any] = {}
    if kind is nnx.SimpleCell:
        # SimpleCell computes in dtype=float32 by default (the others infer it); follow params
        kwargs["dtype"] = param_dtype
    if spec.scheme != "flax":
        kwargs["kernel_init"] = matrix_init(spec, recurrent=False)
        kwargs["recurrent_kernel_init"] = matrix_init(spec, recurrent=True)
    elif is_narrow(param_dtype):
        # Flax's defaults (its orthogonal QR has no bfloat16 kernel), drawn in float32
        defaults = inspect.signature(kind.__init__).parameters
        for name in ("kernel_init", "recurrent_kernel_init"):
            kwargs[name] = drawn_wide(defaults[name].default)
    cell = kind(in_features, hidden_features, param_dtype=param_dtype, rngs=rngs, **kwargs)
    if kind is not nnx.SimpleCell and (spec.gate_bias == "chrono" or float(spec.gate_bias) != 0):
        alpha_bias = gate_bias_init(spec, rngs.params(), hidden_features, param_dtype)
        _set_gate_bias(cell, alpha_bias, chrono=spec.gate_bias == "chrono")
    return _ADAPTERS[kind](cell)


def _set_gate_bias(cell: nnx.Module, alpha_bias: jax.Array, chrono: bool) -> None:
    n = cell.hidden_features
    if isinstance(cell, nnx.GRUCell):  # dense_i features [r, z, n]; alpha = sigmoid(-s_z)
        cell.dense_i.bias[...] = cell.dense_i.bias[...].at[n : 2 * n].set(-alpha_bias)
    elif isinstance(cell, nnx.LSTMCell):
        cell.hf.bias[...] = -alpha_bias
        if chrono:
            cell.hi.bias[...] = alpha_bias
    else:  # OptimizedLSTMCell, dense_h features [i, f, g, o]
        bias = cell.dense_h.bias[...].at[n : 2 * n].set(-alpha_bias)
        if chrono:
            bias = bias.at[:n].set(alpha_bias)
        cell.dense_h.bias[...] = bias
