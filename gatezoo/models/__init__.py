"""The cell zoo, the gate protocol, the sequence model and closed-form Jacobians."""

from gatezoo.models.base import RecurrentCell
from gatezoo.models.gates import ScalarGate, VectorGate
from gatezoo.models.gru import GRU
from gatezoo.models.init import InitSpec
from gatezoo.models.leaky import Elman, Leaky
from gatezoo.models.lstm import LSTM
from gatezoo.models.protocol import (
    CellFn,
    GatedCell,
    cell_fn,
    deform,
    flatten_carry,
    is_gated,
    unflatten_carry,
)
from gatezoo.models.registry import CELLS, CellEntry, cell_names, make_cell, register_cell
from gatezoo.models.sequence import READOUTS, SequenceModel

__all__ = [
    "RecurrentCell",
    "Elman",
    "Leaky",
    "ScalarGate",
    "VectorGate",
    "GRU",
    "LSTM",
    "InitSpec",
    "GatedCell",
    "CellFn",
    "cell_fn",
    "deform",
    "is_gated",
    "flatten_carry",
    "unflatten_carry",
    "CELLS",
    "CellEntry",
    "cell_names",
    "make_cell",
    "register_cell",
    "SequenceModel",
    "READOUTS",
]
