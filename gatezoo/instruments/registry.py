"""Instrument names, one-line descriptions, the ``economy``/``full`` presets and
:func:`make_instruments`.

Example:
  >>> from flax import nnx
  >>> import gatezoo as gz
  >>> task = gz.make_task("adding", seq_len=8)
  >>> model = gz.SequenceModel(gz.VectorGate(task.input_dim, 4, rngs=nnx.Rngs(0)),
  ...                          task.output_dim, rngs=nnx.Rngs(1))
  >>> fns, params = gz.instruments.model_fns(model, task)
  >>> sorted(i.name for i in make_instruments(["economy"], fns))
  ['analogies', 'effective_lr', 'gates', 'lags', 'optimizer', 'transport']
  >>> [i.name for i in make_instruments(["gates", "sensitivity"], fns,
  ...                                   every={"sensitivity": 100})]
  ['gates', 'sensitivity']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gatezoo.instruments.analogies import analogies, effective_lr
from gatezoo.instruments.anisotropy import anisotropy
from gatezoo.instruments.expansion import expansion
from gatezoo.instruments.gates import gates
from gatezoo.instruments.lags import lags
from gatezoo.instruments.optimizer import optimizer
from gatezoo.instruments.protocol import TIER_EVERY, TIERS, Instrument, LayerFns
from gatezoo.instruments.ratios import ratios
from gatezoo.instruments.sensitivity import sensitivity
from gatezoo.instruments.steps import check_compat
from gatezoo.instruments.transport import gate_transport
from gatezoo.instruments.truncation import truncation
from gatezoo.instruments.views import Measure
from gatezoo.instruments.window import learnability
from gatezoo.metric_schema import Quantity, declare
from gatezoo.registry_entry import Entry, accepts, add, descriptions

__all__ = [
    "InstrumentEntry",
    "INSTRUMENTS",
    "register_instrument",
    "PRESETS",
    "instrument_names",
    "make_instruments",
    "list_section",
]


@dataclasses.dataclass(frozen=True)
class InstrumentEntry(Entry):
    """A registered instrument and its record, declared here once.

    Attributes:
      factory: ``factory(fns, *, [every=...], [compat=...]) -> Measure`` (or an
        :class:`Instrument`), called for each measured layer.
      tier: ``"step"`` (reuses the training pass) or ``"probe"`` (its own passes, scheduled).
      needs_gates: it needs the gate protocol (a preset skips it for a cell without gates).
      takes_compat: ``make_instruments`` passes ``compat=``.
      needs_adjoints: it reads ``ctx.adjoints`` (the trainer then computes them).
      every: its default cadence; ``None``: its tier's (:data:`TIER_EVERY`).
      quantities: the bare quantities it emits, as declared in :mod:`gatezoo.metric_schema`
        (empty for gatezoo's own, which the schema lists itself).
    """

    tier: str = "step"
    needs_gates: bool = False
    takes_compat: bool = False
    needs_adjoints: bool = False
    every: int | None = None
    quantities: tuple[Quantity, ...] = ()

    @property
    def cadence(self) -> int:
        """The schedule it runs on unless ``every`` says otherwise."""
        return TIER_EVERY[self.tier] if self.every is None else self.every


INSTRUMENTS: dict[str, InstrumentEntry] = {}

_BUILT_IN: set[str] = set()


def register_instrument(
    name: str,
    factory: Callable[..., Measure | Instrument],
    description: str = "",
    *,
    tier: str = "step",
    needs_gates: bool = False,
    needs_adjoints: bool = False,
    every: int | None = None,
    takes_compat: bool | None = None,
    quantities: Mapping[str, str] | Sequence[Quantity | str] = (),
    replace: bool = False,
) -> InstrumentEntry:
    """Registers the instrument ``factory(fns, **kwargs) -> Measure`` under ``name`` (for
    ``make_instruments``, ``TrainConfig(instruments=...)`` and ``--instruments``) and returns
    its entry; the tier, needs and default cadence given here are the instrument's record.

    ``quantities`` (``{quantity: definition}``, or :class:`~gatezoo.metric_schema.Quantity`
    objects, or bare names) are declared in the metric schema, so the names it writes are
    checked and defined. ``takes_compat=None`` reads whether the factory takes ``compat``.

    Example:
      >>> import jax.numpy as jnp
      >>> from gatezoo.instruments.views import Measure
      >>> from gatezoo.metric_schema import quantities
      >>> def carry_rms(fns, *, every=None):
      ...     def measure(ctx, state, views):
      ...         return {"rms": jnp.sqrt(jnp.mean(views.prev ** 2))}, state
      ...     return Measure("doc-rms", lambda p: (), measure, every=every)
      >>> entry = register_instrument("doc-rms", carry_rms, "RMS of the state",
      ...                             every=10, quantities={"rms": "root mean square of h"})
      >>> entry.cadence, [q.name for q in quantities("doc-rms")]
      (10, ['rms'])
      >>> _ = INSTRUMENTS.pop("doc-rms")  # the example leaves the registry as it was

    Raises:
      ValueError: a name already registered (unless ``replace``), an unknown tier, a bad
        ``every``, or a quantity the schema refuses.

    References:
      None: registry plumbing, with no rule of its own; the built-in instruments and their
      quantities are defined in docs/theory.md §3.3-§3.4 and §4.
    """
    if tier not in TIERS:
        raise ValueError(f"instrument {name!r}: tier must be one of {TIERS}, got {tier!r}")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"instrument {name!r}: every must be a positive integer, got {every!r}")
    if name in _BUILT_IN and name in INSTRUMENTS:
        raise ValueError(f"instrument {name!r} is gatezoo's own; register yours under a new name")
    if takes_compat is None:
        takes_compat = callable(factory) and accepts(factory, "compat")
    declared = _quantities(name, quantities)
    entry = add(INSTRUMENTS, InstrumentEntry(
        name, factory, description or f"user instrument {name}", tier, needs_gates,
        takes_compat, needs_adjoints, every, declared,
    ), kind="instrument", replace=replace)
    if declared:
        declare(*declared)
    return entry


def _quantities(name: str, given: Mapping[str, str] | Sequence[Quantity | str]
                ) -> tuple[Quantity, ...]:
    if isinstance(given, Mapping):
        return tuple(Quantity(name, q, definition) for q, definition in given.items())
    return tuple(q if isinstance(q, Quantity) else Quantity(name, q, "") for q in given)


for _args, _record in (
    (("gates", gates, "gate alpha_t mean/quantiles over batch and time, time constants "
      "1/alpha"), dict(needs_gates=True)),
    (("lags", lags, "error-signal norm ||dL/dh_{T-l}|| by lag l from the training backward "
      "pass"), dict(needs_adjoints=True)),
    (("transport", gate_transport, "the theory's predictors of the error signal by lag (gate-"
      "frozen transport, adjoint-weighted retention, neuron means): power s, R^2, attribution"),
     dict(needs_gates=True, needs_adjoints=True)),
    (("optimizer", optimizer, "lr in force, momentum factor 1/(1-beta), Adam's per-neuron-row "
      "step lr/(sqrt(nu_hat)+eps)"), {}),
    (("effective_lr", effective_lr, "per-neuron per-lag effective lr mu = Lambda x Gamma "
      "(optimizer rate x gate retention)"), dict(needs_gates=True)),
    (("analogies", analogies, "leak as momentum (1 - mean alpha), gate as schedule, vector "
      "gate vs Adam preconditioner"), dict(needs_gates=True)),
    # expansion reads the adjoints only for some cells (and its self-check): its measure says
    (("expansion", expansion, "first-order gate correction G0, G1, G(1) per parameter group "
      "(one reverse scan)"), dict(needs_gates=True)),
    (("ratios", ratios, "Jacobian ratios r_j = ||B_j||/||A_j|| (median, p90, max) on a "
      "subsample"), dict(needs_gates=True, takes_compat=True)),
    (("sensitivity", sensitivity, "probe: exact S(t,k) = ||prod J||_2, normalised lag "
      "profile, fitted power and R^2"), dict(tier="probe", takes_compat=True)),
    (("anisotropy", anisotropy, "probe: AI, CE10, effective rank of Jacobian products by lag "
      "and of per-sample gradients"), dict(tier="probe", takes_compat=True)),
    (("truncation", truncation, "probe: first-order truncation error E(eps) and its log-log "
      "slope"), dict(tier="probe", needs_gates=True, takes_compat=True)),
    (("learnability", learnability, "probe: the follow-up's effective lr mu = Lambda x Gamma "
      "(first-order and exact Gamma), envelope f(l), f/f_gates, matched statistic psi"),
     dict(tier="probe", needs_gates=True)),
):
    register_instrument(*_args, **_record)
    _BUILT_IN.add(_args[0])

#: named presets; a preset silently skips the gate instruments for a cell without gates
PRESETS: dict[str, tuple[str, ...]] = {
    "economy": ("gates", "lags", "transport", "optimizer", "effective_lr", "analogies"),
    "full": tuple(INSTRUMENTS),
}

_PRESET_DESCRIPTIONS = {
    "economy": "preset: the cheap per-step instruments (" + ", ".join(PRESETS["economy"]) + ")",
    "full": "preset: every instrument (probes on their schedule)",
}


def instrument_names() -> list[str]:
    return sorted(INSTRUMENTS)


def list_section() -> dict[str, str]:
    """``name -> description`` of instruments and presets (for ``gatezoo list``)."""
    return {**descriptions(INSTRUMENTS), **_PRESET_DESCRIPTIONS}


def _resolve(names: Sequence[str] | str, gated: bool) -> list[str]:
    if isinstance(names, str):
        names = [names]
    flat = [part.strip() for n in names for part in str(n).split(",") if part.strip()]
    out: list[str] = []
    for name in flat:
        if name in PRESETS:
            picked = [n for n in PRESETS[name] if gated or not INSTRUMENTS[n].needs_gates]
        elif name in INSTRUMENTS:
            if INSTRUMENTS[name].needs_gates and not gated:
                raise ValueError(
                    f"instrument {name!r} needs a cell with gates (split_call and time_scale, "
                    "the gate protocol); this cell has none"
                )
            picked = [name]
        else:
            allowed = ", ".join([*instrument_names(), *PRESETS])
            raise ValueError(f"unknown instrument {name!r}; choose from: {allowed}")
        out.extend(n for n in picked if n not in out)
    return out


def make_instruments(
    names: Sequence[str] | str,
    fns: LayerFns | Any,
    *,
    every: dict[str, int] | None = None,
    compat: str = "exact",
    self_check: bool = False,
) -> list[Instrument]:
    """Builds the instruments ``names`` (instrument names or presets) for the model ``fns``.

    Args:
      names: e.g. ``["economy"]``, ``["gates", "expansion"]`` or ``"gates,sensitivity"``.
      fns: one layer's :class:`LayerFns`, or a :class:`~gatezoo.instruments.model_fns.NetworkFns`
        (every recurrent layer gets its own instruments, their ``layer`` its path; a preset
        skips the gate instruments of layers without gates).
      every: tracking schedule per instrument name or per tier (``"step"``, ``"probe"``);
        defaults: 1 for per-step instruments, 50 for probes.
      compat: ``"exact"`` or ``"paper-code"`` (docs/theory.md §2.3) for the Jacobian-product ones.
      self_check: the ``expansion`` instrument also reports ``self_check``, the relative gap
        between the cell's gradient and the one rebuilt from the adjoints and the step function
        (rounding-level when ``__call__`` and ``split_call`` agree); adds ``expansion`` when
        ``names`` lacks it.

    Returns:
      One :class:`Instrument` per resolved name (and layer), in order; each returns its bare
      quantities (``alpha_mean``), which :func:`gatezoo.attach` names with
      :func:`gatezoo.metric_schema.metric_name` (the layer path in the name when the model has
      several recurrent layers: ``"gates/layers.1/alpha_mean"``).

    Raises:
      ValueError: an unknown name, a gate instrument for a cell without gates, a bad ``every``
        or ``compat``.

    Example:
      >>> from flax import nnx
      >>> import gatezoo as gz
      >>> from gatezoo.instruments import network_fns
      >>> model = gz.SequenceModel(gz.ScalarGate(2, 4, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
      >>> net, _ = network_fns(model, gz.make_task("adding", seq_len=6, channels=2))
      >>> [inst.name for inst in make_instruments(["economy"], net)]
      ['gates', 'lags', 'transport', 'optimizer', 'effective_lr', 'analogies']
      >>> [(i.name, i.every) for i in make_instruments("gates,lags", net, every={"lags": 5})]
      [('gates', 1), ('lags', 5)]

    References:
      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.

      Kingma and Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`__, ICLR 2015 (the optimizer the ``optimizer`` and
      ``analogies`` instruments set beside the gates).
    """
    check_compat(compat)
    every = dict(every or {})
    known = set(INSTRUMENTS) | {"step", "probe"}
    for key, value in every.items():
        if key not in known:
            raise ValueError(f"every: unknown instrument or tier {key!r}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"every[{key!r}] must be a positive integer, got {value!r}")
    layers = getattr(fns, "layers", None)
    if layers is None:
        return _layer_instruments(names, fns, every, compat, self_check)
    out: list[Instrument] = []
    for layer_fns in layers.values():
        out.extend(_layer_instruments(names, layer_fns, every, compat, self_check))
    return out


def _layer_instruments(names, fns: LayerFns, every: dict, compat: str,
                       self_check: bool) -> list[Instrument]:
    resolved = _resolve(names, fns.gated)
    if self_check:
        if not fns.gated:
            raise ValueError(
                "self_check needs the expansion instrument, which needs a cell with gates"
            )
        resolved += [] if "expansion" in resolved else ["expansion"]
    out = []
    for name in resolved:
        entry = INSTRUMENTS[name]
        kwargs: dict = {}
        if name in every or entry.tier in every:
            kwargs["every"] = every.get(name, every.get(entry.tier))
        if entry.takes_compat:
            kwargs["compat"] = compat
        if name == "expansion" and self_check:
            kwargs["self_check"] = True
        out.append(_built(entry, fns, kwargs)._replace(layer=fns.path))
    return out


def _built(entry: InstrumentEntry, fns: LayerFns, kwargs: dict) -> Instrument:
    asked = kwargs.get("every")
    if "every" in kwargs and not accepts(entry.factory, "every"):
        del kwargs["every"]  # a user's factory need not take it: the record's cadence applies
    made = entry.factory(fns, **kwargs)
    if isinstance(made, Measure):
        inst = made.instrument()
    elif isinstance(made, Instrument):
        # a hand-written runtime record: the registry's declaration is its record
        inst = made._replace(tier=entry.tier, needs_gates=entry.needs_gates,
                             needs_adjoints=entry.needs_adjoints or made.needs_adjoints,
                             every=entry.cadence)
    else:
        raise TypeError(f"instrument {entry.name!r}: its factory returned "
                        f"{type(made).__name__}, not a Measure or an Instrument")
    return inst if asked is None else inst._replace(every=asked)
