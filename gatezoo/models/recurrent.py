"""A recurrent layer with ``nnx.RNN``'s contract that records what the instruments need.

:class:`Recurrent` scans any cell with Flax's recurrent contract over a sequence and takes every
argument ``nnx.RNN`` takes (constructor and call): ``time_major``, ``return_carry``,
``reverse``, ``keep_order``, ``unroll``, ``seq_lengths``, ``initial_carry``, ``rngs``,
``broadcast_rngs``, ``state_axes``, any number of leading batch dimensions and unbatched
inputs (``jax.vmap`` over single examples); it composes with ``nnx.Bidirectional``.

When nobody measures it is a plain scan. Inside :func:`tapping` (the instruments' pure loss
functions enter it), each tapped layer

* adds ``offsets`` (zeros) to its new states, so the gradient with respect to them is the
  adjoint ``dL/dh_t`` of the same backward pass that gives the parameter gradient;
* deforms its gate path by ``eps`` (gated cells: ``split_call(h, x, deform(h, eps))``, so the
  state Jacobian is ``A + eps B``);
* records, in its own processing order (a reversed layer's reversed time) with the batch
  dimensions flattened into one: its states ``(T, batch, ...)``, its input sequence
  ``(batch, T, in)``, its initial carry ``(batch, ...)`` and its ``lengths`` ``(batch,)``
  (``None`` without ``seq_lengths``). A reversed layer flips only the valid part of each
  sequence (as ``nnx.RNN`` does), so padding stays at the end in both directions.

A model may hold several layers (stacked, bidirectional, beside projections and heads); each
is tapped separately, by its path in the model.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> import gatezoo as gz
  >>> layer = gz.Recurrent(gz.GRU(2, 4, rngs=nnx.Rngs(0)))
  >>> layer(jnp.ones((3, 7, 2))).shape
  (3, 7, 4)
  >>> carry, ys = layer(jnp.ones((3, 7, 2)), seq_lengths=jnp.array([7, 5, 2]),
  ...                   return_carry=True)
  >>> bool(jnp.allclose(carry[2], ys[2, 1]))  # the carry at each sequence's last valid step
  True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.transforms import iteration

from gatezoo.models.base import RecurrentCell
from gatezoo.models.protocol import deform, zero_carry

__all__ = [
    "Recurrent", "LayerTap", "tapping", "recurrent_layers", "layer_name", "flip_valid",
    "last_valid",
]


class LayerTap(NamedTuple):
    """What one layer does while tapped, and where it writes what it saw.

    Attributes:
      eps: gate deformation, or ``None`` for the plain step.
      offsets: zeros shaped like the layer's stacked carries (``(T, batch, ...)`` per leaf), or
        ``None``.
      record: a dict the layer fills with ``"carries"`` (time-major), ``"inputs"``
        (``(batch, T, in)``), ``"carry0"`` and ``"lengths"``, all in processing order.
    """

    eps: Any
    offsets: Any
    record: dict


_TAP = "_gatezoo_tap"  # the instance attribute a tapped layer reads; never a class attribute


@contextlib.contextmanager
def tapping(taps: Iterable[tuple[Recurrent, LayerTap]]) -> Iterator[None]:
    """Within the block, each ``layer`` of the ``(layer, tap)`` pairs is tapped.

    The tap is handed to the layer object itself (the freshly merged module of the instruments'
    pure loss, which no other trace sees) and taken back on exit, so there is no module-level
    state: nested or concurrent traces of other models cannot see each other's taps.
    """
    pairs = list(taps)
    for layer, tap in pairs:
        if not isinstance(layer, Recurrent):
            raise TypeError(f"tapping: only gz.Recurrent layers are tapped, got "
                            f"{type(layer).__name__}")
        object.__setattr__(layer, _TAP, tap)  # not a graph attribute of the module
    try:
        yield
    finally:
        for layer, _ in pairs:
            vars(layer).pop(_TAP, None)


def _tap_of(layer: Any) -> LayerTap | None:
    return vars(layer).get(_TAP)


def recurrent_layers(model: nnx.Module) -> list[tuple[tuple, Recurrent]]:
    """``(path, layer)`` of every :class:`Recurrent` in ``model``, in graph order; ``path`` is
    the tuple of keys (``("layers", 0)``; ``()`` for the model itself)."""
    return [(tuple(path), node) for path, node in nnx.iter_graph(model)
            if isinstance(node, Recurrent)]


def layer_name(path: tuple) -> str:
    """The dotted name of a layer path (``"layers.0"``; ``""`` for the model itself)."""
    return ".".join(str(k) for k in path)


def flip_valid(xs: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Reverses time-major ``xs (T, batch, ...)`` within each sequence's valid part.

    Step ``t`` of the result is step ``(lengths[b] - 1 - t) mod T`` of ``xs`` (``nnx.RNN``'s
    flip): the valid steps ``t < lengths[b]`` in reverse order, then the padding, itself
    reversed, so the padding stays at the end and the flip is its own inverse. Without
    ``lengths`` it is a plain reversal.
    """
    if lengths is None:
        return jnp.flip(xs, axis=0)
    steps = xs.shape[0]
    source = (lengths[None, :] - 1 - jnp.arange(steps)[:, None]) % steps  # (T, batch)
    source = source.reshape(source.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, source, axis=0)


