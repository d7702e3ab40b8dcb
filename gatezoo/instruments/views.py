"""Per-step views of one measurement, and the :class:`Measure` an instrument is written as.

An instrument reads derived arrays (the gate trace ``alpha`` over all steps, the shifted states,
the flattened adjoints); :class:`StepViews` computes each one lazily, once per trace of the
instrument's update. Every registered instrument is one :class:`Measure` turned into one
:class:`~gatezoo.instruments.protocol.Instrument` (:meth:`Measure.instrument`) with its own
schedule, so each runs under its own ``lax.cond``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatezoo.instruments import steps
from gatezoo.instruments.protocol import TIER_EVERY, Instrument, StepContext

__all__ = ["StepViews", "Measure"]


class StepViews:
    """Lazily computed arrays derived from one :class:`StepContext` (cached per trace).

    Attributes (all time-major):
      cell_params: ``fns.cell_params(ctx.params)``.
      xs_t: the measured layer's inputs ``(T, batch, in)``.
      prev: the state before each step, leaves ``(T, batch, ...)`` (``h_0``: the layer's
        recorded initial carry).
      alpha: the gate trace ``(T, b, hidden)`` on the first ``b = min(batch, batch_cap)``
        examples (gated cells only): one batched gate evaluation, no scan. Statistics of the
        gate over 16 sequences of ``T`` steps are as good as over 64 and cost a quarter.
      adjoint_norms: ``||dL/dh_t||`` over the flattened state, ``(T, batch)``.
    """

    def __init__(self, ctx: StepContext, batch_cap: int = 16):
        self.ctx = ctx
        self.fns = ctx.fns
        self.batch_cap = batch_cap

    @functools.cached_property
    def cell_params(self) -> Any:
        return self.fns.cell_params(self.ctx.params)

    @functools.cached_property
    def xs_t(self) -> jax.Array:
        seq = self.ctx.xs if self.ctx.inputs is None else self.ctx.inputs
        return steps.time_major(seq)

    @functools.cached_property
    def prev(self) -> Any:
        return steps.previous_states(self.ctx.carries, self.ctx.carry0)

    @functools.cached_property
    def alpha(self) -> jax.Array:
        cap = self.batch_cap
        prev = jax.tree_util.tree_map(lambda c: c[:, :cap], self.prev)
        return steps.gate_trace(self.fns, self.cell_params, prev, self.xs_t[:, :cap])

    @functools.cached_property
    def valid(self) -> jax.Array | None:
        """``(T, b)`` bools on the examples of :attr:`alpha`, False on padded steps (steps
        ``t >= lengths``, in the layer's processing order); ``None`` without lengths."""
        if self.ctx.lengths is None:
            return None
        steps = jnp.arange(self.xs_t.shape[0])[:, None]
        return steps < self.ctx.lengths[None, : self.batch_cap]

    def end_aligned(self, x: jax.Array) -> jax.Array:
        """``x (T, b, ...)`` with each sequence moved so that its last valid step is row
        ``T - 1`` (its padding, now first, is invalid: :attr:`end_valid`); ``x`` itself without
        lengths. Lags from each sequence's own end are then rows from the end."""
        if self.ctx.lengths is None:
            return x
        steps = x.shape[0]
        lengths = self.ctx.lengths[: x.shape[1]]
        source = (jnp.arange(steps)[:, None] - (steps - lengths[None, :])) % steps
        return jnp.take_along_axis(x, source.reshape(source.shape + (1,) * (x.ndim - 2)), axis=0)

    def end_valid(self, batch: int) -> jax.Array | None:
        """``(T, batch)`` bools of :meth:`end_aligned` rows that are real steps; ``None``
        without lengths."""
        if self.ctx.lengths is None:
            return None
        steps = self.xs_t.shape[0]
        return jnp.arange(steps)[:, None] >= steps - self.ctx.lengths[None, :batch]

    @functools.cached_property
    def alpha_neuron_mean(self) -> jax.Array:
        """``E_{b,t}[alpha]`` per neuron over the valid steps, ``(hidden,)`` (the vector gate's
        preconditioner)."""
        if self.valid is None:
            return jnp.mean(self.alpha, axis=(0, 1))
        w = self.valid[..., None].astype(self.alpha.dtype)
        return jnp.sum(self.alpha * w, axis=(0, 1)) / jnp.sum(w, axis=(0, 1))

    @functools.cached_property
    def alpha_mean(self) -> jax.Array:
        """``E_{b,t,i}[alpha]`` over the valid steps."""
        if self.valid is None:
            return jnp.mean(self.alpha)
        w = jnp.broadcast_to(self.valid[..., None], self.alpha.shape)
        return jnp.sum(jnp.where(w, self.alpha, 0.0)) / jnp.sum(w)

    @functools.cached_property
    def adjoint_norms(self) -> jax.Array:
        flat = steps.flat_states(self.ctx.adjoints)
        return jnp.sqrt(jnp.sum(flat * flat, axis=-1))

    @property
    def seq_len(self) -> int:
        return self.ctx.xs.shape[1]


class Measure(NamedTuple):
    """One instrument as a measurement: ``measure(ctx, state, views) -> (metrics, state)``.

    ``metrics`` are keyed by bare quantity (``"alpha_mean"``), each declared in
    :mod:`gatezoo.metric_schema`; whoever writes them names them with
    :func:`~gatezoo.metric_schema.metric_name`.

    The instrument's record (tier, whether it needs gates or adjoints, its default cadence) is
    declared once, in its registry entry (:func:`gatezoo.register_instrument`); ``None`` here
    takes it from there. A measure may still set ``every`` (the cadence it was asked for) and
    ``needs_adjoints=True`` (when it reads the adjoints for this model only); an unregistered
    measure's ``None`` reads as ``"step"``, ``False``, and its tier's cadence.
    """

    name: str
    init: Callable[[Any], Any]
    measure: Callable[[StepContext, Any, StepViews], tuple[dict[str, jax.Array], Any]]
    every: int | None = None
    tier: str | None = None
    needs_gates: bool | None = None
    needs_adjoints: bool | None = None

    def instrument(self) -> Instrument:
        """This measure as an :class:`Instrument` named ``name`` (its metrics are the bare
        quantities), its record completed from the registry entry of the same name."""
        # imported here: the registry imports the instruments, which import this module
        from gatezoo.instruments.registry import INSTRUMENTS

        entry = INSTRUMENTS.get(self.name)
        tier = entry.tier if entry is not None else self.tier or "step"
        every = self.every if self.every is not None else (
            entry.cadence if entry is not None else TIER_EVERY[tier])
        needs_gates = entry.needs_gates if entry is not None else bool(self.needs_gates)
        needs_adjoints = bool(self.needs_adjoints) or (entry is not None and entry.needs_adjoints)

        def update(ctx, state):
            return self.measure(ctx, state, StepViews(ctx))

        return Instrument(
            name=self.name, init=self.init, update=update, every=every, tier=tier,
            needs_gates=needs_gates, needs_adjoints=needs_adjoints,
        )
