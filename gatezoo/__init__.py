"""gatezoo: gated recurrent cells as data-driven preconditioners, measured inside training.

The public API is re-exported here; see README.md for the two-command quick start.
"""

from gatezoo.instruments import (
    INSTRUMENTS,
    PRESETS,
    Attached,
    FirstOrder,
    Instrument,
    LayerFns,
    NetworkFns,
    StepContext,
    StepOutput,
    attach,
    attach_fns,
    first_order_gradients,
    make_instruments,
    model_fns,
    network_fns,
    register_instrument,
)
from gatezoo.metric_schema import (
    QUANTITIES,
    Quantity,
    metric_name,
    parse_metric_name,
    quantity_of,
    series_name,
)
from gatezoo.models import *  # noqa: F403
from gatezoo.models import __all__ as _models_all
from gatezoo.tasks import TASKS, DatasetNotPrepared, Task, make_task, register_task, task_names
from gatezoo.training import (
    RunResult,
    TrainConfig,
    TrainingDiverged,
    make_optimizer,
    make_schedule,
    register_optimizer,
    train,
)

__version__ = "0.1.0"

__all__ = [
    *_models_all,
    "Task",
    "TASKS",
    "DatasetNotPrepared",
    "make_task",
    "task_names",
    "register_task",
    "Instrument",
    "StepContext",
    "LayerFns",
    "INSTRUMENTS",
    "PRESETS",
    "make_instruments",
    "register_instrument",
    "attach",
    "attach_fns",
    "Attached",
    "StepOutput",
    "NetworkFns",
    "network_fns",
    "FirstOrder",
    "first_order_gradients",
    "TrainConfig",
    "RunResult",
    "TrainingDiverged",
    "train",
    "make_optimizer",
    "make_schedule",
    "register_optimizer",
    "model_fns",
    "metric_name",
    "series_name",
    "parse_metric_name",
    "quantity_of",
    "Quantity",
    "QUANTITIES",
    "__version__",
]


def __getattr__(name: str):
    if name == "ModelFns":  # deprecated alias of LayerFns, kept for one release
        from gatezoo.instruments import protocol

        return protocol.ModelFns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
