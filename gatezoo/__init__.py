"""gatezoo: gated recurrent cells as data-driven preconditioners, measured inside training.

The top level holds what the three jobs need (train a benchmark task, attach instruments to
your own model, compare optimizers): the cells, the layer and model, the registries, ``attach``
and ``train``. The rest lives in namespaces:

* :mod:`gatezoo.models`: cell machinery (gate protocol, carries, layer taps, Flax adapters);
* :mod:`gatezoo.jacobians`: closed-form and autodiff Jacobians and their products;
* :mod:`gatezoo.tasks`, :mod:`gatezoo.training`, :mod:`gatezoo.instruments`;
* :mod:`gatezoo.metric_schema`: every metric name and what it means;
* :mod:`gatezoo.experiments`, :mod:`gatezoo.report`: the reproductions and the reports.

Names that used to live here keep working for one release, with a ``DeprecationWarning`` that
names their new place. The documentation site (``bash docs/build.sh``) has the guides, the
theory and the references.
"""

import importlib
import warnings

# the namespaces (``gz.models.CELLS``, ``gz.jacobians.transport``, ...)
from gatezoo import instruments as instruments
from gatezoo import jacobians as jacobians
from gatezoo import metric_schema as metric_schema
from gatezoo import models as models
from gatezoo import tasks as tasks
from gatezoo import training as training
from gatezoo.instruments import Instrument, attach, make_instruments, register_instrument
from gatezoo.metric_schema import metric_name
from gatezoo.models import (
    GRU,
    LSTM,
    RGLRU,
    S6,
    Elman,
    Leaky,
    MinGRU,
    MinLSTM,
    Recurrent,
    RecurrentCell,
    ScalarGate,
    SequenceModel,
    VectorGate,
    cell_names,
    make_cell,
    register_cell,
)
from gatezoo.tasks import Task, make_task, register_task, task_names
from gatezoo.training import RunResult, TrainConfig, make_optimizer, register_optimizer, train

__version__ = "0.1.0"

__all__ = [
    # cells
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
    "make_cell",
    "register_cell",
    "cell_names",
    # the layer and the model
    "Recurrent",
    "SequenceModel",
    # tasks
    "Task",
    "make_task",
    "register_task",
    "task_names",
    # instruments
    "attach",
    "Instrument",
    "make_instruments",
    "register_instrument",
    "metric_name",
    # training
    "train",
    "TrainConfig",
    "RunResult",
    "make_optimizer",
    "register_optimizer",
    "__version__",
]

_MOVED_OUT = {
    "gatezoo.jacobians": tuple(jacobians.__all__),
    "gatezoo.tasks": ("TASKS", "DatasetNotPrepared"),
    "gatezoo.instruments": ("StepContext", "LayerFns", "INSTRUMENTS", "PRESETS", "attach_fns",
                            "Attached", "StepOutput", "NetworkFns", "network_fns", "FirstOrder",
                            "first_order_gradients", "model_fns"),
    "gatezoo.training": ("TrainingDiverged", "make_schedule"),
    "gatezoo.metric_schema": ("series_name", "parse_metric_name", "quantity_of", "Quantity",
                              "QUANTITIES"),
}
#: the names of the old top level, each with its namespace now (for one release)
MOVED: dict[str, str] = {name: home for home, names in _MOVED_OUT.items() for name in names}
MOVED.update({name: "gatezoo.models" for name in models.__all__
              if name not in MOVED and name not in __all__})
#: namespaces imported on first use (they pull in matplotlib)
_LAZY = ("experiments", "report")


def __getattr__(name: str):
    if name == "ModelFns":  # deprecated alias of LayerFns, kept for one release
        from gatezoo.instruments import protocol

        return protocol.ModelFns
    if name in _LAZY:
        return importlib.import_module(f"gatezoo.{name}")
    home = MOVED.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"gatezoo.{name} moved to {home}.{name}; the top-level name goes in the next "
                  "release", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted((set(globals()) | set(_LAZY)) - set(MOVED))
