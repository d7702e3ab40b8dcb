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
    the state retains ``1 - alpha_t`` (THEORY.md §1.1). For an LSTM it is ``1 - f_t``.

With ``gate_carry = deform(carry, eps)`` the value is unchanged, but the derivative with respect
to ``carry`` becomes ``A + eps * B`` (THEORY.md §3.4 recipe 2): ``A`` is the gate-frozen Jacobian
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
    "cell_fn",
    "flatten_carry",
    "unflatten_carry",
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
    """

    params: Any
    step: Callable[..., tuple[Carry, jax.Array]]
    time_scale: Callable[..., jax.Array] | None
    gated: bool


def cell_fn(cell: nnx.Module) -> CellFn:
    """Splits ``cell`` into parameters and pure functions of them.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import gatezoo as gz
      >>> fn = gz.cell_fn(gz.VectorGate(3, 5, rngs=nnx.Rngs(0)))
      >>> h, y = fn.step(fn.params, jnp.zeros(5), jnp.ones(3), eps=0.0)
    """
    graphdef, params, rest = nnx.split(cell, nnx.Param, ...)
    gated = is_gated(cell)

    def step(p, carry, x, eps=None):
        module = nnx.merge(graphdef, p, rest)
        if eps is None:
            return module(carry, x)
        if not gated:
            raise TypeError(
                f"{type(cell).__name__} does not follow the gate protocol (split_call, "
                "time_scale), so its gate path cannot be separated"
            )
        return module.split_call(carry, x, deform(carry, eps))

    def time_scale(p, carry, x):
        return nnx.merge(graphdef, p, rest).time_scale(carry, x)

    return CellFn(params, step, time_scale if gated else None, gated)
