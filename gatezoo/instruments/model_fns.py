"""The one builder of a model's pure functions, for the train step and the instruments.

A model is any ``nnx.Module`` holding one or more :class:`gatezoo.Recurrent` layers
(:class:`gatezoo.SequenceModel` is one); a loss is a task (``task.loss(model(xs), ys)``) or the
user's ``loss_fn(model, xs, ys) -> scalar``. :func:`network_fns` splits the model into
parameters and pure functions of them:

* ``NetworkFns.loss(params, xs, ys, offsets=None)`` runs the model once with every layer
  tapped (zero ``offsets`` per layer path, so one backward pass gives the parameter gradient
  and every layer's adjoints ``dL/dh_t``) and returns ``(loss, records)``, ``records[path]``
  holding the layer's ``carries`` and ``inputs``;
* ``NetworkFns.layers[path]`` is the :class:`~gatezoo.instruments.protocol.LayerFns` of one
  layer: its loss deforms that layer's gate path only, its ``step``/``split_step``/
  ``time_scale`` are those of :func:`gatezoo.models.cell_fn` on the layer's cell.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> import gatezoo as gz
  >>> model = gz.SequenceModel(gz.GRU(2, 4, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
  >>> net, params = gz.instruments.network_fns(model, lambda m, x, y: jnp.mean((m(x) - y) ** 2))
  >>> loss, records = net.loss(params, jnp.ones((3, 6, 2)), jnp.zeros((3, 1)))
  >>> records[""]["carries"].shape
  (6, 3, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.instruments.first_order_cells import first_order_streams
from gatezoo.instruments.protocol import LayerFns
from gatezoo.models.protocol import cell_fn, check_gate_protocol, output_is_state, zero_carry
from gatezoo.models.recurrent import LayerTap, Recurrent, layer_name, recurrent_layers, tapping

__all__ = ["NetworkFns", "network_fns", "model_fns", "loss_function", "zero_offsets"]


class NetworkFns(NamedTuple):
    """Pure functions of a model with one or more recurrent layers.

    Attributes:
      loss: ``loss(params, xs, ys, offsets=None) -> (loss, records)``; ``offsets`` maps a layer
        path to zeros shaped like its carries; ``records[path]`` is ``{"carries", "inputs",
        "carry0", "lengths"}`` (processing order, see :class:`gatezoo.Recurrent`).
      layers: ``path -> LayerFns`` (``""`` is the model itself, e.g. a SequenceModel).
      forward: ``forward(params, xs) -> model output`` (the plain model, nothing tapped).
      state: the model's state other than its parameters (RNG streams, batch statistics,
        counters; an empty ``nnx.State`` for most models) that every function above runs with.
      stateful_loss: ``stateful_loss(params, xs, ys, offsets=None) -> (loss, (records,
        new_state))``: :attr:`loss` that also returns the state the model left (the RNG
        counters advanced, the batch statistics updated), as an ``nnx.jit`` step would.
      bind: ``bind(state) -> NetworkFns``: the same functions running with another state (the
        state of this step; every measurement of the step then sees the dropout masks and
        batch statistics of the training pass).
      predict: ``predict(params, xs, ys) -> prediction`` of the model in evaluation mode
        (``model.eval()``: dropout off, batch statistics read, not updated), through the
        task's ``predict`` when the loss is a task (a padded batch passes its lengths).
    """

    loss: Callable[..., Any]
    layers: dict[str, LayerFns]
    forward: Callable[..., Any]
    state: Any = None
    stateful_loss: Callable[..., Any] | None = None
    bind: Callable[[Any], Any] | None = None
    predict: Callable[..., Any] | None = None


def loss_function(loss: Any) -> Callable[..., jax.Array]:
    """``loss_fn(model, xs, ys)`` from a task (``task.loss(task.predict(model, xs, ys), ys)``:
    a padded batch passes its lengths to the model) or a callable."""
    if callable(getattr(loss, "loss", None)):
        task = loss
        if callable(getattr(task, "predict", None)):
            return lambda model, xs, ys: task.loss(task.predict(model, xs, ys), ys)
        return lambda model, xs, ys: task.loss(model(xs), ys)
    if callable(loss):
        return loss
    raise TypeError(
        f"loss must be a task (with .loss(pred, ys)) or a function loss_fn(model, xs, ys), "
        f"got {type(loss).__name__}"
    )


def _subtree(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _layer_fns(path: tuple, layer: Recurrent, tapped: Callable[..., Any]) -> LayerFns:
    name = layer_name(path)
    cell = layer.cell
    fn = cell_fn(cell)
    carry = jax.eval_shape(lambda: zero_carry(cell, (1, 1)))
    leaves = jax.tree_util.tree_leaves(carry)

    def loss(p, xs, ys, eps=None, offsets=None):
        value, records, _ = tapped(p, xs, ys, {name: (eps, offsets)})
        return value, records[name]["carries"]

    def recorded(key):
        def read(p, xs, ys=None):
            # with targets the model runs as the loss calls it (a model whose call needs more
            # than xs, e.g. lengths, is called by the user's loss only)
            taps = {name: (None, None)}
            return tapped(p, xs, ys, taps, forward_only=ys is None)[1][name][key]

        return read

    return LayerFns(
        loss=loss, step=fn.step, time_scale=fn.time_scale,
        cell_params=lambda p: _subtree(p, (*path, "cell")), gated=fn.gated,
        hidden=int(leaves[-1].shape[-1]), state_size=sum(int(c.shape[-1]) for c in leaves),
        split_step=fn.split_step, inputs=None if not path else recorded("inputs"), path=name,
        gates_read_state=fn.gates_read_state,
        first_order_streams=first_order_streams(cell) if fn.gated else None,
        initial=recorded("carry0"),
        stateful=bool(jax.tree_util.tree_leaves(nnx.state(cell, nnx.Not(nnx.Param)))),
    )


def _predictor(loss: Any) -> Callable[..., Any]:
    if callable(getattr(loss, "predict", None)):
        return loss.predict
    return lambda model, xs, ys: model(xs)


def _bound(graphdef: Any, state: Any, loss_fn: Callable, found: list,
           eval_graph: tuple) -> NetworkFns:
    """The network's functions with the non-parameter ``state`` fixed (see :class:`NetworkFns`)."""
    names = [layer_name(p) for p, _ in found]
    # plain arrays, not Variables: the functions run under other traces (grad, jvp, scan, cond)
    # and merge fresh Variables from them there, which the model may then update
    state = nnx.as_pure(state)

    def tapped(p, xs, ys, taps: dict, forward_only: bool = False):
        m = nnx.merge(graphdef, p, state)
        live = {layer_name(path): layer for path, layer in recurrent_layers(m)}
        records: dict[str, dict] = {name: {} for name in taps}
        pairs = [(live[name], LayerTap(eps, off, records[name]))
                 for name, (eps, off) in taps.items()]
        with tapping(pairs):
            out = m(xs) if forward_only else loss_fn(m, xs, ys)
        return out, records, nnx.as_pure(nnx.state(m, nnx.Not(nnx.Param)))

    def stateful_loss(p, xs, ys, offsets=None):
        offsets = offsets or {}
        value, records, new_state = tapped(p, xs, ys, {n: (None, offsets.get(n)) for n in names})
        return value, (records, new_state)

    def net_loss(p, xs, ys, offsets=None):
        value, (records, _) = stateful_loss(p, xs, ys, offsets)
        return value, records

    def forward(p, xs):
        return nnx.merge(graphdef, p, state)(xs)

    def predict(p, xs, ys):
        eval_graphdef, predict_fn = eval_graph
        return predict_fn(nnx.merge(eval_graphdef, p, state), xs, ys)

    layers = {layer_name(path): _layer_fns(path, layer, tapped) for path, layer in found}
    return NetworkFns(net_loss, layers, forward, state, stateful_loss,
                      lambda other: _bound(graphdef, other, loss_fn, found, eval_graph), predict)


