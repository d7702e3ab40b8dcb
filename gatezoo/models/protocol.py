"""The gate protocol: how a cell exposes its time-scale gate and its gate path.

Every cell follows Flax's recurrent contract, ``__call__(carry, x) -> (carry, y)``,
``initialize_carry(input_shape, rngs)`` and ``num_feature_axes``. A *gated* cell also implements
two methods, which is all a user-written cell needs to opt in to the gate instruments:

``split_call(carry, x, gate_carry) -> (carry, y)``
    The same step as ``__call__``, except that every gate reads its recurrent input from
    ``gate_carry`` while the candidate and the convex combination read ``carry``.
    ``__call__(carry, x)`` must equal ``split_call(carry, x, carry)``.

``time_scale(carry, x) -> alpha``
    The per-neuron weight ``alpha_t`` of the new candidate, shape ``batch + (hidden,)``, so that
    the state retains ``1 - alpha_t`` (docs/theory.md §1.1). For an LSTM it is ``1 - f_t``.

A cell whose gates read only the input (minGRU, RG-LRU, S6: ``split_call`` ignores
``gate_carry``) may say so with the class attribute ``gates_read_state = False``. Then
``B = 0`` within the layer, and the instruments skip what can only be zero (the first-order
correction ``G1``); :func:`check_gate_protocol` verifies the claim.

With ``gate_carry = deform(carry, eps)`` the value is unchanged, but the derivative with respect
to ``carry`` becomes ``A + eps * B`` (theory §3.4 recipe 2): ``A`` is the gate-frozen Jacobian
and ``B`` the gate-induced one. Nobody measuring means ``eps = None`` and the plain ``__call__``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "GatedCell",
    "CellFn",
    "deform",
    "is_gated",
    "gates_read_state",
    "cell_fn",
    "flatten_carry",
    "unflatten_carry",
    "param_dtype_of",
    "check_gate_protocol",
    "GateProtocolError",
    "zero_carry",
    "output_is_state",
]

Carry = Any


@runtime_checkable
class GatedCell(Protocol):
    """A recurrent cell that opts in to the gate instruments (see module docstring)."""

    def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]: ...

    def split_call(
        self, carry: Carry, x: jax.Array, gate_carry: Carry
    ) -> tuple[Carry, jax.Array]: ...

    def time_scale(self, carry: Carry, x: jax.Array) -> jax.Array: ...


def is_gated(cell: Any) -> bool:
    """True if ``cell`` implements the gate protocol."""
    return callable(getattr(cell, "split_call", None)) and callable(
        getattr(cell, "time_scale", None)
    )


def gates_read_state(cell: Any) -> bool:
    """False if no gate of ``cell`` reads the state: a cell without the gate protocol, or one
    that declares ``gates_read_state = False``."""
    return is_gated(cell) and bool(getattr(cell, "gates_read_state", True))


def deform(carry: Carry, eps: jax.Array | float) -> Carry:
    """``sg(c) + eps * (c - sg(c))``: the value of ``c`` with its derivative scaled by ``eps``."""

    def one(c):
        frozen = jax.lax.stop_gradient(c)
        return frozen + jnp.asarray(eps, c.dtype) * (c - frozen)

    return jax.tree_util.tree_map(one, carry)


def flatten_carry(carry: Carry) -> jax.Array:
    """Concatenates the leaves of a carry along the last axis (LSTM: ``(c, h) -> [c, h]``)."""
    leaves = jax.tree_util.tree_leaves(carry)
    return leaves[0] if len(leaves) == 1 else jnp.concatenate(leaves, axis=-1)


def unflatten_carry(flat: jax.Array, like: Carry) -> Carry:
    """Inverse of :func:`flatten_carry` for a carry shaped like ``like``."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    sizes = [leaf.shape[-1] for leaf in leaves]
    # static split points (Python ints), so this also works under jit
    splits = jnp.split(flat, list(itertools.accumulate(sizes))[:-1], axis=-1) if len(
        leaves
    ) > 1 else [flat]
    return jax.tree_util.tree_unflatten(treedef, splits)