def last_valid(stacked: Any, lengths: jax.Array) -> Any:
    """``stacked[lengths[b] - 1, b]`` for every leaf ``(T, batch, ...)``: each sequence's value
    at its last valid step."""
    rows = jnp.arange(lengths.shape[0])
    return jax.tree_util.tree_map(lambda a: a[lengths - 1, rows], stacked)


def _own_rng_stream(rngs: Any) -> Any:
    if rngs is True:
        return nnx.RngStream(0, tag="carry")
    if rngs is False or rngs is None:
        return nnx.data(None)
    if isinstance(rngs, nnx.Rngs):
        return rngs.carry.fork()
    if isinstance(rngs, nnx.RngStream):
        return rngs
    raise ValueError(f"rngs must be a bool, nnx.Rngs or nnx.RngStream, got {type(rngs).__name__}")


def _plain_call(cell: Any) -> bool:
    """True when a built-in cell's ``__call__`` and ``split_call`` are the base class's, so its
    fused kernels and whole-sequence functions compute what ``__call__`` computes. A subclass
    that overrides either (dropout on the carry, a scaled step) runs its own ``__call__``."""
    cls = type(cell)
    return cls.__call__ is RecurrentCell.__call__ and cls.split_call is RecurrentCell.split_call


def _is_stateful(cell: Any) -> bool:
    """True when the cell holds state other than parameters (RNG streams, counters, batch
    statistics): its steps may change that state, so the scan threads it as ``nnx.RNN``
    does."""
    return bool(jax.tree_util.tree_leaves(nnx.state(cell, nnx.Not(nnx.Param))))


