"""Cell names, one-line descriptions and a constructor by name."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
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
from gatezoo.models.slstm import SLSTM
from gatezoo.registry_entry import Entry, add, legacy_entry

__all__ = ["CellEntry", "CELLS", "register_cell", "make_cell", "cell_names", "accepted_kwargs"]


@dataclasses.dataclass(frozen=True)
class CellEntry(Entry):
    """A registered cell: its constructor, a one-line description, and its extra options."""

    options: tuple[str, ...] = ()


CELLS: dict[str, CellEntry] = {}

_SIGNATURE = "register_cell(name, factory, description, *, options=(), replace=False)"


def register_cell(
    name: str | CellEntry,
    factory: Callable[..., nnx.Module] | None = None,
    description: str = "",
    *,
    options: Sequence[str] = (),
    replace: bool = False,
) -> CellEntry:
    """Registers the cell ``factory`` under ``name`` (for ``make_cell``, ``gz.train`` and the
    command line) and returns its entry.

    ``factory`` is called as ``factory(in_features, hidden_features, **kwargs)`` with only the
    keywords it accepts among ``rngs``, ``init``, ``use_bias``, ``param_dtype`` and the cell's
    ``options``, so a cell class with its own signature (``MyCell(d_in, d_h, *, rngs)``) is its
    own factory. The old form ``register_cell(CellEntry(...))`` still works, with a
    DeprecationWarning.

    Example:
      >>> from flax import nnx
      >>> entry = register_cell("doc-leaky", Leaky, "a leaky cell again", options=("alpha",))
      >>> make_cell("doc-leaky", 2, 3, rngs=nnx.Rngs(0), alpha=0.5).hidden_features
      3
      >>> _ = CELLS.pop("doc-leaky")  # the example leaves the registry as it was

    Raises:
      ValueError: a name already registered (unless ``replace``) or an empty one.
      TypeError: a factory that is not callable.

    References:
      None: registry plumbing, with no rule of its own. A user's cell gets the gate
      instruments by answering the gate protocol of docs/theory.md §3.4 (``split_call``,
      ``time_scale``).
    """
    entry = legacy_entry("register_cell", name, CellEntry, _SIGNATURE)
    if entry is None:
        entry = CellEntry(name, factory, description or f"user cell {name}", tuple(options))
    return add(CELLS, entry, kind="cell", replace=replace)


def cell_names() -> list[str]:
    """The names of the registered cells, sorted (for :func:`make_cell`, ``gz.train`` and the
    command line's ``--cell``).

    The built-in names are the zoo's cells (``elman``, ``leaky``, ``scalar``, ``vector``,
    ``gru``, ``lstm``, ``mingru``, ``minlstm``, ``rglru``, ``s6``, ``slstm``) and the adapters
    of Flax's own cells (``flax-*``); :func:`register_cell` adds more.

    Example:
      >>> names = cell_names()
      >>> "gru" in names, "leaky" in names, names == sorted(names)
      (True, True, True)

    References:
      None: a registry lookup; each cell's class cites its paper, and docs/theory.md §1 states
      the cells' update rules side by side.
    """
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

    ``options`` are the cell's own keywords (``alpha`` for ``leaky``, ``d_state`` for ``s6``,
    ...); ``rngs``, ``init``, ``use_bias`` and ``param_dtype`` are passed to the factories that
    take them.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> cell = make_cell("leaky", 3, 8, rngs=nnx.Rngs(0), alpha=0.5)
      >>> type(cell).__name__, cell.alpha
      ('Leaky', 0.5)
      >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
      >>> h.shape
      (2, 8)

    Raises:
      ValueError: for an unknown name or an option the cell does not take.

    References:
      None: a registry lookup; each cell's class cites its paper, and docs/theory.md §1 states
      the cells' update rules side by side.
    """
    entry = CELLS.get(name) if isinstance(name, str) else None
    if entry is None:
        hint = (
            "; register it first with gz.register_cell(name, factory, description) and pass "
            "its name"
        )
        raise ValueError(
            f"unknown cell {name!r}; choose one of: {', '.join(cell_names())}{hint}"
        )
    unknown = set(options) - set(entry.options)
    if unknown:
        allowed = ", ".join(entry.options) or "none"
        raise ValueError(
            f"cell {name!r} takes no option {', '.join(sorted(unknown))} (options: {allowed})"
        )
    offered: dict[str, Any] = dict(options, rngs=rngs, use_bias=use_bias, init=init)
    if param_dtype is not None:
        offered["param_dtype"] = param_dtype
    kwargs = accepted_kwargs(entry.factory, offered, name, skip=2)
    return entry.factory(in_features, hidden_features, **kwargs)


def accepted_kwargs(
    factory: Callable[..., Any], offered: dict[str, Any], name: str, *, skip: int = 0
) -> dict[str, Any]:
    """The part of ``offered`` that ``factory`` accepts (all of it with ``**kwargs``).

    ``skip`` leading positional parameters are filled by the caller. Raises ValueError naming
    the cell when the factory requires a parameter that nobody passes.
    """
    try:
        if isinstance(factory, type):
            # nnx.Module's metaclass __call__ hides the class's own signature: read __init__
            params = list(inspect.signature(factory.__init__).parameters.values())[1:]
        else:
            params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: offer everything
        return dict(offered)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(offered)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named = {p.name for p in params if p.kind is not p.POSITIONAL_ONLY}
    kwargs = {k: v for k, v in offered.items() if k in named}
    filled = {p.name for p in positional[:skip]} | set(kwargs)
    missing = [
        p.name for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in filled
    ]
    if len(positional) < skip and not any(p.kind is p.VAR_POSITIONAL for p in params):
        missing.insert(0, f"{skip} positional arguments (in_features, hidden_features)")
    if missing:
        raise ValueError(
            f"cell {name!r}: its factory {getattr(factory, '__name__', factory)!r} requires "
            f"{', '.join(missing)}, which gatezoo does not pass (it passes in_features, "
            f"hidden_features and, where accepted, {', '.join(sorted(offered))}); give it a "
            "default or register a factory that fills it"
        )
    return kwargs


for _name, _factory, _description, *_options in (
    ("elman", Elman, "vanilla RNN h = tanh(W h + U x + b) (alpha = 1)"),
    ("leaky", Leaky, "leaky integrator with a constant time scale alpha in (0, 1]", ("alpha",)),
    ("scalar", ScalarGate, "leaky cell with one learned gate shared by all neurons"),
    ("vector", VectorGate, "leaky cell with a learned gate per neuron (multi-gate)"),
    ("gru", GRU, "gated recurrent unit; update gate z weights the candidate"),
    ("lstm", LSTM, "long short-term memory on the joint (c, h) state"),
    ("mingru", MinGRU, "minGRU: gate and candidate read x only; linear in h", ("scan",)),
    ("minlstm", MinLSTM, "minLSTM: normalised forget/input gates read x only", ("scan",)),
    ("rglru", RGLRU, "RG-LRU (Griffin): a_t = sigmoid(Lambda)^(8 r_t), gates read x",
     ("scan", "c")),
    ("s6", S6, "selective diagonal SSM (Mamba S6); (hidden, d_state) state per example",
     ("scan", "d_state")),
    ("slstm", SLSTM, "sLSTM (xLSTM): exponential input gate, normaliser n, stabiliser m; "
     "block-diagonal recurrence", ("num_heads", "forget")),
):
    register_cell(_name, _factory, _description, options=_options[0] if _options else ())


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
    register_cell(_name, _flax_factory(_kind), _description)
