"""The instrument protocol: Optax-style pure measurements inside the compiled train step.

An :class:`Instrument` is a pair of pure functions, ``init(params) -> state`` and
``update(ctx, state) -> (metrics, state)``, plus a tracking schedule (``every`` steps) and a cost
tier. The trainer builds one :class:`StepContext` per step with everything instruments share (the
forward states, the adjoints ``dL/dh_t`` from the same backward pass as the gradient, the
optimizer state) and calls every instrument on it, under ``jit``/``vmap``/``scan``.

Metrics are flat ``name -> array`` mappings; ``update`` returns the bare quantities and
:func:`gatezoo.attach` (the trainer's step too) names them with
:func:`gatezoo.metric_schema.metric_name`, ``"<instrument>/<quantity>"``. Steps on which an
instrument is not tracked report NaN for its metrics (the structure never changes, so
there is one trace per run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = ["LayerFns", "StepContext", "Instrument", "TIERS", "TIER_EVERY"]

TIERS = ("step", "probe")
#: the default cadence of each tier: a step instrument reuses the training pass (every step is
#: cheap), a probe runs its own passes and is scheduled
TIER_EVERY = {"step": 1, "probe": 50}


class LayerFns(NamedTuple):
    """Pure functions of one sequence model, closed over its static structure.

    Attributes:
      loss: ``loss(params, xs, ys, eps=None, offsets=None) -> (loss, carries)``; ``carries`` has
        leaves ``(T, batch, ...)``. With ``eps`` the gate path is deformed (gated cells only);
        with ``offsets`` (zeros shaped like ``carries``) the gradient with respect to them is
        the adjoint ``dL/dh_t``.
      step: ``step(cell_params, carry, x, eps=None) -> (carry, y)`` for the *cell* alone (one
        example or a batch), as in :func:`gatezoo.models.cell_fn`.
      time_scale: ``time_scale(cell_params, carry, x) -> alpha`` or ``None`` (no gate protocol).
      cell_params: ``cell_params(params) -> cell params`` (the sub-tree of the cell).
      gated: whether the cell follows the gate protocol.
      hidden: the hidden size ``d_h``.
      state_size: the size of the flattened carry (``2 d_h`` for the LSTM's ``(c, h)``).
      split_step: optional ``split_step(cell_params, carry, x, gate_carry) -> (carry, y)``, the
        cell's ``split_call`` (gates read ``gate_carry``). Its derivatives with respect to
        ``carry`` and ``gate_carry`` are ``A_t`` and ``B_t`` (theory §2.1) in one pass; without
        it the instruments take ``A = J(eps=0)`` and ``B = J(1) - J(0)`` from two passes of
        ``step`` (same numbers, about twice the cost).
      inputs: ``inputs(params, xs, ys=None) -> (batch, T, in)``, the sequence reaching this
        layer from the model's inputs (through projections and the layers below), or ``None``
        when the layer reads ``xs`` itself. First-order gradients differentiate through it, so
        ``G0`` and ``G1`` are exact for every parameter of a stacked model.
      path: the layer's dotted path in the model (``""`` for a SequenceModel); metrics of a
        model with several layers are named ``"<instrument>/<path>/<quantity>"``.
      gates_read_state: False when the cell declares that no gate reads the state
        (:func:`gatezoo.models.protocol.gates_read_state`): ``B = 0`` within the layer, so
        ``G1 = 0`` and ``G0 = G(1)`` exactly, and ``expansion`` computes nothing more.
      first_order_streams: optional closed-form reverse recursion of the first-order adjoint
        streams, ``(cell_params, xs_t, prev, adjoints) -> (e_all, lambda1_all, immediate)``
        with ``immediate(v) -> (cell-parameter cotangent, xs_t cotangent)`` of the steps
        (see :mod:`gatezoo.instruments.first_order_cells`); ``None``: the generic per-step
        linearisation of ``split_step``. Same numbers either way; it only changes the speed of
        :func:`gatezoo.instruments.first_order_gradients`.
      initial: ``initial(params, xs, ys=None) -> carry0`` (``(batch, ...)``), the initial carry this
        layer receives, as a function of the parameters (a learned initial carry, or one
        computed by other layers; a constant for the cell's own zero carry), or ``None``
        (zero). First-order gradients pull their initial-state cotangents back through it.
      stateful: the cell holds state other than parameters (an RNG stream of a dropout inside
        the cell, a counter) that its steps may change: the instruments, which re-evaluate
        single steps, cannot reproduce the step-by-step state, so they refuse such a layer.
      output_is_state: the cell's output is its new state (or reads the offset state), as
        :func:`gatezoo.models.protocol.output_is_state` found on a probe; when not, the
        adjoints miss the output's own read of the state and the instruments built on them
        refuse the layer.
    """

    loss: Callable[..., Any]
    step: Callable[..., Any]
    time_scale: Callable[..., Any] | None
    cell_params: Callable[[Any], Any]
    gated: bool
    hidden: int
    state_size: int
    split_step: Callable[..., Any] | None = None
    inputs: Callable[..., Any] | None = None
    path: str = ""
    gates_read_state: bool = True
    first_order_streams: Callable[..., Any] | None = None
    initial: Callable[..., Any] | None = None
    stateful: bool = False
    output_is_state: bool = True


class StepContext(NamedTuple):
    """What one train step hands to every instrument (all arrays, per seed).

    Attributes:
      step: the iteration index ``i`` (scalar int array), before the update.
      params: the model parameters before the update.
      grads: the exact gradient ``G(1)`` used by the optimizer.
      loss: the training loss of this step's batch.
      xs: this step's inputs ``(batch, T, in)``; ``ys`` its targets.
      carries: forward states, leaves ``(T, batch, ...)``.
      adjoints: ``dL/dh_t``, same structure as ``carries``.
      updates: the parameter updates the optimizer applies this step.
      opt_state: the optimizer state after the update (``optax.inject_hyperparams`` state, so
        ``hyperparams['learning_rate']`` is the rate in force).
      probe_xs, probe_ys: a fixed probe batch, the same at every step of a run.
      fns: the measured layer's :class:`LayerFns` (static).
      inputs: the measured layer's input sequence ``(batch, T, in)`` as recorded in the
        forward pass (``None``: the layer reads ``xs``).
      carry0: the layer's initial carry ``(batch, ...)`` as recorded (``None``: the cell's
        zero carry).
      lengths: the valid steps of each sequence ``(batch,)`` in the layer's processing order
        (``None``: every step is valid); steps ``t >= lengths`` are padding.
    """

    step: jax.Array
    params: Any
    grads: Any
    loss: jax.Array
    xs: jax.Array
    ys: jax.Array
    carries: Any
    adjoints: Any
    updates: Any
    opt_state: Any
    probe_xs: jax.Array
    probe_ys: jax.Array
    fns: LayerFns
    inputs: Any = None
    carry0: Any = None
    lengths: Any = None


class Instrument(NamedTuple):
    r"""An Optax-style instrument.

    Attributes:
      name: the instrument's name, the first part of its metric names
        (:func:`gatezoo.metric_schema.metric_name`); unique per layer.
      init: ``init(params) -> state`` (any pytree; ``()`` for stateless instruments).
      update: ``update(ctx, state) -> (metrics, state)``; must be jit/vmap/scan compatible,
        with no Python loop over time or lags, and return the same metric names every call.
      every: tracking schedule: the instrument runs when ``step % every == 0``.
      tier: ``"step"`` (reuses the training pass; cheap) or ``"probe"`` (its own passes on the
        probe batch; scheduled).
      needs_gates: True if it needs the gate protocol (``LayerFns.gated``).
      needs_adjoints: True if it reads ``ctx.adjoints`` (the trainer then injects offsets).
      layer: the path of the recurrent layer it measures (``""``: the model itself, e.g. a
        SequenceModel); its context is built for that layer.

    Like an optax ``GradientTransformation``, an instrument is a pair of pure functions and
    its state is threaded by the caller: at a tracked step :math:`i`,
    :math:`(m_i, s_{i+1}) = \mathrm{update}(\mathrm{ctx}_i, s_i)` from
    :math:`s_0 = \mathrm{init}(\theta_0)`. The built-in ones (:func:`gatezoo.make_instruments`)
    measure the quantities of docs/theory.md §3.3-§3.4 and §4.

    Example:
      >>> import jax.numpy as jnp
      >>> def count(ctx, state):  # a stateful instrument: how often it ran
      ...     return {"runs": state + 1}, state + 1
      >>> inst = Instrument("counter", lambda params: jnp.zeros((), jnp.int32), count, every=10)
      >>> inst.tier, inst.needs_gates, inst.every
      ('step', False, 10)
      >>> metrics, state = inst.update(None, inst.init({}))
      >>> int(metrics["runs"]), int(state)
      (1, 1)

    References:
      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.
    """

    name: str
    init: Callable[[Any], Any]
    update: Callable[[StepContext, Any], tuple[dict[str, jax.Array], Any]]
    every: int = 1
    tier: str = "step"
    needs_gates: bool = False
    needs_adjoints: bool = False
    layer: str = ""


def __getattr__(name: str):
    # the old name of LayerFns, kept for one release (it read like the whole model's functions,
    # which are NetworkFns)
    if name == "ModelFns":
        import warnings

        warnings.warn("ModelFns is deprecated: it is LayerFns (one recurrent layer's pure "
                      "functions; the whole model's are NetworkFns)", DeprecationWarning,
                      stacklevel=2)
        return LayerFns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