class Recurrent(nnx.Module):
    r"""Runs ``cell`` over a sequence: :math:`h_t = \mathrm{cell}(h_{t-1}, x_t)`, like ``nnx.RNN``.

    Shapes: ``inputs (*batch, T, *features)`` (``(T, *batch, *features)`` with ``time_major``;
    ``features`` is the cell's ``num_feature_axes`` trailing axes, one for the zoo's cells);
    outputs ``(*batch, T, hidden)`` in the same layout, or ``(carry, outputs)`` with
    ``return_carry``. ``batch`` may be empty (one unbatched sequence, e.g. under ``jax.vmap``).

    Any cell with Flax's recurrent contract works (gatezoo's, Flax's own, a user's); a gated
    one (``split_call``, ``time_scale``) gets the gate instruments too. A built-in cell runs
    its fused kernels (GRU and LSTM a whole-sequence function with a hand-written backward
    pass when nobody deforms the gates); a subclass that overrides ``__call__`` runs its own
    step. A cell holding state other than parameters (an ``nnx.Dropout`` with its RNG stream,
    a counter) is scanned with that state threaded through the steps, as ``nnx.RNN`` does:
    RNG streams named by ``broadcast_rngs`` give the same numbers at every step of a call
    (recurrent dropout masks), the others fresh numbers per step.

    Args (constructor; every call argument of the same name overrides it for one call):
      cell: the cell.
      time_major: inputs and outputs ``(T, *batch, ...)``.
      return_carry: return ``(carry, outputs)``.
      reverse: process the sequence from its end (each sequence's valid part only, when
        ``seq_lengths`` is given).
      keep_order: with ``reverse``, give the outputs back in input order.
      unroll: ``lax.scan`` unroll of the step loop.
      state_axes: how the cell's non-parameter state crosses the steps (``nnx.RNN``'s
        ``state_axes``; default: carried).
      broadcast_rngs: a filter of RNG streams shared by all steps of a call.
      rngs: the layer's own ``carry`` stream for ``initialize_carry`` (``True``: a fresh
        stream with key 0; ``False``: none).

    Call:
      ``layer(inputs, *, initial_carry=None, seq_lengths=None, return_carry=None,
      time_major=None, reverse=None, keep_order=None, rngs=None)``; ``seq_lengths`` (``batch``
      shape, int) marks steps ``t >= seq_lengths`` as padding: the returned carry is each
      sequence's carry at its last valid step, a reversed layer flips the valid part only, and
      the instruments leave padded steps out.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> import gatezoo as gz
      >>> layer = gz.Recurrent(gz.Leaky(2, 8, alpha=0.5, rngs=nnx.Rngs(0)))
      >>> layer(jnp.ones((4, 10, 2))).shape
      (4, 10, 8)
      >>> carry, ys = layer(jnp.ones((4, 10, 2)), return_carry=True)
      >>> carry.shape, bool((carry == ys[:, -1]).all())
      ((4, 8), True)

    References:
      None: the layer is the scan of docs/theory.md §1.1 around any cell, with no rule of its
      own; the cells cite their papers, and what the instruments measure on the layer is in
      docs/theory.md §3.3-§3.4 and §4.
    """

    def __init__(
        self,
        cell: nnx.Module,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        state_axes: Mapping[Any, Any] | None = None,
        broadcast_rngs: Any = None,
        rngs: nnx.Rngs | nnx.RngStream | bool = True,
    ):
        for method in ("__call__", "initialize_carry"):
            if not callable(getattr(cell, method, None)):
                raise TypeError(
                    f"cell {type(cell).__name__} lacks {method}; a cell follows Flax's recurrent "
                    "contract: __call__(carry, x) -> (carry, y), initialize_carry(input_shape)"
                )
        if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
            raise ValueError(f"unroll must be a positive integer, got {unroll!r}")
        self.cell = cell
        self.time_major = bool(time_major)
        self.return_carry = bool(return_carry)
        self.reverse = bool(reverse)
        self.keep_order = bool(keep_order)
        self.unroll = int(unroll)
        self.rngs = _own_rng_stream(rngs)
        self.state_axes = nnx.data(state_axes)
        self.broadcast_rngs = nnx.data(broadcast_rngs)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: Any = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ) -> Any:
        pick = lambda given, own: own if given is None else bool(given)  # noqa: E731
        return_carry = pick(return_carry, self.return_carry)
        time_major = pick(time_major, self.time_major)
        reverse = pick(reverse, self.reverse)
        keep_order = pick(keep_order, self.keep_order)
        layout = _Layout.of(inputs, time_major, _feature_axes(self.cell))
        _check_inputs(self.cell, jnp.shape(inputs), layout)
        xs_t = layout.to_flat(inputs)  # (T, batch, *features)
        lengths = layout.flat_lengths(seq_lengths)
        if reverse:
            xs_t = flip_valid(xs_t, lengths)
        carry0 = self._initial_carry(initial_carry, layout, rngs)
        tap = _tap_of(self)
        eps, offsets = (None, None) if tap is None else (tap.eps, tap.offsets)
        ys_t, carries, last = self._scan(xs_t, carry0, eps, offsets, layout)
        if tap is not None:
            tap.record.update(carries=carries, inputs=jnp.swapaxes(xs_t, 0, 1), carry0=carry0,
                              lengths=lengths)
        if reverse and keep_order:
            ys_t = flip_valid(ys_t, lengths)
        outputs = layout.from_flat(ys_t)
        if not return_carry:
            return outputs
        if lengths is not None:
            last = last_valid(carries, lengths)
        return layout.carry_from_flat(last), outputs

    def _initial_carry(self, initial_carry: Any, layout: _Layout, rngs: Any) -> Any:
        if initial_carry is None:
            stream = self.rngs if rngs is None else rngs
            if isinstance(stream, nnx.Rngs):
                stream = stream.carry.fork()
            shape = layout.batch + layout.features
            if stream is None:
                carry = zero_carry(self.cell, shape)
            else:
                carry = self.cell.initialize_carry(shape, stream)
        else:
            carry = initial_carry
        return layout.carry_to_flat(carry)

    def _scan(self, xs_t, carry0, eps, offsets, layout) -> tuple[jax.Array, Any, Any]:
        """``(outputs, carries, last carry)`` over time-major ``xs_t (T, batch, ...)``; the
        carries are stacked ``(T, batch, ...)``."""
        if _is_stateful(self.cell):
            # the steps see the caller's batch dimensions, so the random numbers a cell draws
            # (shaped like its input) are those it draws inside nnx.RNN
            tm = jax.tree_util.tree_map
            n = len(layout.batch)
            ys, carries, last = self._stateful_scan(
                tm(lambda a: a.reshape(a.shape[:1] + layout.batch + a.shape[2:]), xs_t),
                layout.carry_from_flat(carry0), eps,
                tm(lambda a: a.reshape(a.shape[:1] + layout.batch + a.shape[2:]), offsets),
            )
            flat = lambda a: a.reshape(a.shape[:1] + (layout.size,) + a.shape[1 + n:])  # noqa: E731
            return tm(flat, ys), tm(flat, carries), layout.carry_to_flat(last)
        ys, carries = self.unroll_states(jnp.swapaxes(xs_t, 0, 1), eps=eps, offsets=offsets,
                                         carry0=carry0)
        return ys, carries, jax.tree_util.tree_map(lambda c: c[-1], carries)

    def _stateful_scan(self, xs_t, carry0, eps, offsets) -> tuple[jax.Array, Any, Any]:
        # nnx.RNN's scan: the cell's non-parameter state is carried from step to step (or
        # broadcast, for the streams of broadcast_rngs, split once per call), so a cell with
        # dropout draws what it draws inside nnx.RNN
        cell = self.cell
        own_axes = self.state_axes or nnx.StateAxes({...: iteration.Carry})
        broadcast = nnx.All(nnx.RngState, self.broadcast_rngs)
        state_axes = iteration.StateAxes({broadcast: None, **own_axes})

        @nnx.split_rngs(splits=1, only=self.broadcast_rngs, squeeze=True)
        @nnx.compat.scan(in_axes=(state_axes, iteration.Carry, 0),
                         out_axes=(iteration.Carry, 0), unroll=self.unroll)
        def scan_fn(cell, carry, inp):
            x_t, off_t = inp
            new, y = _one_step(cell, None, carry, x_t, eps, off_t)
            return new, (y, new)

        last, (ys, carries) = scan_fn(cell, carry0, (xs_t, offsets))
        return ys, carries, last

    def unroll_states(
        self,
        xs: jax.Array,
        *,
        eps: jax.Array | float | None = None,
        offsets: Any = None,
        carry0: Any = None,
    ) -> tuple[jax.Array, Any]:
        """Scans the cell over ``xs`` in order and returns ``(outputs, carries)``, time-major.

        Args:
          xs: inputs ``(batch, T, *features)``.
          eps: gate deformation (gated cells only); ``None`` runs the plain cell.
          offsets: optional pytree shaped like the stacked carries, ``(T, batch, ...)`` per leaf,
            added to each new carry. Its value is meant to be zero: the gradient of a loss with
            respect to ``offsets[t]`` is then the adjoint ``dL/dh_t`` of the same backward pass
            that gives the parameter gradient.
          carry0: initial carry ``(batch, ...)``; the cell's zero carry by default.

        Returns:
          ``outputs (T, batch, hidden)`` and the carries, each leaf ``(T, batch, ...)``.
        """
        if xs.ndim < 3:
            raise ValueError(f"xs must have shape (batch, T, features), got {xs.shape}")
        cell = self.cell
        if carry0 is None:
            carry0 = zero_carry(cell, xs.shape[:1] + xs.shape[2:])
        xs_t = jnp.swapaxes(xs, 0, 1)
        if eps is not None and not callable(getattr(cell, "split_call", None)):
            raise TypeError(
                f"{type(cell).__name__} does not follow the gate protocol (split_call, "
                "time_scale), so its gate path cannot be deformed"
            )
        seq, recur = xs_t, None
        if isinstance(cell, RecurrentCell) and _plain_call(cell):
            if type(cell).recur is RecurrentCell.recur:
                # Built-in cells with fused kernels (GRU, LSTM): the concatenated kernels are
                # built once, outside the loop; on CPU keeping the input projection inside the
                # step beats a (T, batch, k hidden) projection and its stacked cotangent.
                cell._check_input(xs_t)
                fused = cell._fuse()
                if eps is None and callable(getattr(cell, "_sequence", None)):
                    out = cell._sequence(fused, xs_t, carry0, offsets)
                    if out is not None:
                        return out

                def recur(c, x, g):
                    return cell._recur(fused, c, cell._project(fused, x), g)
            else:
                seq, recur = cell.project(xs_t), cell.recur
        elif not isinstance(cell, RecurrentCell) and callable(getattr(cell, "project", None)) \
                and callable(getattr(cell, "recur", None)):
            seq, recur = cell.project(xs_t), cell.recur

        def body(carry, inp):
            x_t, off_t = inp
            new, y = _one_step(cell, recur, carry, x_t, eps, off_t)
            return new, (y, new)

        _, (ys, carries) = jax.lax.scan(body, carry0, (seq, offsets), unroll=self.unroll)
        return ys, carries


