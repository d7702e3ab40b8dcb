"""Registrations made outside gatezoo, carried into worker processes.

``gatezoo compare`` trains grid cells in fresh (spawned) interpreters, which know only gatezoo's
own names. A cell or optimizer registered by a user's module (``gatezoo --import MODULE``, or an
import in the user's script) is re-registered there by importing the module that defined its
factory; names defined in ``__main__`` cannot be, and fail in the worker with the usual
"unknown ..." line.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

__all__ = ["registered_modules", "import_modules"]


def registered_modules() -> tuple[str, ...]:
    """The modules, other than gatezoo's and ``__main__``, whose factories are registered."""
    from gatezoo.models.registry import CELLS
    from gatezoo.training.optimizers import OPTIMIZERS

    factories = [e.factory for e in CELLS.values()]
    factories += [getattr(e.build, "factory", e.build) for e in OPTIMIZERS.values()]
    names = {getattr(f, "__module__", None) for f in factories}
    return tuple(sorted(
        n for n in names if n and n != "__main__" and not n.startswith("gatezoo")
        and n not in ("builtins",) and not n.startswith(("flax", "optax", "jax"))
    ))


def import_modules(names: Sequence[str]) -> None:
    """Imports ``names`` (each registers what it defines); a worker's initializer.

    A module that no longer imports is skipped: the worker then reports its names with the usual
    one-line "unknown cell/optimizer" error for the runs that need them, and the rest of the
    grid still runs.
    """
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
