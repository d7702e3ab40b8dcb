"""Reading a run folder: ``config.json`` and ``metrics.jsonl`` into arrays by step and seed.

Only files are read, so a report can be rebuilt from a finished run, from an interrupted one
(a truncated last line of ``metrics.jsonl`` is skipped) or on another machine. A file that is
there and cannot be used (unreadable, not JSON, not an object) is never guessed around: it is
named, in one line, by :class:`RunFileError` or by the ``problem`` that comes back with it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunMetrics", "RunFileError", "ReportWarning", "read_metrics", "read_json",
           "lag_series"]

_LAG = re.compile(r"^(?P<base>.+)@(?P<lag>\d+)$")


class RunFileError(ValueError):
    """A file of a run folder that is there and cannot be used; the message is one line that
    names the file and what is wrong with it. A ``ValueError``, so the CLI prints it as one
    line."""


class ReportWarning(UserWarning):
    """Something of a run folder that a report leaves out, and why (the page says it too)."""


def _unreadable(path: Path, err: OSError) -> str:
    return f"{str(path)!r} cannot be read ({err.strerror or type(err).__name__})"


def _read_text(path: Path) -> str:
    """The text of ``path``; not UTF-8 bytes are replaced, so they fail where they are parsed.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      RunFileError: it is not a file, or it cannot be read (permissions, I/O).
    """
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if not path.is_file():
        raise RunFileError(f"{str(path)!r} is not a file")
    try:
        # the builtin open, not Path.read_text: one place that reads, for the tests to fault
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError as err:
        raise RunFileError(_unreadable(path, err)) from None


_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number",
          bool: "a boolean", type(None): "null"}


def read_json(path: str | Path, missing_ok: bool = False
              ) -> tuple[dict[str, Any] | None, str | None]:
    """``(object, None)`` when ``path`` holds a JSON object, else ``(None, problem)``: one line
    naming the file and saying what is wrong (missing, not a file, unreadable, not valid JSON,
    a JSON value other than an object). ``missing_ok``: a missing file is ``(None, None)``."""
    path = Path(path)
    try:
        text = _read_text(path)
    except FileNotFoundError as err:
        return None, None if missing_ok else str(err)
    except RunFileError as err:
        return None, str(err)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        return None, (f"{str(path)!r} is not valid JSON ({err.msg}: line {err.lineno} "
                      f"column {err.colno})")
    if not isinstance(doc, dict):
        return None, (f"{str(path)!r} holds {_KINDS.get(type(doc), 'a JSON value')}, not a JSON "
                      "object")
    return doc, None


@dataclasses.dataclass
class RunMetrics:
    """One run's metrics: ``series[split][name]`` is a ``(steps, seeds)`` array (NaN where a
    value was not written), with ``steps[split]`` and ``seeds`` giving the axes.

    ``config`` is ``config.json`` (``{}`` when it is missing or unusable, and then
    ``config_problem`` says why, in one line naming the file); ``skipped`` counts the lines of
    ``metrics.jsonl`` that were not metric records, a last line cut by an interruption left
    out."""

    config: dict[str, Any]
    seeds: list[int]
    steps: dict[str, np.ndarray]
    series: dict[str, dict[str, np.ndarray]]
    config_problem: str | None = None
    skipped: int = 0

    def get(self, name: str, split: str = "train") -> np.ndarray | None:
        return self.series.get(split, {}).get(name)

    def names(self, split: str = "train") -> list[str]:
        return sorted(self.series.get(split, {}))

    @property
    def empty(self) -> bool:
        """No metric was written (yet)."""
        return not self.steps

    def seed_mean(self, name: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """``(steps, mean over seeds)`` restricted to steps where the metric was tracked."""
        arr = self.get(name, split)
        if arr is None:
            return np.zeros(0), np.zeros(0)
        tracked = np.isfinite(arr).any(axis=1)
        with np.errstate(all="ignore"):
            mean = np.nanmean(arr[tracked], axis=1) if tracked.any() else np.zeros(0)
        return self.steps[split][tracked], mean


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _index(v: Any) -> int | None:
    """``v`` as a step or seed number, or None if it is not a whole number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return int(v) if v == int(v) else None


