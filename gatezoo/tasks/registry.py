"""Task names, one-line descriptions and a constructor by name."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from gatezoo.tasks import copy as copy_task
from gatezoo.tasks import datasets, dynamics, memory, mqar, selective_copy, signals
from gatezoo.tasks.protocol import Task

__all__ = ["TaskEntry", "TASKS", "register_task", "make_task", "task_names"]


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """A registered task: ``factory(seq_len=None, **options) -> Task`` and a one-line description.

    ``options`` are read from the factory's keyword-only parameters.
    """

    name: str
    factory: Callable[..., Task]
    description: str

    @property
    def options(self) -> tuple[str, ...]:
        params = inspect.signature(self.factory).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


TASKS: dict[str, TaskEntry] = {}


def register_task(entry: TaskEntry) -> TaskEntry:
    """Adds a task to the registry (names are unique)."""
    if entry.name in TASKS:
        raise ValueError(f"a task named {entry.name!r} is already registered")
    TASKS[entry.name] = entry
    return entry


def task_names() -> list[str]:
    return sorted(TASKS)


def make_task(name: str, seq_len: int | None = None, **options: Any) -> Task:
    """Builds the task registered as ``name``; ``seq_len=None`` takes the task's default.

    Example:
      >>> from gatezoo.tasks import make_task
      >>> make_task("adding", channels=6).input_dim
      6

    Raises:
      ValueError: for an unknown name, an option the task does not take, or a bad value.
      DatasetNotPrepared: (a ValueError) for a dataset that is not on disk.
    """
    entry = TASKS.get(name)
    if entry is None:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(task_names())}")
    unknown = set(options) - set(entry.options)
    if unknown:
        allowed = ", ".join(entry.options) or "none"
        raise ValueError(
            f"task {name!r} takes no option {', '.join(sorted(unknown))} (options: {allowed})"
        )
    return entry.factory(seq_len, **options)


for _entry in (
    TaskEntry("adding", memory.adding, memory.adding_description),
    TaskEntry("recall", memory.recall, memory.recall_description),
    TaskEntry("sinmix", signals.sinmix, signals.sinmix_description),
    TaskEntry("short", memory.short, memory.short_description),
    TaskEntry("ar2", dynamics.ar2, dynamics.ar2_description),
    TaskEntry("movingavg", memory.movingavg, memory.movingavg_description),
    TaskEntry("delaysum", memory.delaysum, memory.delaysum_description),
    TaskEntry("narma10", dynamics.narma10, dynamics.narma10_description),
    TaskEntry("narma20", dynamics.narma20, dynamics.narma20_description),
    TaskEntry("copy", copy_task.copy, copy_task.copy_description),
    TaskEntry("selective-copy", selective_copy.selective_copy,
              selective_copy.selective_copy_description),
    TaskEntry("mqar", mqar.mqar, mqar.mqar_description),
    TaskEntry("smnist", datasets.smnist, datasets.smnist_description),
    TaskEntry("psmnist", datasets.psmnist, datasets.psmnist_description),
    TaskEntry("digits", datasets.digits, datasets.digits_description),
    TaskEntry("digits-points", datasets.digits_points, datasets.digits_points_description),
):
    register_task(_entry)
