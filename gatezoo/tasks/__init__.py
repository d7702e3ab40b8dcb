"""Benchmark tasks: synthetic generators sampled inside jit, and TFDS datasets read without
TensorFlow, behind one registry (``make_task``, ``task_names``, ``TASKS``). Variable-length
tasks return their targets as a ``Padded(target, lengths)``."""

from gatezoo.tasks.datasets import DatasetNotPrepared
from gatezoo.tasks.losses import accuracy, mean_squared_error, softmax_cross_entropy
from gatezoo.tasks.protocol import LOSS_KINDS, SPLITS, Padded, Task
from gatezoo.tasks.registry import TASKS, TaskEntry, make_task, register_task, task_names

__all__ = [
    "Task",
    "Padded",
    "TaskEntry",
    "TASKS",
    "make_task",
    "register_task",
    "task_names",
    "DatasetNotPrepared",
    "SPLITS",
    "LOSS_KINDS",
    "mean_squared_error",
    "softmax_cross_entropy",
    "accuracy",
]
