"""Task names, one-line descriptions and a constructor by name."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from gatezoo.registry_entry import Entry, add, legacy_entry
from gatezoo.tasks import copy as copy_task
from gatezoo.tasks import datasets, dynamics, memory, mqar, multilag, selective_copy, signals
from gatezoo.tasks.protocol import Task

__all__ = ["TaskEntry", "TASKS", "register_task", "make_task", "task_names"]


@dataclasses.dataclass(frozen=True)
class TaskEntry(Entry):
    """A registered task: ``factory(seq_len=None, **options) -> Task`` and a one-line description.

    ``options`` are read from the factory's keyword-only parameters.
    """

    @property
    def options(self) -> tuple[str, ...]:
        params = inspect.signature(self.factory).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


TASKS: dict[str, TaskEntry] = {}

_SIGNATURE = "register_task(name, factory, description, *, replace=False)"


def register_task(
    name: str | TaskEntry,
    factory: Callable[..., Task] | None = None,
    description: str = "",
    *,
    replace: bool = False,
) -> TaskEntry:
    """Registers the task ``factory(seq_len=None, **options) -> Task`` under ``name`` (for
    ``make_task``, ``gz.train`` and the command line) and returns its entry; the options are
    the factory's keyword-only parameters. The old form ``register_task(TaskEntry(...))`` still
    works, with a DeprecationWarning.

    Example:
      >>> from gatezoo.tasks import memory
      >>> def short_adding(seq_len=None, *, channels=2):
      ...     return memory.adding(seq_len or 5, channels=channels)
      >>> register_task("doc-adding", short_adding, "adding, 5 steps").options
      ('channels',)
      >>> make_task("doc-adding").input_dim
      2
      >>> _ = TASKS.pop("doc-adding")  # the example leaves the registry as it was

    Raises:
      ValueError: a name already registered (unless ``replace``) or an empty one.
      TypeError: a factory that is not callable.

    References:
      None: registry plumbing, with no rule of its own; the factory's :class:`Task` states
      its shapes and loss.
    """
    entry = legacy_entry("register_task", name, TaskEntry, _SIGNATURE)
    if entry is None:
        entry = TaskEntry(name, factory, description or f"user task {name}")
    return add(TASKS, entry, kind="task", replace=replace)


def task_names() -> list[str]:
    """The names of the registered tasks, sorted (for :func:`make_task`, ``gz.train`` and the
    command line's ``--task``); :func:`register_task` adds more.

    Example:
      >>> names = task_names()
      >>> "adding" in names, "copy" in names, names == sorted(names)
      (True, True, True)

    References:
      None: a registry lookup; each task's factory in :mod:`gatezoo.tasks` describes its
      benchmark and where it comes from.
    """
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

    References:
      None: a registry lookup; each task's factory in :mod:`gatezoo.tasks` describes its
      benchmark and where it comes from.
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


for _name, _factory, _description in (
    ("adding", memory.adding, memory.adding_description),
    ("recall", memory.recall, memory.recall_description),
    ("sinmix", signals.sinmix, signals.sinmix_description),
    ("short", memory.short, memory.short_description),
    ("ar2", dynamics.ar2, dynamics.ar2_description),
    ("movingavg", memory.movingavg, memory.movingavg_description),
    ("delaysum", memory.delaysum, memory.delaysum_description),
    ("narma10", dynamics.narma10, dynamics.narma10_description),
    ("narma20", dynamics.narma20, dynamics.narma20_description),
    ("copy", copy_task.copy, copy_task.copy_description),
    ("selective-copy", selective_copy.selective_copy, selective_copy.selective_copy_description),
    ("mqar", mqar.mqar, mqar.mqar_description),
    ("multilag", multilag.multilag, multilag.multilag_description),
    ("smnist", datasets.smnist, datasets.smnist_description),
    ("psmnist", datasets.psmnist, datasets.psmnist_description),
    ("digits", datasets.digits, datasets.digits_description),
    ("digits-points", datasets.digits_points, datasets.digits_points_description),
):
    register_task(_name, _factory, _description)