def _one_step(cell: Any, recur: Any, carry: Any, x_t: jax.Array, eps: Any, off_t: Any):
    """One step: ``recur(carry, x_t, gate_carry)`` when the input projection was hoisted, the
    cell's ``__call__`` when nobody deforms the gates, ``split_call`` otherwise; then the
    offsets (the adjoint probes) are added to the new carry."""
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
    return new, y


def _check_inputs(cell: Any, shape: tuple, layout: _Layout) -> None:
    """One line, in the caller's layout, for inputs no step can read: no time steps, or a
    feature size other than the cell's ``in_features``."""
    where = "(T, *batch, features)" if layout.time_major else "(*batch, T, features)"
    if layout.steps == 0:
        raise ValueError(f"inputs of shape {shape} {where} have no time steps; a recurrent "
                         "layer needs T >= 1")
    want = getattr(cell, "in_features", None)
    if isinstance(want, int) and len(layout.features) == 1 and layout.features[0] != want:
        raise ValueError(
            f"{type(cell).__name__} expects inputs with {want} features in the last axis, got "
            f"inputs of shape {shape} {where}"
        )


def _feature_axes(cell: Any) -> int:
    try:
        n = cell.num_feature_axes
    except (AttributeError, NotImplementedError):
        return 1
    return int(n) if isinstance(n, int) and n >= 1 else 1