def network_fns(
    model: nnx.Module, loss: Any, *, example: tuple | None = None
) -> tuple[NetworkFns, Any]:
    """The pure functions of ``model`` under ``loss`` and its parameters (``nnx.Param`` state).

    Args:
      model: an ``nnx.Module`` with at least one :class:`gatezoo.Recurrent` layer (concrete, or
        abstract from ``nnx.eval_shape``); it may hold other state (``nnx.Dropout`` RNG
        streams, ``nnx.BatchNorm`` statistics, counters): :attr:`NetworkFns.state`.
      loss: a task or ``loss_fn(model, xs, ys) -> scalar``.
      example: ``(xs, ys)`` of one batch (arrays or ``jax.ShapeDtypeStruct``): gives each
        layer's input width for the gate-protocol check; not needed when every gated cell
        has an integer ``in_features``.

    Every gated cell of a concrete model is checked once, here, with
    :func:`gatezoo.models.check_gate_protocol` on a small random probe (an abstract model from
    ``nnx.eval_shape`` is not checked).

    Raises:
      ValueError: a model without a recurrent layer, or a gated cell whose input width is
        unknown (no ``in_features`` and no ``example``); GateProtocolError: a gated cell
        whose ``__call__`` and ``split_call``/``time_scale`` disagree.
    """
    loss_fn = loss_function(loss)
    found = recurrent_layers(model)
    if not found:
        raise ValueError(
            f"{type(model).__name__} holds no gatezoo.Recurrent layer; build its recurrent "
            "layers with gz.Recurrent(cell) (a drop-in for nnx.RNN) so the instruments can "
            "measure them"
        )
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    _check_floating(params)
    evaluating = nnx.clone(model)
    evaluating.eval()  # Dropout off, BatchNorm on its running statistics: static attributes
    net = _bound(graphdef, state, loss_fn, found, (nnx.graphdef(evaluating), _predictor(loss)))
    concrete = not any(
        isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(params)
    )
    if concrete:
        _check_cells(net, {layer_name(p): layer for p, layer in found}, params, example)
    return net, params


