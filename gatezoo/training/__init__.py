"""Training: optimizers by name, the model's pure functions, the compiled train loop,
checkpoints (orbax), metric sinks and multi-device sharding."""

from gatezoo.training.checkpoints import CheckpointError, CheckpointMismatch, Checkpoints
from gatezoo.training.config import RunResult, TrainConfig, parse_seeds
from gatezoo.training.loop import TrainingDiverged, train
from gatezoo.training.optimizers import (
    OPTIMIZERS,
    SCHEDULES,
    OptimizerEntry,
    make_optimizer,
    make_schedule,
    optimizer_names,
    register_optimizer,
    schedule_names,
)
from gatezoo.training.run_model import build_model
from gatezoo.training.step import StepFns, TrainState, make_step_fns

__all__ = [
    "Checkpoints",
    "CheckpointError",
    "CheckpointMismatch",
    "RunResult",
    "TrainConfig",
    "parse_seeds",
    "TrainingDiverged",
    "train",
    "build_model",
    "OPTIMIZERS",
    "SCHEDULES",
    "OptimizerEntry",
    "register_optimizer",
    "make_optimizer",
    "make_schedule",
    "optimizer_names",
    "schedule_names",
    "StepFns",
    "TrainState",
    "make_step_fns",
]
