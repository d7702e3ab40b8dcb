"""Reading a run folder: ``config.json`` and ``metrics.jsonl`` into arrays by step and seed.

Only files are read, so a report can be rebuilt from a finished run, from an interrupted one
(a truncated last line of ``metrics.jsonl`` is skipped) or on another machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunMetrics", "read_metrics", "lag_series"]

_LAG = re.compile(r"^(?P<base>.+)@(?P<lag>\d+)$")


@dataclasses.dataclass
class RunMetrics:
    """One run's metrics: ``series[split][name]`` is a ``(steps, seeds)`` array (NaN where a
    value was not written), with ``steps[split]`` and ``seeds`` giving the axes."""

    config: dict[str, Any]
    seeds: list[int]
    steps: dict[str, np.ndarray]
    series: dict[str, dict[str, np.ndarray]]

    def get(self, name: str, split: str = "train") -> np.ndarray | None:
        return self.series.get(split, {}).get(name)

    def names(self, split: str = "train") -> list[str]:
        return sorted(self.series.get(split, {}))

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


def read_metrics(run_dir: str | Path, trial: int | None = None) -> RunMetrics:
    """Parses ``config.json`` and ``metrics.jsonl`` of a train run folder.

    A run with learning-rate trials tags its lines with ``trial``; ``trial=k`` keeps trial
    ``k``'s lines only (its seeds are then the series' columns).

    Raises:
      FileNotFoundError: if the folder has no ``metrics.jsonl``.
    """
    run = Path(run_dir)
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run)!r} holds no metrics.jsonl")
    config = {}
    if (run / "config.json").is_file():
        config = json.loads((run / "config.json").read_text())
    rows: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
    seeds: set[int] = set()
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption
            if not isinstance(rec, dict) or "step" not in rec:
                continue
            if trial is not None and rec.get("trial", trial) != trial:
                continue
            split = str(rec.get("split", "train"))
            step, seed = int(rec["step"]), int(rec.get("seed", 0))
            seeds.add(seed)
            vals = {k: _num(v) for k, v in rec.items()
                    if k not in ("step", "seed", "split", "trial")}
            rows.setdefault(split, {}).setdefault((step, seed), {}).update(vals)
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
    return RunMetrics(config, seed_list, steps, series)


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
