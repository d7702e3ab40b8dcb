"""The one entry shape and the one way to register, shared by the four registries.

Cells (:data:`gatezoo.models.CELLS`), tasks (:data:`gatezoo.tasks.TASKS`), optimizers
(:data:`gatezoo.training.OPTIMIZERS`) and instruments (:data:`gatezoo.instruments.INSTRUMENTS`)
each map a name to an :class:`Entry` subclass: the name, the builder (``factory``) and a one-line
description, plus the options of that kind. Each kind's ``register_*`` is called the same way,
``register_KIND(name, factory, description, *, <options>, replace=False)``, returns the stored
entry, and goes through :func:`add` here. The module sits below models and tasks (it imports
nothing of gatezoo) so that every layer can use it.

Example:
  >>> from gatezoo.registry_entry import Entry, add, descriptions
  >>> table: dict = {}
  >>> add(table, Entry("twice", lambda x: 2 * x, "doubles"), kind="doubler").description
  'doubles'
  >>> add(table, Entry("twice", lambda x: x + x, "doubles"), kind="doubler")
  Traceback (most recent call last):
  ...
  ValueError: a doubler named 'twice' is already registered; pass replace=True to replace it
  >>> descriptions(table)
  {'twice': 'doubles'}
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["Entry", "add", "descriptions", "legacy_entry", "accepts"]

E = TypeVar("E", bound="Entry")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered name: its builder ``factory`` and a one-line description."""

    name: str
    factory: Callable[..., Any]
    description: str


def add(registry: dict[str, E], entry: E, *, kind: str, replace: bool = False) -> E:
    """Stores ``entry`` in ``registry`` under its name and returns it.

    Raises:
      ValueError: an empty or non-string name, or a name already there (unless ``replace``).
      TypeError: a factory that is not callable.
    """
    if not isinstance(entry.name, str) or not entry.name:
        raise ValueError(f"a {kind} name must be a non-empty string, got {entry.name!r}")
    if not callable(entry.factory):
        raise TypeError(f"{kind} {entry.name!r}: factory must be callable, got {entry.factory!r}")
    if entry.name in registry and not replace:
        raise ValueError(
            f"a {kind} named {entry.name!r} is already registered; pass replace=True to replace it"
        )
    registry[entry.name] = entry
    return entry


def descriptions(registry: Mapping[str, Entry]) -> dict[str, str]:
    """``name -> description`` of a registry (one section of ``gatezoo list``)."""
    return {name: entry.description for name, entry in registry.items()}


def legacy_entry(function: str, first: Any, entry_type: type[E], signature: str) -> E | None:
    """``first`` when it is an entry object (the old ``register_KIND(entry)`` form, kept for a
    release with a DeprecationWarning naming ``signature``); ``None`` for the new form."""
    if not isinstance(first, entry_type):
        return None
    warnings.warn(
        f"{function}({entry_type.__name__}(...)) is deprecated; call {signature}",
        DeprecationWarning, stacklevel=3,
    )
    return first


def accepts(factory: Callable[..., Any], keyword: str) -> bool:
    """Whether ``factory`` takes the keyword argument ``keyword`` (or any, with ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume it does
        return True
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == keyword and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in params
    )
