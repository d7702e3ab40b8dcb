"""Validation shared by the experiment configs (S1, S2)."""

from __future__ import annotations

from collections.abc import Iterable

from gatezoo.models.jacobians import CONVENTIONS

__all__ = ["check_experiment", "clip_checkpoints"]


def check_experiment(
    cfg, *, label: str, models: Iterable[str], tasks: Iterable[str], positive: Iterable[str]
) -> None:
    """One-line ValueErrors for unknown models/tasks/compat, non-positive sizes, bad checkpoints."""
    models, tasks = tuple(models), tuple(tasks)
    for m in cfg.models:
        if m not in models:
            raise ValueError(f"unknown {label} model {m!r}; choose from {models}")
    for t in cfg.tasks:
        if t not in tasks:
            raise ValueError(f"unknown {label} task {t!r}; choose from {tasks}")
    if cfg.compat not in CONVENTIONS:
        raise ValueError(f"unknown compat {cfg.compat!r}; choose one of {CONVENTIONS}")
    for name in positive:
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    bad = [c for c in cfg.checkpoints if not 0 <= c <= cfg.steps]
    if bad:
        raise ValueError(f"checkpoints {bad} lie outside [0, steps={cfg.steps}]")


def clip_checkpoints(checkpoints: Iterable[int], steps: int) -> tuple[int, ...]:
    """The checkpoints that fit in ``steps``, plus 0 and ``steps`` itself."""
    return tuple(sorted({c for c in checkpoints if c <= steps} | {0, steps}))
