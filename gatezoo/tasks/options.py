"""Checks for task options: one clear ValueError line naming the bad value and what is allowed."""

from __future__ import annotations

from typing import Any

__all__ = ["check_int", "check_choice"]


def check_int(
    task: str,
    name: str,
    value: Any,
    minimum: int,
    why: str = "",
    *,
    maximum: int | None = None,
    max_why: str = "",
) -> int:
    """Returns ``value`` as an int, or raises ValueError unless it is an integer >= ``minimum``
    (and <= ``maximum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            as_float = None
        if as_float is None or not as_float.is_integer():
            raise ValueError(f"task {task!r}: {name} must be an integer, got {value!r}")
        value = int(as_float)
    if value < minimum:
        reason = f" ({why})" if why else ""
        raise ValueError(f"task {task!r}: {name} must be >= {minimum}{reason}, got {value}")
    if maximum is not None and value > maximum:
        reason = f" ({max_why})" if max_why else ""
        raise ValueError(f"task {task!r}: {name} must be <= {maximum}{reason}, got {value}")
    return value


def check_choice(task: str, name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """Returns ``value`` if it is one of ``allowed``, else raises ValueError."""
    if value not in allowed:
        raise ValueError(f"task {task!r}: {name} must be one of {allowed}, got {value!r}")
    return value