def _check_floating(params: Any) -> None:
    """Every ``nnx.Param`` is differentiated (gradients, adjoints, optimizers): an integer one
    is refused by name rather than by JAX's ``allow_int`` hint deep inside a trace."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.dtype(leaf.dtype)
        if not jnp.issubdtype(dtype, jnp.inexact):
            keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
            name = ".".join(keys[:-1] if keys[-1] == "value" and len(keys) > 1 else keys)
            raise TypeError(
                f"parameter {name} is {dtype}: every nnx.Param is differentiated, so it must be "
                "floating point; keep integer state in an nnx.Variable that is not a Param"
            )


def _check_cells(net: NetworkFns, layers: dict, params: Any, example: tuple | None) -> None:
    """The gate protocol of every gated cell, and whether each cell's output is its state
    (every cell whose input width is known)."""
    widths = {n: getattr(layer.cell, "in_features", None) for n, layer in layers.items()}
    if example is not None and not all(isinstance(w, int) for w in widths.values()):
        xs, ys = example
        _, records = jax.eval_shape(net.loss, params, xs, ys)
        widths = {n: int(records[n]["inputs"].shape[-1]) for n in layers}
    for name, layer in layers.items():
        cell, width = layer.cell, widths[name]
        if net.layers[name].gated and not isinstance(width, int):
            raise ValueError(
                f"cannot check the gate protocol of cell {type(cell).__name__} (layer "
                f"{name or 'model'!r}): its input width is unknown; give the cell an integer "
                "in_features attribute or pass example=(xs, ys)"
            )
        if net.layers[name].gated:
            check_gate_protocol(cell, width)
        if isinstance(width, int) and not output_is_state(cell, width):
            net.layers[name] = net.layers[name]._replace(output_is_state=False)


def model_fns(model: nnx.Module, loss: Any, *, example: tuple | None = None):
    """``(LayerFns, params)`` of a model with exactly one recurrent layer (a SequenceModel).

    ``loss`` is a task or ``loss_fn(model, xs, ys)``; ``example`` as in :func:`network_fns`.
    For several layers use :func:`network_fns`.
    """
    net, params = network_fns(model, loss, example=example)
    if len(net.layers) != 1:
        raise ValueError(
            f"{type(model).__name__} has {len(net.layers)} recurrent layers "
            f"({', '.join(net.layers)}); use gz.instruments.network_fns for per-layer functions"
        )
    return next(iter(net.layers.values())), params


def zero_offsets(net: NetworkFns, params: Any, xs: jax.Array, ys: Any) -> dict:
    """Zero offsets for every layer of ``net`` on a batch shaped like ``xs``."""
    _, records = jax.eval_shape(lambda p: net.loss(p, xs, ys), params)
    return {
        name: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), rec["carries"])
        for name, rec in records.items()
    }