class CellFn(NamedTuple):
    """A pure functional view of a cell, for jit/vmap/scan and for the instruments.

    Attributes:
      params: the cell's ``nnx.Param`` state (a pytree).
      step: ``step(params, carry, x, eps=None) -> (carry, y)``; with ``eps`` not ``None`` the
        gate path is deformed as in :func:`deform` (gated cells only).
      time_scale: ``time_scale(params, carry, x) -> alpha`` or ``None`` for a cell without gates.
      gated: whether the cell follows the gate protocol.
      split_step: ``split_step(params, carry, x, gate_carry) -> (carry, y)``, the cell's
        ``split_call`` (gated cells), else ``None``.
      gates_read_state: False when the cell declares that its gates read no state, so
        ``B = 0`` (see :func:`gates_read_state`).
    """

    params: Any
    step: Callable[..., tuple[Carry, jax.Array]]
    time_scale: Callable[..., jax.Array] | None
    gated: bool
    split_step: Callable[..., tuple[Carry, jax.Array]] | None = None
    gates_read_state: bool = True


def cell_fn(cell: nnx.Module) -> CellFn:
    """Splits ``cell`` into parameters and pure functions of them (the one builder of a cell's
    pure functions: the instruments' :class:`~gatezoo.instruments.protocol.LayerFns` use it).

    Works on an abstract cell (``nnx.eval_shape``) too: only the functions are closed over.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatezoo as gz
      >>> fn = gz.models.cell_fn(gz.VectorGate(3, 5, rngs=nnx.Rngs(0)))
      >>> h, y = fn.step(fn.params, jnp.zeros(5), jnp.ones(3), eps=0.0)
    """
    graphdef, params, rest = nnx.split(cell, nnx.Param, ...)
    gated = is_gated(cell)
    name = type(cell).__name__

    def step(p, carry, x, eps=None):
        module = nnx.merge(graphdef, p, rest)
        if eps is None:
            return module(carry, x)
        if not gated:
            raise TypeError(
                f"{name} does not follow the gate protocol (split_call, time_scale), so its "
                "gate path cannot be separated"
            )
        return module.split_call(carry, x, deform(carry, eps))

    def time_scale(p, carry, x):
        return nnx.merge(graphdef, p, rest).time_scale(carry, x)

    def split_step(p, carry, x, gate_carry):
        return nnx.merge(graphdef, p, rest).split_call(carry, x, gate_carry)

    return CellFn(
        params, step, time_scale if gated else None, gated, split_step if gated else None,
        gates_read_state(cell),
    )


def param_dtype_of(module: nnx.Module) -> Any:
    """The one floating dtype of ``module``'s parameters (float32 when it has none).

    Raises:
      ValueError: naming the module when its parameters mix floating dtypes.
    """
    leaves = jax.tree_util.tree_leaves(nnx.state(module, nnx.Param))
    dtypes = {jnp.dtype(leaf.dtype) for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)}
    if len(dtypes) > 1:
        raise ValueError(
            f"{type(module).__name__} mixes parameter dtypes "
            f"{', '.join(sorted(str(d) for d in dtypes))}; a model follows one parameter dtype"
        )
    return dtypes.pop() if dtypes else jnp.dtype(jnp.float32)


class GateProtocolError(ValueError):
    """A cell claims the gate protocol but its methods disagree (one line, naming the cell)."""


