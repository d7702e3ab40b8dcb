"""The cell zoo, the gate protocol, the sequence model and closed-form Jacobians."""

from gatezoo.models.base import RecurrentCell
from gatezoo.models.flax_adapters import (
    FlaxCellAdapter,
    FlaxGRU,
    FlaxLSTM,
    FlaxOptimizedLSTM,
    FlaxSimple,
    flax_adapter,
    make_flax_cell,
)
from gatezoo.models.gates import ScalarGate, VectorGate
from gatezoo.models.gru import GRU
from gatezoo.models.init import InitSpec
from gatezoo.models.jacobians import (
    CONVENTIONS,
    ORDERS,
    autodiff_split,
    deformed_product,
    first_order,
    frechet_l1,
    has_closed_form,
    loglog_slope,
    param_jacobians,
    product_first_order,
    register_param_jacobians,
    register_state_jacobians,
    state_jacobians,
    transport,
    truncation_error,
)
from gatezoo.models.leaky import Elman, Leaky
from gatezoo.models.linear_cell import InputGatedCell
from gatezoo.models.linear_scan import SCANS, linear_recurrence
from gatezoo.models.lstm import LSTM
from gatezoo.models.mingated import MinGRU, MinLSTM
from gatezoo.models.protocol import (
    CellFn,
    GatedCell,
    GateProtocolError,
    cell_fn,
    check_gate_protocol,
    deform,
    flatten_carry,
    gates_read_state,
    is_gated,
    param_dtype_of,
    unflatten_carry,
    zero_carry,
)
from gatezoo.models.recurrent import LayerTap, Recurrent, layer_name, recurrent_layers, tapping
from gatezoo.models.registry import CELLS, CellEntry, cell_names, make_cell, register_cell
from gatezoo.models.rglru import RGLRU
from gatezoo.models.s6 import S6
from gatezoo.models.sequence import READOUTS, SequenceModel
from gatezoo.models.slstm import SLSTM

__all__ = [
    "RecurrentCell",
    "Elman",
    "Leaky",
    "ScalarGate",
    "VectorGate",
    "GRU",
    "LSTM",
    "MinGRU",
    "MinLSTM",
    "RGLRU",
    "S6",
    "SLSTM",
    "InputGatedCell",
    "SCANS",
    "linear_recurrence",
    "InitSpec",
    "GatedCell",
    "CellFn",
    "cell_fn",
    "deform",
    "is_gated",
    "gates_read_state",
    "flatten_carry",
    "unflatten_carry",
    "zero_carry",
    "param_dtype_of",
    "check_gate_protocol",
    "GateProtocolError",
    "Recurrent",
    "LayerTap",
    "tapping",
    "recurrent_layers",
    "layer_name",
    "CELLS",
    "CellEntry",
    "cell_names",
    "make_cell",
    "register_cell",
    "SequenceModel",
    "READOUTS",
    "FlaxCellAdapter",
    "FlaxGRU",
    "FlaxLSTM",
    "FlaxOptimizedLSTM",
    "FlaxSimple",
    "flax_adapter",
    "make_flax_cell",
    "CONVENTIONS",
    "ORDERS",
    "state_jacobians",
    "param_jacobians",
    "register_state_jacobians",
    "register_param_jacobians",
    "has_closed_form",
    "autodiff_split",
    "transport",
    "deformed_product",
    "first_order",
    "product_first_order",
    "frechet_l1",
    "truncation_error",
    "loglog_slope",
]
