"""Instruments: pure, jit-compiled measurements of how gates rescale the gradient, inside the
train step (per-step tier) or on a schedule on a fixed probe batch (probe tier).

See :mod:`gatezoo.instruments.protocol` for the contract and :mod:`.registry` for the names.
"""

from gatezoo.instruments.anisotropy import gradient_spectrum, jacobian_spectra
from gatezoo.instruments.attach import Attached, StepOutput, attach, attach_fns
from gatezoo.instruments.expansion import FirstOrder, expansion_metrics, first_order_gradients
from gatezoo.instruments.model_fns import (
    NetworkFns,
    loss_function,
    model_fns,
    network_fns,
    zero_offsets,
)
from gatezoo.instruments.optimizer import (
    adam_effective_lr,
    effective_step_rows,
    learning_rate_in_force,
    momentum_beta,
    state_value,
)
from gatezoo.instruments.protocol import TIERS, Instrument, LayerFns, StepContext
from gatezoo.instruments.registry import (
    INSTRUMENTS,
    PRESETS,
    InstrumentEntry,
    instrument_names,
    list_section,
    make_instruments,
    register_instrument,
)
from gatezoo.instruments.sensitivity import Sensitivity, lag_sensitivity, sensitivity_metrics
from gatezoo.instruments.stats import power_fit, spectrum_stats
from gatezoo.instruments.transport import TransportProfiles, transport_metrics, transport_profiles
from gatezoo.instruments.truncation import truncation_curve, window_factors
from gatezoo.instruments.views import Measure, StepViews

__all__ = [
    "attach",
    "attach_fns",
    "Attached",
    "StepOutput",
    "NetworkFns",
    "network_fns",
    "model_fns",
    "loss_function",
    "zero_offsets",
    "FirstOrder",
    "Instrument",
    "LayerFns",
    "StepContext",
    "TIERS",
    "INSTRUMENTS",
    "PRESETS",
    "InstrumentEntry",
    "instrument_names",
    "list_section",
    "make_instruments",
    "register_instrument",
    "Measure",
    "StepViews",
    "first_order_gradients",
    "expansion_metrics",
    "lag_sensitivity",
    "sensitivity_metrics",
    "Sensitivity",
    "jacobian_spectra",
    "gradient_spectrum",
    "TransportProfiles",
    "transport_profiles",
    "transport_metrics",
    "truncation_curve",
    "window_factors",
    "power_fit",
    "spectrum_stats",
    "state_value",
    "effective_step_rows",
    "learning_rate_in_force",
    "momentum_beta",
    "adam_effective_lr",
]


def __getattr__(name: str):
    if name == "ModelFns":  # deprecated alias of LayerFns, kept for one release
        from gatezoo.instruments import protocol

        return protocol.ModelFns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
