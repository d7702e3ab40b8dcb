"""A recurrent layer with ``nnx.RNN``'s call that records what the instruments need.

:class:`Recurrent` scans any cell with Flax's recurrent contract over a sequence, like
``nnx.RNN``. When nobody measures it is a plain scan. Inside :func:`tapping` (the instruments'
pure loss functions enter it), each tapped layer

* adds ``offsets`` (zeros) to its new states, so the gradient with respect to them is the
  adjoint ``dL/dh_t`` of the same backward pass that gives the parameter gradient;
* deforms its gate path by ``eps`` (gated cells: ``split_call(h, x, deform(h, eps))``, so the
  state Jacobian is ``A + eps B``, THEORY.md §3.4);
* records its states ``(T, batch, ...)`` and its input sequence ``(batch, T, in)``.

A model may hold several layers (stacked, or beside projections and heads); each is tapped
separately, by its path in the model.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> import gatezoo as gz
  >>> layer = gz.Recurrent(gz.GRU(2, 4, rngs=nnx.Rngs(0)))
  >>> layer(jnp.ones((3, 7, 2))).shape
  (3, 7, 4)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.models.base import RecurrentCell
from gatezoo.models.protocol import deform, zero_carry

__all__ = ["Recurrent", "LayerTap", "tapping", "recurrent_layers", "layer_name"]


class LayerTap(NamedTuple):
    """What one layer does while tapped, and where it writes what it saw.

    Attributes:
      eps: gate deformation, or ``None`` for the plain step.
      offsets: zeros shaped like the layer's stacked carries (``(T, batch, ...)`` per leaf), or
        ``None``.
      record: a dict the layer fills with ``"carries"`` (time-major) and ``"inputs"``
        (``(batch, T, in)``, the sequence the layer was called on).
    """

    eps: Any
    offsets: Any
    record: dict


# id(layer) -> LayerTap for the layers of the model being traced right now (trace-time only).
_ACTIVE: list[dict[int, LayerTap]] = []


@contextlib.contextmanager
def tapping(taps: dict[int, LayerTap]) -> Iterator[None]:
    """Within the block, the layers whose ``id`` is a key of ``taps`` are tapped."""
    _ACTIVE.append(taps)
    try:
        yield
    finally:
        _ACTIVE.pop()


def _tap_of(layer: Any) -> LayerTap | None:
    return _ACTIVE[-1].get(id(layer)) if _ACTIVE else None


def recurrent_layers(model: nnx.Module) -> list[tuple[tuple, Recurrent]]:
    """``(path, layer)`` of every :class:`Recurrent` in ``model``, in graph order; ``path`` is
    the tuple of keys (``("layers", 0)``; ``()`` for the model itself)."""
    return [(tuple(path), node) for path, node in nnx.iter_graph(model)
            if isinstance(node, Recurrent)]


def layer_name(path: tuple) -> str:
    """The dotted name of a layer path (``"layers.0"``; ``""`` for the model itself)."""
    return ".".join(str(k) for k in path)


class Recurrent(nnx.Module):
    r"""Runs ``cell`` over a sequence: :math:`h_t = \mathrm{cell}(h_{t-1}, x_t)`.

    The call is ``nnx.RNN``'s: ``inputs (batch, T, in)`` (``(T, batch, in)`` with
    ``time_major``) give the outputs ``(batch, T, hidden)``, or ``(carry, outputs)`` with
    ``return_carry``. Any cell with Flax's recurrent contract works (gatezoo's, Flax's own, a
    user's); a gated one (``split_call``, ``time_scale``) gets the gate instruments too.
    A cell with a ``project``/``recur`` pair gets its input projection hoisted out of the loop;
    gatezoo's GRU and LSTM run a whole-sequence function with a hand-written backward pass
    when ``eps`` is None (reverse mode only; for ``jax.jvp`` pass ``eps=1.0``, same values).
    """

    def __init__(self, cell: nnx.Module, *, unroll: int = 1):
        for method in ("__call__", "initialize_carry"):
            if not callable(getattr(cell, method, None)):
                raise TypeError(
                    f"cell {type(cell).__name__} lacks {method}; a cell follows Flax's recurrent "
                    "contract: __call__(carry, x) -> (carry, y), initialize_carry(input_shape)"
                )
        self.cell = cell
        self.unroll = int(unroll)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: Any = None,
        return_carry: bool = False,
        time_major: bool = False,
    ) -> Any:
        xs = jnp.swapaxes(inputs, 0, 1) if time_major else inputs
        tap = _tap_of(self)
        eps, offsets = (None, None) if tap is None else (tap.eps, tap.offsets)
        ys, carries = self.unroll_states(xs, eps=eps, offsets=offsets, carry0=initial_carry)
        if tap is not None:
            tap.record.update(carries=carries, inputs=xs)
        out = ys if time_major else jnp.swapaxes(ys, 0, 1)
        if not return_carry:
            return out
        return jax.tree_util.tree_map(lambda c: c[-1], carries), out

    def unroll_states(
        self,
        xs: jax.Array,
        *,
        eps: jax.Array | float | None = None,
        offsets: Any = None,
        carry0: Any = None,
    ) -> tuple[jax.Array, Any]:
        """Scans the cell over ``xs`` and returns ``(outputs, carries)``, both time-major.

        Args:
          xs: inputs ``(batch, T, in)``.
          eps: gate deformation (gated cells only); ``None`` runs the plain cell.
          offsets: optional pytree shaped like the stacked carries, ``(T, batch, ...)`` per leaf,
            added to each new carry. Its value is meant to be zero: the gradient of a loss with
            respect to ``offsets[t]`` is then the adjoint ``dL/dh_t`` of the same backward pass
            that gives the parameter gradient.
          carry0: initial carry; zeros by default.

        Returns:
          ``outputs (T, batch, hidden)`` and the carries, each leaf ``(T, batch, ...)``.
        """
        if xs.ndim != 3:
            raise ValueError(f"xs must have shape (batch, T, features), got {xs.shape}")
        cell = self.cell
        if carry0 is None:
            carry0 = zero_carry(cell, xs.shape[:1] + xs.shape[2:])
        xs_t = jnp.swapaxes(xs, 0, 1)
        if eps is not None and not (
            callable(getattr(cell, "split_call", None))
        ):
            raise TypeError(
                f"{type(cell).__name__} does not follow the gate protocol (split_call, "
                "time_scale), so its gate path cannot be deformed"
            )
        seq, recur = xs_t, None
        if isinstance(cell, RecurrentCell) and type(cell).recur is RecurrentCell.recur:
            # Built-in cells with fused kernels (GRU, LSTM): the concatenated kernels are built
            # once, outside the loop; on CPU keeping the input projection inside the step beats
            # a (T, batch, k hidden) projection and its stacked cotangent.
            cell._check_input(xs_t)
            fused = cell._fuse()
            if eps is None and callable(getattr(cell, "_sequence", None)):
                out = cell._sequence(fused, xs_t, carry0, offsets)
                if out is not None:
                    return out

            def recur(c, x, g):
                return cell._recur(fused, c, cell._project(fused, x), g)
        elif callable(getattr(cell, "project", None)) and callable(getattr(cell, "recur", None)):
            seq, recur = cell.project(xs_t), cell.recur

        def body(carry, inp):
            x_t, off_t = inp
            gate_carry = carry if eps is None else deform(carry, eps)
            if recur is not None:
                new, y = recur(carry, x_t, gate_carry)
            elif eps is None:
                new, y = cell(carry, x_t)
            else:
                new, y = cell.split_call(carry, x_t, gate_carry)
            if off_t is not None:
                y_is_state = y is jax.tree_util.tree_leaves(new)[-1]
                new = jax.tree_util.tree_map(jnp.add, new, off_t)
                if y_is_state:  # the output is the state: it carries the offset too
                    y = jax.tree_util.tree_leaves(new)[-1]
            return new, (y, new)

        _, (ys, carries) = jax.lax.scan(body, carry0, (seq, offsets), unroll=self.unroll)
        return ys, carries