class _Layout(NamedTuple):
    """Where time and batch sit in a call's inputs, and the moves to and from the layer's own
    layout: time first, the batch dimensions flattened into one axis."""

    time_major: bool
    batch: tuple
    features: tuple
    steps: int

    @classmethod
    def of(cls, inputs: Any, time_major: bool, n_features: int) -> _Layout:
        shape = tuple(jnp.shape(inputs))
        if len(shape) < n_features + 1:
            raise ValueError(
                f"inputs must have shape (*batch, T, features{', ...' * (n_features - 1)})"
                f"{' with time_major' if time_major else ''}, got {shape}: the cell has "
                f"{n_features} feature axes and a time axis is needed"
            )
        features = shape[len(shape) - n_features:]
        if time_major:
            return cls(True, shape[1:len(shape) - n_features], features, shape[0])
        return cls(False, shape[:len(shape) - n_features - 1], features,
                   shape[len(shape) - n_features - 1])

    @property
    def size(self) -> int:
        return math.prod(self.batch)

    def to_flat(self, x: jax.Array) -> jax.Array:
        if not self.time_major:
            x = jnp.moveaxis(x, len(self.batch), 0)
        return x.reshape((self.steps, self.size) + self.features)

    def from_flat(self, ys: Any) -> Any:
        def one(y):
            y = y.reshape((self.steps,) + self.batch + y.shape[2:])
            return y if self.time_major else jnp.moveaxis(y, 0, len(self.batch))

        return jax.tree_util.tree_map(one, ys)

    def flat_lengths(self, seq_lengths: Any) -> jax.Array | None:
        if seq_lengths is None:
            return None
        lengths = jnp.asarray(seq_lengths)
        if tuple(lengths.shape) != self.batch or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(
                f"seq_lengths must be integers shaped like the batch dimensions {self.batch}, "
                f"got {lengths.dtype} {tuple(lengths.shape)}"
            )
        return lengths.reshape((self.size,)).astype(jnp.int32)

    def carry_to_flat(self, carry: Any) -> Any:
        n = len(self.batch)

        def one(c):
            if tuple(jnp.shape(c)[:n]) != self.batch:
                raise ValueError(
                    f"initial_carry leaves must start with the batch dimensions {self.batch}, "
                    f"got a leaf of shape {tuple(jnp.shape(c))}"
                )
            return jnp.reshape(c, (self.size,) + tuple(jnp.shape(c)[n:]))

        return jax.tree_util.tree_map(one, carry)

    def carry_from_flat(self, carry: Any) -> Any:
        return jax.tree_util.tree_map(lambda c: c.reshape(self.batch + c.shape[1:]), carry)