def _record(line: str, trial: int | None):
    """``(split, step, seed, values)`` of one line, ``()`` for another trial's line, ``None``
    for a line that is not a metric record."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict):
        return None
    step, seed = _index(rec.get("step")), _index(rec.get("seed", 0))
    if step is None or seed is None:
        return None
    if trial is not None and rec.get("trial", trial) != trial:
        return ()
    vals = {k: _num(v) for k, v in rec.items() if k not in ("step", "seed", "split", "trial")}
    return str(rec.get("split", "train")), step, seed, vals


def _parse_lines(path: Path, trial: int | None):
    """``(rows, seeds, skipped)``: ``rows[split][(step, seed)]`` the values of each record.

    Raises:
      RunFileError: the file has lines and none of them is a metric record.
    """
    rows: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
    seeds: set[int] = set()
    lines = [t.strip() for t in _read_text(path).splitlines()]
    lines = [t for t in lines if t]
    bad = good = 0
    last_bad = False
    for line in lines:
        rec = _record(line, trial)
        last_bad = rec is None
        if rec is None:
            bad += 1
            continue
        good += 1
        if not rec:
            continue
        split, step, seed, vals = rec
        seeds.add(seed)
        rows.setdefault(split, {}).setdefault((step, seed), {}).update(vals)
    if lines and not good:
        raise RunFileError(f"{str(path)!r} holds no metric record ({len(lines)} "
                           f"line{'s' if len(lines) > 1 else ''}, none a JSON object with a "
                           "whole-number step)")
    return rows, seeds, bad - last_bad  # a cut last line is an interruption, not damage


def read_metrics(run_dir: str | Path, trial: int | None = None) -> RunMetrics:
    """Parses ``config.json`` and ``metrics.jsonl`` of a train run folder.

    A run with learning-rate trials tags its lines with ``trial``; ``trial=k`` keeps trial
    ``k``'s lines only (its seeds are then the series' columns). A missing or unusable
    ``config.json`` is no error: ``config`` is then ``{}`` and ``config_problem`` says why.

    Raises:
      FileNotFoundError: if the folder has no ``metrics.jsonl``.
      RunFileError: ``metrics.jsonl`` is not a readable file, or it holds lines and none of
        them is a metric record.
    """
    run = Path(run_dir)
    path = run / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{str(run)!r} holds no metrics.jsonl")
    rows, seeds, skipped = _parse_lines(path, trial)
    config, problem = read_json(run / "config.json")
    seed_list = sorted(seeds)
    seed_idx = {s: i for i, s in enumerate(seed_list)}
    steps, series = {}, {}
    for split, recs in rows.items():
        st = np.array(sorted({k[0] for k in recs}), dtype=np.int64)
        st_idx = {s: i for i, s in enumerate(st)}
        names = sorted({n for v in recs.values() for n in v})
        arrs = {n: np.full((len(st), len(seed_list)), np.nan) for n in names}
        for (step, seed), vals in recs.items():
            i, j = st_idx[step], seed_idx[seed]
            for n, v in vals.items():
                arrs[n][i, j] = v
        steps[split], series[split] = st, arrs
    return RunMetrics(config or {}, seed_list, steps, series, problem, skipped)


def lag_series(metrics: RunMetrics, base: str, split: str = "train"):
    """Lag-indexed metrics ``base@<lag>``: returns ``(lags, steps, (steps, lags, seeds))``
    over the steps where any of them was tracked, lags sorted."""
    found = []
    for name in metrics.names(split):
        m = _LAG.match(name)
        if m and m.group("base") == base:
            found.append((int(m.group("lag")), name))
    if not found:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 0, 0))
    found.sort()
    lags = np.array([f[0] for f in found])
    stack = np.stack([metrics.series[split][n] for _, n in found], axis=1)  # (steps, lags, seeds)
    tracked = np.isfinite(stack).any(axis=(1, 2))
    return lags, metrics.steps[split][tracked], stack[tracked]
