"""Instrument names, one-line descriptions, the ``economy``/``full`` presets and
:func:`make_instruments`.

Example:
  >>> from flax import nnx
  >>> import gatezoo as gz
  >>> task = gz.make_task("adding", seq_len=8)
  >>> model = gz.SequenceModel(gz.VectorGate(task.input_dim, 4, rngs=nnx.Rngs(0)),
  ...                          task.output_dim, rngs=nnx.Rngs(1))
  >>> fns, params = gz.model_fns(model, task)
  >>> sorted(i.name for i in make_instruments(["economy"], fns))
  ['analogies', 'effective_lr', 'gates', 'lags', 'optimizer', 'transport']
  >>> [i.name for i in make_instruments(["gates", "sensitivity"], fns,
  ...                                   every={"sensitivity": 100})]
  ['gates', 'sensitivity']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from gatezoo.instruments.analogies import analogies, effective_lr
from gatezoo.instruments.anisotropy import anisotropy
from gatezoo.instruments.expansion import expansion
from gatezoo.instruments.gates import gates
from gatezoo.instruments.lags import gate_transport, lags
from gatezoo.instruments.optimizer import optimizer
from gatezoo.instruments.protocol import Instrument, ModelFns
from gatezoo.instruments.ratios import ratios
from gatezoo.instruments.sensitivity import sensitivity
from gatezoo.instruments.steps import check_compat
from gatezoo.instruments.truncation import truncation
from gatezoo.instruments.views import Measure

__all__ = [
    "InstrumentEntry",
    "INSTRUMENTS",
    "PRESETS",
    "instrument_names",
    "make_instruments",
    "list_section",
]


@dataclasses.dataclass(frozen=True)
class InstrumentEntry:
    """A registered instrument: ``factory(fns, *, every=..., [compat=...]) -> Measure``."""

    name: str
    factory: Callable[..., Measure]
    description: str
    tier: str = "step"
    needs_gates: bool = False
    takes_compat: bool = False


INSTRUMENTS: dict[str, InstrumentEntry] = {
    e.name: e
    for e in (
        InstrumentEntry("gates", gates, "gate alpha_t mean/quantiles over batch and time, "
                        "time constants 1/alpha", needs_gates=True),
        InstrumentEntry("lags", lags, "error-signal norm ||dL/dh_{T-l}|| by lag l from the "
                        "training backward pass"),
        InstrumentEntry("transport", gate_transport, "gate-product predictors prod(alpha), "
                        "prod(1-alpha) vs the error signal by lag: power s and R^2",
                        needs_gates=True),
        InstrumentEntry("optimizer", optimizer, "lr in force, momentum factor 1/(1-beta), "
                        "Adam's per-neuron-row step lr/(sqrt(nu_hat)+eps)"),
        InstrumentEntry("effective_lr", effective_lr, "per-neuron per-lag effective lr "
                        "mu = Lambda x Gamma (optimizer rate x gate retention)",
                        needs_gates=True),
        InstrumentEntry("analogies", analogies, "leak as momentum (1 - mean alpha), gate as "
                        "schedule, vector gate vs Adam preconditioner", needs_gates=True),
        InstrumentEntry("expansion", expansion, "first-order gate correction G0, G1, G(1) per "
                        "parameter group (one reverse scan)", needs_gates=True),
        InstrumentEntry("ratios", ratios, "Jacobian ratios r_j = ||B_j||/||A_j|| (median, p90, "
                        "max) on a subsample", needs_gates=True, takes_compat=True),
        InstrumentEntry("sensitivity", sensitivity, "probe: exact S(t,k) = ||prod J||_2, "
                        "normalised lag profile, fitted power and R^2", tier="probe",
                        takes_compat=True),
        InstrumentEntry("anisotropy", anisotropy, "probe: AI, CE10, effective rank of Jacobian "
                        "products by lag and of per-sample gradients", tier="probe",
                        takes_compat=True),
        InstrumentEntry("truncation", truncation, "probe: first-order truncation error E(eps) "
                        "and its log-log slope", tier="probe", needs_gates=True,
                        takes_compat=True),
    )
}

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
    return {**{n: e.description for n, e in INSTRUMENTS.items()}, **_PRESET_DESCRIPTIONS}


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
    fns: ModelFns | Any,
    *,
    every: dict[str, int] | None = None,
    compat: str = "exact",
    self_check: bool = False,
) -> list[Instrument]:
    """Builds the instruments ``names`` (instrument names or presets) for the model ``fns``.

    Args:
      names: e.g. ``["economy"]``, ``["gates", "expansion"]`` or ``"gates,sensitivity"``.
      fns: one layer's :class:`ModelFns`, or a :class:`~gatezoo.instruments.model_fns.NetworkFns`
        (every recurrent layer gets its own instruments, their ``layer`` its path; a preset
        skips the gate instruments of layers without gates).
      every: tracking schedule per instrument name or per tier (``"step"``, ``"probe"``);
        defaults: 1 for per-step instruments, 50 for probes.
      compat: ``"exact"`` or ``"paper-code"`` (THEORY.md §2.3) for the Jacobian-product ones.
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


def _layer_instruments(names, fns: ModelFns, every: dict, compat: str,
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
        out.append(entry.factory(fns, **kwargs).instrument()._replace(layer=fns.path))
    return out
