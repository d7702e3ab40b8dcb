r"""Instruments inside your own train step: one pure entry point, in the manner of optax.

:func:`attach` takes a model (any ``nnx.Module`` with :class:`gatezoo.Recurrent` layers), the
loss ``loss_fn(model, xs, ys)`` (or a task) and instrument names, and returns
:class:`Attached`, a pair of pure functions:

* ``init(params) -> state``: the instruments' state;
* ``update(params, state, xs, ys, *, step, optimizer=None, opt_state=None, probe=None,
  model_state=None) -> StepOutput``: one backward pass gives the loss, the gradient and every
  layer's adjoints :math:`\lambda_t = dL/dh_t` (through zero offsets on the states); the
  optimizer's ``update`` gives the parameter updates (no optimizer: measure only); the
  instruments measure on all of it. It returns the loss, the gradients, the updates and the
  new optimizer state (apply the updates yourself), the metrics (named by
  :func:`gatezoo.metric_schema.metric_name`: ``"<instrument>/<quantity>"``, with the layer's
  path between them in a model with several recurrent layers; NaN on steps an instrument is not
  tracked, and every metric NaN on a step whose loss or gradient is not finite), the
  instruments' new state and, given the model's other state (``nnx.Dropout`` RNG streams,
  ``nnx.BatchNorm`` statistics), the state the step left;
* ``nnx_update(model, optimizer, state, xs, ys, *, step=None, probe=None) -> StepOutput``:
  the same inside an ``@nnx.jit`` step of Flax's own loop: ``optimizer`` is an
  ``nnx.Optimizer`` (or ``None``), the model and optimizer are updated in place.

Everything is jit-, vmap- and scan-compatible; gatezoo's own trainer calls this same
``update`` inside its compiled loop. ``first_order(params, xs, ys)`` returns each layer's
:math:`G_0` and :math:`G_1` (docs/theory.md §3.4) themselves.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> import gatezoo as gz
  >>> model = gz.SequenceModel(gz.GRU(2, 8, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
  >>> loss_fn = lambda m, x, y: jnp.mean((m(x) - y) ** 2)
  >>> att = gz.attach(model, loss_fn, ["gates", "expansion"])
  >>> params = nnx.state(model, nnx.Param)
  >>> opt = optax.adam(1e-2)
  >>> opt_state, inst_state = opt.init(params), att.init(params)
  >>> xs, ys = jnp.ones((4, 10, 2)), jnp.zeros((4, 1))
  >>> out = jax.jit(lambda p, o, s: att.update(p, s, xs, ys, step=0, optimizer=opt,
  ...                                           opt_state=o))(params, opt_state, inst_state)
  >>> params = optax.apply_updates(params, out.updates)
  >>> sorted(out.metrics)[:2]
  ['expansion/cos', 'expansion/cos@cell.U']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gatezoo.instruments.context import layer_context
from gatezoo.instruments.expansion import FirstOrder, first_order_gradients
from gatezoo.instruments.model_fns import NetworkFns, network_fns, zero_offsets
from gatezoo.instruments.protocol import Instrument, StepContext
from gatezoo.metric_schema import metric_name

__all__ = ["Attached", "StepOutput", "attach", "attach_fns"]


class StepOutput(NamedTuple):
    """What :meth:`Attached.update` returns (one step).

    Attributes:
      loss: the loss of the batch; ``grads``: its gradient (the optimizer's input).
      updates: ``optimizer.update(grads, opt_state, params)``'s updates; ``opt_state``: the new
        optimizer state.
      metrics: ``{metric_name(instrument, layer, quantity): array}``; NaN where not tracked
        this step.
      state: the instruments' new state.
      model_state: the model's new state other than its parameters (RNG counters advanced,
        batch statistics updated) when the step was given one, else ``None``.
    """

    loss: jax.Array
    grads: Any
    updates: Any
    opt_state: Any
    metrics: dict
    state: tuple
    model_state: Any = None


class Attached(NamedTuple):
    """Instruments attached to a model (see the module docstring).

    Attributes:
      init: ``init(params) -> state``.
      update: ``update(params, state, xs, ys, *, step, optimizer=None, opt_state=None,
        probe=None, model_state=None) -> StepOutput``.
      first_order: ``first_order(params, xs, ys, model_state=None) -> {layer path:
        FirstOrder(g0, g1, None)}``.
      net: the model's :class:`~gatezoo.instruments.model_fns.NetworkFns`.
      instruments: the attached :class:`Instrument` objects.
      nnx_update: ``nnx_update(model, optimizer, state, xs, ys, *, step=None, probe=None)
        -> StepOutput`` for ``nnx.Optimizer`` + ``nnx.jit`` loops (module docstring).
    """

    init: Callable[[Any], tuple]
    update: Callable[..., StepOutput]
    first_order: Callable[..., dict]
    net: NetworkFns
    instruments: tuple
    nnx_update: Callable[..., StepOutput] | None = None


def attach(
    model: nnx.Module,
    loss: Any,
    names: Sequence[str] | str = (),
    *,
    instruments: Sequence[Instrument] = (),
    every: dict[str, int] | None = None,
    compat: str = "exact",
    self_check: bool = False,
    example: tuple | None = None,
) -> Attached:
    r"""Attaches the instruments ``names`` (and ``instruments`` objects) to ``model``.

    The instruments measure how the gates reshape the gradient. Deforming the gate path of the
    backward transport by :math:`\varepsilon` (docs/theory.md §3.3-§3.4) splits the gradient as

    .. math::
        \nabla_\theta L = G(1) = G_0 + G_1 + R, \qquad G_0 = G(0), \quad
        G_1 = \frac{\mathrm{d}G}{\mathrm{d}\varepsilon}\Big|_{\varepsilon=0},

    with :math:`G_0` backpropagation through frozen gates and :math:`G_1` the first-order gate
    correction (``expansion``); the gate products along lags give the effective learning rates
    of docs/theory.md §4 (``lags``, ``effective_lr``). The returned ``Attached`` holds the pure
    ``init``/``update`` pair of the module docstring, which shows a whole jitted step.

    Args:
      model: an ``nnx.Module`` with one or more :class:`gatezoo.Recurrent` layers.
      loss: ``loss_fn(model, xs, ys) -> scalar`` or a task.
      names, every, compat, self_check: as in :func:`gatezoo.make_instruments`.
      example: ``(xs, ys)`` of one batch, for the gate-protocol check of cells without an
        integer ``in_features`` (see :func:`gatezoo.instruments.network_fns`).

    Raises:
      ValueError: as :func:`gatezoo.instruments.network_fns` and
        :func:`gatezoo.make_instruments`, and for two instruments of one name on one layer.

    Example:
      >>> from flax import nnx
      >>> import gatezoo as gz
      >>> model = gz.SequenceModel(gz.VectorGate(2, 4, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
      >>> task = gz.make_task("adding", seq_len=6, channels=2)
      >>> att = attach(model, task, ["gates", "expansion"])
      >>> [(inst.name, inst.tier) for inst in att.instruments]
      [('gates', 'step'), ('expansion', 'step')]
      >>> state = att.init(nnx.state(model, nnx.Param))  # then att.update(...) at every step

    References:
      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.
    """
    net, _ = network_fns(model, loss, example=example)
    return attach_fns(net, names, instruments=instruments, every=every, compat=compat,
                      self_check=self_check)


def attach_fns(
    net: NetworkFns,
    names: Sequence[str] | str = (),
    *,
    instruments: Sequence[Instrument] = (),
    every: dict[str, int] | None = None,
    compat: str = "exact",
    self_check: bool = False,
) -> Attached:
    """:func:`attach` for a model already split by :func:`gatezoo.instruments.network_fns`."""
    from gatezoo.instruments.registry import make_instruments

    attached = list(instruments)
    if names or self_check:
        attached += make_instruments(names, net, every=every, compat=compat,
                                     self_check=self_check)
    _check_attached(net, attached)
    attached = tuple(attached)
    adjoint_layers = sorted({i.layer for i in attached if i.needs_adjoints})

    def init(params):
        return tuple(inst.init(nnx.state(params, nnx.Param) if isinstance(params, nnx.Module)
                               else params) for inst in attached)

    gradients, measure = _step_parts(net, attached, adjoint_layers)

    def update(params, state, xs, ys, *, step, optimizer=None, opt_state=None, probe=None,
               model_state=None):
        _check_optimizer(optimizer, opt_state)
        _check_batch(xs)
        live, loss, records, new_model_state, grads, adjoints = gradients(
            params, xs, ys, model_state)
        updates = new_opt_state = None
        if optimizer is not None:
            updates, new_opt_state = optimizer.update(grads, opt_state, params)
        metrics, new_state = measure(live, params, state, xs, ys, step,
                                     (loss, records, grads, adjoints), updates, new_opt_state,
                                     probe)
        return StepOutput(loss, grads, updates, new_opt_state, metrics, new_state,
                          None if model_state is None else new_model_state)

    def nnx_update(model, optimizer, state, xs, ys, *, step=None, probe=None):
        if optimizer is not None and not isinstance(optimizer, nnx.Optimizer):
            raise TypeError(
                f"nnx_update takes an nnx.Optimizer (or None to measure only), got "
                f"{type(optimizer).__name__}; for an optax transformation call att.update"
            )
        # arrays, not the model's Variables: the optimizer below updates those in place, and
        # the instruments measure at the parameters the gradient was taken at
        _check_batch(xs)
        params = nnx.as_pure(nnx.state(model, nnx.Param))
        model_state = nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))
        live, loss, records, new_model_state, grads, adjoints = gradients(
            params, xs, ys, model_state)
        updates = opt_state = None
        if step is None:
            step = 0 if optimizer is None else optimizer.step[...]
        if optimizer is not None:
            as_variables = jax.tree_util.tree_map(
                lambda v, g: v.replace(g), nnx.state(model, nnx.Param), grads,
                is_leaf=lambda x: isinstance(x, nnx.Variable))
            updates = optimizer.update(model, as_variables)
            opt_state = nnx.as_pure(optimizer.opt_state)
        nnx.update(model, new_model_state)
        metrics, new_state = measure(live, params, state, xs, ys, step,
                                     (loss, records, grads, adjoints), updates, opt_state, probe)
        return StepOutput(loss, grads, updates, opt_state, metrics, new_state, new_model_state)

    def first_order(params, xs, ys, model_state=None):
        for name, fns in net.layers.items():
            if not fns.output_is_state:
                raise ValueError(_output_refusal("first_order", name))
        live = net if model_state is None else net.bind(model_state)
        offsets = zero_offsets(live, params, xs, ys)
        (_, records), (grads, adjoints) = jax.value_and_grad(
            live.loss, argnums=(0, 3), has_aux=True
        )(params, xs, ys, offsets)
        out: dict[str, FirstOrder] = {}
        for name, fns in live.layers.items():
            out[name] = first_order_gradients(
                fns, params, xs, records[name]["carries"], adjoints[name], grads,
                carry0=records[name]["carry0"], ys=ys,
            )
        return out

    return Attached(init, update, first_order, net, attached, nnx_update)


def _step_parts(net: NetworkFns, attached: tuple, adjoint_layers: list) -> tuple:
    """``(gradients, measure)``: the one backward pass of a step (loss, gradients, adjoints,
    the model's new state) and the instruments' measurements on it, shared by ``update`` and
    ``nnx_update``."""

    def gradients(params, xs, ys, model_state):
        live = net if model_state is None else net.bind(model_state)
        offsets = None
        if adjoint_layers:
            zeros = zero_offsets(live, params, xs, ys)
            offsets = {name: zeros[name] for name in adjoint_layers}
        (loss, (records, new_state)), (grads, adjoints) = jax.value_and_grad(
            live.stateful_loss, argnums=(0, 3), has_aux=True
        )(params, xs, ys, offsets)
        return live, loss, records, new_state, grads, adjoints or {}

    def measure(live, params, state, xs, ys, step, found, updates, opt_state, probe):
        loss, records, grads, adjoints = found
        step = jnp.asarray(step, jnp.int32)
        # the one place metric names are built: the layer's path only where several layers
        # would otherwise share them
        many = len(live.layers) > 1
        metrics, new_state = {}, []
        for inst, s in zip(attached, state, strict=True):
            # one context per measured layer: its states, inputs, initial carry and adjoints
            rec = records[inst.layer]
            _check_padding(inst, rec)
            _check_length(inst, rec)
            fns = live.layers[inst.layer]
            ctx = layer_context(
                fns, step=step, params=params, grads=grads, loss=loss, xs=xs, ys=ys,
                record=rec, adjoints=adjoints.get(inst.layer), updates=updates,
                opt_state=opt_state, probe=probe,
            )
            inst_metrics, s = _measured(inst, ctx, s, step, updates is None)
            layer = inst.layer if many else None
            metrics.update({metric_name(inst.name, layer, k): v for k, v in inst_metrics.items()})
            new_state.append(s)
        return _all_or_nothing(metrics, loss, grads), tuple(new_state)

    return gradients, measure


def _check_attached(net: NetworkFns, attached: list[Instrument]) -> None:
    names = [(inst.name, inst.layer) for inst in attached]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        twice = ", ".join(f"{n} on layer {layer!r}" if layer else n for n, layer in dupes)
        raise ValueError(f"instrument names must be unique per layer, got {twice} twice")
    for inst in attached:
        if inst.layer not in net.layers:
            raise ValueError(
                f"instrument {inst.name!r} measures layer {inst.layer!r}, which the model does "
                f"not have (layers: {', '.join(map(repr, net.layers))})"
            )
        fns = net.layers[inst.layer]
        if fns.stateful and (inst.needs_gates or inst.needs_adjoints or inst.tier == "probe"):
            raise ValueError(
                f"instrument {inst.name!r} cannot measure layer {inst.layer or 'model'!r}: its "
                f"cell holds state that changes at every step (an RNG stream, a counter), which "
                "the instruments cannot replay step by step; apply dropout to the layer's "
                "inputs or outputs instead of inside the cell"
            )
        if inst.needs_gates and not net.layers[inst.layer].gated:
            raise ValueError(f"instrument {inst.name!r} needs a gated cell, but the cell is not")
        if not fns.output_is_state and (inst.needs_adjoints or inst.name in _FIRST_ORDER):
            raise ValueError(_output_refusal(f"instrument {inst.name!r}", inst.layer))


# instruments built on first-order gradients, which read the adjoints of the states
_FIRST_ORDER = frozenset({"expansion", "truncation", "learnability"})


def _output_refusal(what: str, layer: str) -> str:
    return (
        f"{what} cannot measure layer {layer or 'model'!r}: its cell returns an output y that is "
        "not its new state, so the adjoints dL/dh_t would miss the loss's read of the state "
        "through y; return the state as the output (y = h) and apply the output map after the "
        "layer"
    )


# instruments whose statistics run over time or lags without reading each sequence's length yet
_UNPADDED_ONLY = frozenset({"sensitivity", "anisotropy", "truncation"})


def _check_padding(inst: Instrument, record: dict) -> None:
    if record["lengths"] is not None and inst.name in _UNPADDED_ONLY:
        raise ValueError(
            f"instrument {inst.name!r} does not yet leave padded steps out (its layer "
            f"{inst.layer or 'model'!r} was called with seq_lengths); the per-step instruments "
            "measure padded batches"
        )


# instruments that measure over lags and need at least two steps to have one
_NEEDS_LAGS = frozenset({"lags", "transport", "sensitivity"})


def _check_length(inst: Instrument, record: dict) -> None:
    steps = jax.tree_util.tree_leaves(record["carries"])[0].shape[0]
    if steps < 2 and inst.name in _NEEDS_LAGS:
        raise ValueError(
            f"instrument {inst.name!r} measures over lags and needs sequences of at least 2 "
            f"steps; its layer {inst.layer or 'model'!r} ran on T = {steps}"
        )


def _check_batch(xs: Any) -> None:
    """An empty batch has nothing to measure: refused by name before anything is traced."""
    for leaf in jax.tree_util.tree_leaves(xs):
        shape = jnp.shape(leaf)
        if shape and shape[0] == 0:
            raise ValueError(f"xs holds an empty batch (shape {tuple(shape)}); the instruments "
                             "need at least one sequence")


def _all_or_nothing(metrics: dict, loss: jax.Array, grads: Any) -> dict:
    """Every metric NaN on a step whose loss or gradient is not finite: some instruments would
    otherwise drop the bad sample and some not, a mix no reader could interpret."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in
                                [loss, *jax.tree_util.tree_leaves(grads)]]))
    return {k: jnp.where(finite, v, jnp.nan) for k, v in metrics.items()}