def check_gate_protocol(cell: nnx.Module, in_features: int, *, batch: int = 3) -> None:
    """Checks a gated cell on a small random probe, once, before training uses it.

    ``__call__(h, x)`` must equal ``split_call(h, x, h)`` and ``time_scale(h, x)`` must have the
    state's shape ``(batch, hidden)`` with values in ``[0, 1]``; a cell declaring
    ``gates_read_state = False`` must give the same ``split_call(h, x, g)`` for any ``g``. A cell
    without the protocol passes (it gets the step-only instruments).

    Raises:
      GateProtocolError: one line naming the cell and what differs.
    """
    if not is_gated(cell):
        return
    name = type(cell).__name__
    fn = cell_fn(cell)
    dtype = param_dtype_of(cell)
    carry = zero_carry(cell, (batch, int(in_features)))
    h, x = _probe(carry, batch, int(in_features), dtype, jax.random.key(0x6A7E))
    plain = flatten_carry(fn.step(fn.params, h, x)[0])
    split = flatten_carry(fn.split_step(fn.params, h, x, h)[0])
    tol = 1e-5 if jnp.finfo(dtype).bits <= 32 else 1e-10
    scale = max(float(jnp.max(jnp.abs(plain))), 1.0)
    gap = float(jnp.max(jnp.abs(plain - split)))
    if not gap <= tol * scale:
        raise GateProtocolError(
            f"cell {name}: __call__(h, x) differs from split_call(h, x, h) by up to {gap:.3g} "
            "on a random probe; __call__ must be split_call with gate_carry = carry"
        )
    if not fn.gates_read_state:
        other = jax.tree_util.tree_map(lambda a: 1.0 - 2.0 * a, h)
        moved = flatten_carry(fn.split_step(fn.params, h, x, other)[0])
        gap = float(jnp.max(jnp.abs(moved - split)))
        if not gap <= tol * scale:
            raise GateProtocolError(
                f"cell {name}: declares gates_read_state = False, but split_call(h, x, g) "
                f"moves by up to {gap:.3g} when gate_carry g changes; its gates read the state"
            )
    hidden = jax.tree_util.tree_leaves(carry)[-1].shape[-1]
    alpha = fn.time_scale(fn.params, h, x)
    if tuple(alpha.shape) != (batch, hidden):
        raise GateProtocolError(
            f"cell {name}: time_scale returned shape {tuple(alpha.shape)} for a batch of "
            f"{batch} states of size {hidden}; it must be (batch, hidden) = ({batch}, {hidden})"
        )
    lo, hi = float(jnp.min(alpha)), float(jnp.max(alpha))
    if not (lo >= 0.0 and hi <= 1.0):
        raise GateProtocolError(
            f"cell {name}: time_scale must lie in [0, 1] (the weight of the new candidate), "
            f"got values in [{lo:.3g}, {hi:.3g}] on a random probe"
        )


def _probe(carry: Carry, batch: int, in_features: int, dtype: Any, key: jax.Array
           ) -> tuple[Carry, jax.Array]:
    """A random state shaped like ``carry`` (scale 0.5) and a random input ``(batch, in)``."""
    kh, kx = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(carry)
    h = jax.tree_util.tree_unflatten(treedef, [
        0.5 * jax.random.normal(k, leaf.shape, dtype)
        for k, leaf in zip(jax.random.split(kh, len(leaves)), leaves, strict=True)
    ])
    return h, jax.random.normal(kx, (batch, in_features), dtype)


def output_is_state(cell: nnx.Module, in_features: int, *, batch: int = 3) -> bool:
    """Whether the output ``y`` of ``__call__(h, x) -> (h', y)`` is the new state ``h'`` (its
    last carry leaf: ``h`` of an LSTM's ``(c, h)``) on a small random probe.

    The adjoints :math:`\\lambda_t = dL/dh_t` are taken through offsets added to each new state,
    after the step. When the loss reads ``y = g(h')`` rather than ``h'``, that read does not see
    the offset, so the adjoints and the first-order gradients built on them miss the readout's
    path. A cell whose own whole-sequence path feeds the offset state to its output (the
    built-in S6) says so with the class attribute ``output_reads_offset_state = True``.
    """
    if getattr(cell, "output_reads_offset_state", False):
        return True
    fn = cell_fn(cell)
    dtype = param_dtype_of(cell)
    carry = zero_carry(cell, (batch, int(in_features)))
    new, y = fn.step(fn.params, *_probe(carry, batch, int(in_features), dtype,
                                        jax.random.key(0x5EED)))
    state = jax.tree_util.tree_leaves(new)[-1]
    if not isinstance(y, jax.Array) or y.shape != state.shape:
        return False
    tol = 1e-5 if jnp.finfo(dtype).bits <= 32 else 1e-10
    return bool(jnp.max(jnp.abs(y - state)) <= tol * max(float(jnp.max(jnp.abs(state))), 1.0))


def zero_carry(cell: Any, input_shape: tuple[int, ...]) -> Carry:
    """The cell's initial carry for inputs ``input_shape``."""
    try:
        return cell.initialize_carry(input_shape)
    except (ValueError, TypeError):  # Flax's own cells insist on rngs even for zeros
        return cell.initialize_carry(input_shape, rngs=nnx.Rngs(0))
