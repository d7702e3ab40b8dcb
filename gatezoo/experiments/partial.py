"""Reproductions that survive interruption: one JSON document per experiment, rewritten
atomically as each (task, model) part finishes, and picked up again by a rerun into the same folder.

The document is ``{"experiment", "config", "tasks": {task: {"models": {model: ...}, ...}},
"wall_time_s"}``. A rerun with the same settings skips the parts already there; tasks and models
may be added or left out (they only select parts), any other difference is refused, so a folder
never mixes runs of different settings.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatezoo.experiments.stats import to_list

__all__ = ["resume_parts", "write_parts"]

_SELECTORS = ("tasks", "models")


def resume_parts(
    out_dir: str | Path | None, experiment: str, config: Any, log: Callable[[str], None]
) -> tuple[dict[str, Any], float]:
    """``(tasks, wall_time_s)`` of an earlier run of ``config`` in ``out_dir`` (empty if none).

    Raises:
      ValueError: the folder holds a run of ``experiment`` with other settings, or a
        ``<experiment>.json`` that is not valid JSON.
    """
    path = None if out_dir is None else Path(out_dir) / f"{experiment}.json"
    if path is None or not path.is_file():
        return {}, 0.0
    try:
        doc = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{str(path)!r} cannot be read ({err.strerror or type(err).__name__})"
                         ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("config", {}), dict):
        # the parts in it cannot be trusted: refused, in one line, rather than overwritten
        raise ValueError(f"{str(path)!r} is not a valid {experiment} document (not a JSON "
                         "object); move it away to start again, or choose another --out")
    stored = doc.get("config", {})
    mine = to_list(dataclasses.asdict(config))
    diff = sorted(k for k in mine if k not in _SELECTORS and stored.get(k) != mine[k])
    if diff:
        raise ValueError(
            f"{str(path)!r} holds a {experiment} run with other settings ({', '.join(diff)}); "
            "choose another --out, or the same settings to continue it")
    tasks = dict(doc.get("tasks", {}))
    done = [f"{t}/{m}" for t, v in tasks.items() for m in v.get("models", {})]
    if done:
        log(f"{experiment}: continuing {path.parent}: {', '.join(done)} already done")
    return tasks, float(doc.get("wall_time_s") or 0.0)


def write_parts(
    out_dir: str | Path, experiment: str, config: Any, tasks: dict[str, Any], wall: float
) -> None:
    """Writes ``<experiment>.json``; a temporary file and a rename, so an interruption never
    leaves half a document."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"experiment": experiment, "config": dataclasses.asdict(config), "tasks": tasks,
           "wall_time_s": wall}
    tmp = out / f".{experiment}.json.tmp"
    tmp.write_text(json.dumps(to_list(doc)))
    tmp.replace(out / f"{experiment}.json")