def _check_optimizer(optimizer: Any, opt_state: Any) -> None:
    if optimizer is None:
        return
    if isinstance(optimizer, nnx.Optimizer):
        raise TypeError(
            "update takes an optax transformation and its state; for an nnx.Optimizer call "
            "att.nnx_update(model, optimizer, state, xs, ys) inside your @nnx.jit step"
        )
    if not callable(getattr(optimizer, "update", None)):
        hint = " (call the factory: optax.adam(1e-3), not optax.adam)" if callable(
            optimizer) else ""
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation{hint}, got "
            f"{getattr(optimizer, '__name__', type(optimizer).__name__)}"
        )
    if opt_state is None:
        raise TypeError("update got an optimizer without its opt_state (optimizer.init(params))")


def _measured(inst: Instrument, ctx: StepContext, state: Any, step: jax.Array,
              measure_only: bool):
    if not measure_only:
        return tracked(inst, ctx, state, step)
    try:
        return tracked(inst, ctx, state, step)
    except (AttributeError, TypeError, KeyError) as err:
        raise ValueError(
            f"instrument {inst.name!r} reads the optimizer's updates or state; measure-only "
            f"use (no optimizer) cannot run it ({type(err).__name__}: {err})"
        ) from None


def _as_float(tree: dict) -> dict:
    # NaN marks "not tracked", so every metric must be floating point.
    out = {}
    for k, v in tree.items():
        v = jnp.asarray(v)
        out[k] = v if jnp.issubdtype(v.dtype, jnp.floating) else v.astype(jnp.float32)
    return out


def tracked(inst: Instrument, ctx: StepContext, state: Any, step: jax.Array):
    """``inst.update`` when ``step % inst.every == 0``; NaN metrics and the old state otherwise.

    ``ctx`` is closed over rather than passed as a cond operand: it holds ``fns`` (functions).
    """

    def run(state):
        metrics, new_state = inst.update(ctx, state)
        return _as_float(metrics), new_state

    every = int(inst.every)
    if every <= 1:
        return run(state)
    shapes = jax.eval_shape(run, state)[0]

    def skip(state):
        return {k: jnp.full(v.shape, jnp.nan, v.dtype) for k, v in shapes.items()}, state

    return jax.lax.cond(step % every == 0, run, skip, state)

