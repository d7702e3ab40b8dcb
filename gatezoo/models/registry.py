"""Cell names, one-line descriptions and a constructor by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

from gatezoo.models.flax_adapters import make_flax_cell
from gatezoo.models.gates import ScalarGate, VectorGate
from gatezoo.models.gru import GRU
from gatezoo.models.init import InitSpec
from gatezoo.models.leaky import Elman, Leaky
from gatezoo.models.lstm import LSTM
from gatezoo.models.mingated import MinGRU, MinLSTM
from gatezoo.models.rglru import RGLRU
from gatezoo.models.s6 import S6

__all__ = ["CellEntry", "CELLS", "register_cell", "make_cell", "cell_names"]


@dataclasses.dataclass(frozen=True)
class CellEntry:
    """A registered cell: its constructor, a one-line description, and its extra options."""

    name: str
    factory: Callable[..., nnx.Module]
    description: str
    options: tuple[str, ...] = ()


CELLS: dict[str, CellEntry] = {}


def register_cell(entry: CellEntry) -> CellEntry:
    """Adds a cell to the registry (names are unique)."""
    if entry.name in CELLS:
        raise ValueError(f"a cell named {entry.name!r} is already registered")
    CELLS[entry.name] = entry
    return entry


def cell_names() -> list[str]:
    return sorted(CELLS)


def make_cell(
    name: str,
    in_features: int,
    hidden_features: int,
    *,
    rngs: nnx.Rngs,
    init: InitSpec | None = None,
    use_bias: bool = True,
    param_dtype: Any = None,
    **options: Any,
) -> nnx.Module:
    """Builds the cell registered as ``name``.

    Raises:
      ValueError: for an unknown name or an option the cell does not take.
    """
    entry = CELLS.get(name)
    if entry is None:
        raise ValueError(f"unknown cell {name!r}; choose one of: {', '.join(cell_names())}")
    unknown = set(options) - set(entry.options)
    if unknown:
        allowed = ", ".join(entry.options) or "none"
        raise ValueError(
            f"cell {name!r} takes no option {', '.join(sorted(unknown))} (options: {allowed})"
        )
    kwargs: dict[str, Any] = dict(options, rngs=rngs, use_bias=use_bias, init=init)
    if param_dtype is not None:
        kwargs["param_dtype"] = param_dtype
    return entry.factory(in_features, hidden_features, **kwargs)


for _entry in (
    CellEntry("elman", Elman, "vanilla RNN h = tanh(W h + U x + b) (alpha = 1)"),
    CellEntry(
        "leaky", Leaky, "leaky integrator with a constant time scale alpha in (0, 1]", ("alpha",)
    ),
    CellEntry("scalar", ScalarGate, "leaky cell with one learned gate shared by all neurons"),
    CellEntry("vector", VectorGate, "leaky cell with a learned gate per neuron (multi-gate)"),
    CellEntry("gru", GRU, "gated recurrent unit; update gate z weights the candidate"),
    CellEntry("lstm", LSTM, "long short-term memory on the joint (c, h) state"),
    CellEntry("mingru", MinGRU, "minGRU: gate and candidate read x only; linear in h", ("scan",)),
    CellEntry("minlstm", MinLSTM, "minLSTM: normalised forget/input gates read x only", ("scan",)),
    CellEntry("rglru", RGLRU, "RG-LRU (Griffin): a_t = sigmoid(Lambda)^(8 r_t), gates read x",
              ("scan", "c")),
    CellEntry("s6", S6, "selective diagonal SSM (Mamba S6); (hidden, d_state) state per example",
              ("scan", "d_state")),
):
    register_cell(_entry)


def _flax_factory(kind: type) -> Callable[..., nnx.Module]:
    def factory(in_features: int, hidden_features: int, **kwargs: Any) -> nnx.Module:
        return make_flax_cell(kind, in_features, hidden_features, **kwargs)

    factory.__name__ = f"flax_{kind.__name__}"
    return factory


for _name, _kind, _description in (
    ("flax-gru", nnx.GRUCell, "Flax's nnx.GRUCell, adapted; alpha = 1 - z (Flax's z retains)"),
    ("flax-lstm", nnx.LSTMCell, "Flax's nnx.LSTMCell, adapted; alpha = 1 - f"),
    ("flax-optlstm", nnx.OptimizedLSTMCell, "Flax's nnx.OptimizedLSTMCell, adapted; alpha = 1 - f"),
    ("flax-simple", nnx.SimpleCell, "Flax's nnx.SimpleCell, adapted; no gate, alpha = 1"),
):
    register_cell(CellEntry(_name, _flax_factory(_kind), _description))
