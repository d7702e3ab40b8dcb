"""Figures and table of a ``gatezoo compare`` folder (or of a single train run).

Every number drawn is read from the runs' ``metrics.jsonl`` (means over seeds at the steps where
a metric was tracked); each :class:`~gatezoo.report.figures.ReportFigure` keeps those arrays in
``data``. What the files cannot tell is left out, never guessed: without a readable config
there is no task, so no baseline, target or steps to it; a run folder whose files cannot be
used is shown as damaged and left out of every figure and finding.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gatezoo.report import compare_plots as plots
from gatezoo.report.compare_plots import smooth, variant
from gatezoo.report.figures import ReportFigure
from gatezoo.report.page import Table
from gatezoo.report.runfiles import (
    ReportWarning,
    RunFileError,
    RunMetrics,
    read_json,
    read_metrics,
)

__all__ = ["CompareRuns", "load_compare", "compare_figures", "compare_table", "smooth",
           "NOT_FINISHED", "NO_METRICS", "DAMAGED", "ReportWarning", "baseline_of",
           "target_of", "time_to_target"]

#: what the table shows in place of a measured number for a run that did not finish
NOT_FINISHED = "not finished"
#: what the table shows for a run that started and has written no metric yet
NO_METRICS = "no metrics yet"
#: what the table shows for a run whose files cannot be used (the page's notes say why)
DAMAGED = "damaged"


class CompareRuns:
    """The runs of a compare folder: ``runs[name] = (entry, RunMetrics, result or None)`` holds
    the finished runs, the only ones that figures and findings read; ``unfinished[name] =
    (entry, RunMetrics)`` the runs that started and did not finish (interrupted, failed), shown
    in the table as "not finished"; ``damaged[name] = (entry, problem)`` the runs whose files
    cannot be used, shown as "damaged". ``grid`` is every grid cell's name, in run order.
    ``config_problem``: why the folder has no readable config (then nothing that needs the
    task is computed); ``notes``: one line for each thing the report leaves out."""

    def __init__(self, root: Path, doc: dict[str, Any], runs: dict[str, tuple],
                 unfinished: dict[str, tuple] | None = None, grid: list[str] | None = None,
                 damaged: dict[str, tuple] | None = None, config_problem: str | None = None):
        self.root, self.doc, self.runs = root, doc, runs
        self.unfinished = dict(unfinished or {})
        self.damaged = dict(damaged or {})
        self.grid = list(grid) if grid is not None else [*runs, *self.unfinished,
                                                         *self.damaged]
        self.config_problem = config_problem
        self.notes: list[str] = []

    @property
    def not_finished(self) -> list[str]:
        """Grid cells without a finished run: interrupted, failed, or never started (damaged
        ones are not counted here: whether they finished is not known)."""
        return [name for name in self.grid if name not in self.runs and name not in self.damaged]

    @property
    def cells(self) -> list[str]:
        return list(dict.fromkeys(e["cell"] for e, _, _ in self.runs.values()))

    @property
    def variants(self) -> list[str]:
        """Optimizer (and schedule) labels in grid order."""
        return list(dict.fromkeys(variant(e) for e, _, _ in self.runs.values()))


def _config_problem(cfg: Any, problem: str | None, path: Path) -> str | None:
    if problem is None and not isinstance(cfg, dict):
        return f"{str(path)!r} holds no config object"
    if problem is None and not isinstance(cfg.get("task"), str):
        return f"{str(path)!r} names no task"
    return problem


def _grid_of(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(compare.json, its grid entries)``.

    Raises:
      RunFileError: compare.json cannot be used, or holds no grid of named runs.
    """
    doc, problem = read_json(path)
    if problem:
        raise RunFileError(problem)
    grid = doc.get("grid")
    if not isinstance(grid, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"]
            for e in grid):
        raise RunFileError(f"{str(path)!r} holds no grid (a list of runs with names)")
    status = doc.get("status")
    doc = {**doc, "experiment": "compare", "status": status if isinstance(status, dict) else {}}
    return doc, [{"cell": "?", "optimizer": "?", **e} for e in grid]


def _load_run(d: Path, in_compare: bool) -> tuple[RunMetrics, dict | None]:
    """``(metrics, result.json or None)`` of one run folder that holds a ``metrics.jsonl``.

    Raises:
      RunFileError: a file of it cannot be used (in a compare, a config.json among them); a
        compare run whose result.json says it finished and that has no metric.
    """
    result, problem = read_json(d / "result.json", missing_ok=True)
    if problem:
        raise RunFileError(problem)
    if result is not None and not isinstance(result.get("wall_time_s"), (int, float)):
        raise RunFileError(f"{str(d / 'result.json')!r} has no wall_time_s number")
    if result is not None and not isinstance(result.get("tuning") or {}, dict):
        raise RunFileError(f"{str(d / 'result.json')!r} has a tuning record that is not an "
                           "object")
    cfg, problem = read_json(d / "config.json")
    if in_compare and problem:
        raise RunFileError(problem)
    trial = result.get("trial") if result is not None else None
    if result is None and (cfg or {}).get("lr_trials"):
        trial = 0  # interrupted before the selection: show the first trial
    m = read_metrics(d, trial=trial if isinstance(trial, int) else None)
    if m.empty and result is not None:
        raise RunFileError(f"{str(d / 'metrics.jsonl')!r} holds no metric, yet result.json "
                           "says the run finished")
    return m, result


def _single_run(root: Path) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    """``(doc, [entry], config problem)`` of a lone train run folder."""
    path = root / "config.json"
    cfg, problem = read_json(path)
    problem = _config_problem(cfg, problem, path)
    cfg = cfg or {}
    doc = {"experiment": "train", "config": cfg, "status": {}}
    return doc, [{"name": ".", "cell": str(cfg.get("cell", "?")),
                  "optimizer": str(cfg.get("optimizer", "?")),
                  "schedule": str(cfg.get("schedule", "constant"))}], problem


def load_compare(root: str | Path) -> CompareRuns:
    """Reads a compare folder (``compare.json`` + run sub-folders) or one train run folder.

    A compare run whose files cannot be used goes to ``damaged`` (the rest still report); what
    the report leaves out is said in ``notes`` and as a :class:`ReportWarning` each.

    Raises:
      FileNotFoundError: neither kind of folder; a lone train run with no metric yet.
      RunFileError: compare.json cannot be used; a lone train run's metrics.jsonl cannot.
    """
    root = Path(root)
    if (root / "compare.json").exists():
        doc, entries = _grid_of(root / "compare.json")
        cfg = doc.get("config")
        problem = _config_problem(cfg, None, root / "compare.json")
    elif (root / "metrics.jsonl").exists():
        doc, entries, problem = _single_run(root)
    else:
        raise FileNotFoundError(f"{str(root)!r} is neither a compare folder nor a train run")
    in_compare = doc["experiment"] == "compare"
    runs, unfinished, damaged = {}, {}, {}
    for e in entries:
        d = root / e["name"]
        if not (d / "metrics.jsonl").exists():
            continue  # not started yet (interrupted before it)
        try:
            m, result = _load_run(d, in_compare)
        except RunFileError as err:
            if not in_compare:
                raise
            damaged[e["name"]] = (e, str(err))
            continue
        if m.empty and not in_compare:
            raise FileNotFoundError(f"{str(root)!r}: {NO_METRICS} (its metrics.jsonl holds no "
                                    "line)")
        # a compare run is finished when it wrote result.json (the record of its tuning);
        # a lone train run has none, and is finished when it trained all its steps
        done = result is not None if in_compare else _trained_all(m)
        if done:
            runs[e["name"]] = (e, m, result)
        else:
            unfinished[e["name"]] = (e, m)
    cr = CompareRuns(root, doc, runs, unfinished, [e["name"] for e in entries], damaged,
                     problem)
    cr.notes = _notes(cr)
    for note in cr.notes:
        warnings.warn(note, ReportWarning, stacklevel=2)
    return cr


def _label(cr: CompareRuns, name: str) -> str:
    return str(cr.root) if name == "." else name


def _notes(cr: CompareRuns) -> list[str]:
    """One line for each thing the report leaves out, and why."""
    notes = []
    if cr.config_problem:
        notes.append(
            f"No readable config: {cr.config_problem}. The task's trivial baseline, the "
            "held-out target and the steps to it are left out (not guessed from a default "
            "task), and so is every finding that needs them"
            + ("; whether the run trained all its steps is unknown." if
               cr.doc["experiment"] == "train" else "."))
    for name, (_, problem) in cr.damaged.items():
        notes.append(f"Run {name} is damaged and left out of every figure and finding: "
                     f"{problem}.")
    for name, run in {**cr.runs, **cr.unfinished}.items():
        if run[1].skipped:
            k = run[1].skipped
            notes.append(f"Run {_label(cr, name)}: {k} line{'s' if k > 1 else ''} of "
                         "metrics.jsonl that are not metric records were skipped.")
    return notes


def _steps_done(m: RunMetrics) -> int:
    steps, _ = m.seed_mean("loss")
    return int(steps[-1]) + 1 if steps.size else 0


def _trained_all(m: RunMetrics) -> bool:
    total = m.config.get("steps")
    return not isinstance(total, (int, float)) or _steps_done(m) >= int(total)


def baseline_of(cr: CompareRuns) -> float | None:
    """The task's trivial baseline loss; None without a readable config (the task is not
    guessed) or when the task cannot be built here (e.g. a user's own)."""
    if cr.config_problem:
        return None
    try:
        from gatezoo.tasks import make_task

        cfg = cr.doc["config"]
        task = make_task(cfg["task"], cfg.get("seq_len"),
                         **dict(cfg.get("task_options") or {}))
        return float(task.baseline)
    except Exception:  # the report must still build without the task (e.g. a user's own)
        return None


def compare_figures(cr: CompareRuns) -> list[ReportFigure]:
    """The report's figures in page order (builders with nothing to draw are left out); they
    draw the finished runs only."""
    if not cr.runs:
        return []
    base = baseline_of(cr)
    figs = [plots.loss_figure(cr, base), plots.tuning_figure(cr, base), plots.lag_figure(cr),
            plots.attribution_figure(cr), plots.gate_correction_figure(cr),
            plots.analogies_figure(cr),
            plots.anisotropy_figure(cr)]
    return [f for f in figs if f is not None]


def target_of(cr: CompareRuns) -> float | None:
    """The held-out loss to reach: ``config.target``, else half the trivial baseline; None
    without a readable config."""
    if cr.config_problem:
        return None
    target = cr.doc["config"].get("target")
    base = baseline_of(cr)
    return float(target) if target is not None else (0.5 * base if base else None)


def steps_to_target(steps: np.ndarray, loss: np.ndarray, target: float, window: int = 10):
    """First step at which the moving-average loss is at or below ``target`` (None if never)."""
    sm = smooth(loss, window)
    hit = np.nonzero(sm <= target)[0]
    return int(steps[hit[0]]) if hit.size else None


def time_to_target(m: RunMetrics, target: float, trials: int) -> tuple[int | None, float | None]:
    """``(step, seconds)`` at which the held-out loss (mean over seeds) first reaches
    ``target``: AlgoPerf's time to a validation target.

    Seconds are the step count times the run's median time per compiled step (first round trip,
    which includes compilation, left out), divided by the number of learning-rate trials that
    shared those steps: the cost of this one trial's seeds.
    """
    es, el = m.seed_mean("loss", "eval")
    hit = np.nonzero(el <= target)[0]
    if not hit.size:
        return None, None
    step = int(es[hit[0]])
    sps = m.get("steps_per_sec")
    if sps is None:
        return step, None
    rates = np.nanmean(sps, axis=1)
    rates = rates[np.isfinite(rates)]
    rates = rates[rates != rates[0]] if np.unique(rates).size > 1 else rates
    per_step = float(np.median(1.0 / rates)) if rates.size else float("nan")
    return step, step * per_step / max(trials, 1)


def _wall(m: RunMetrics, result: dict | None) -> float:
    if result is not None:
        return float(result["wall_time_s"])
    sps = m.get("steps_per_sec")  # a lone train run (no result.json): time of its steps
    per_step = 1.0 / np.nanmean(sps, axis=1) if sps is not None else np.zeros(0)
    return float(np.nansum(per_step)) if per_step.size else float("nan")


def _record(name: str, e: dict, m: RunMetrics, result: dict | None, base, target) -> dict:
    steps, loss = m.seed_mean("loss")
    final = float(np.mean(loss[-10:])) if loss.size else float("nan")
    es, el = m.seed_mean("loss", "eval")
    final_eval = float(el[-1]) if el.size else float("nan")
    tuning = (result or {}).get("tuning") or {"searched": False}
    trials = len(tuning.get("rates", [])) if tuning.get("searched") else 1
    reach, seconds = time_to_target(m, target, trials) if target is not None else (None, None)
    lr = tuning.get("chosen_rate", m.config.get("learning_rate"))
    return {"run": name, "cell": e["cell"], "optimizer": variant(e),
            "steps_done": _steps_done(m),
            "learning_rate": lr, "trials": trials, "tuning": tuning,
            "final_train_loss": final, "final_eval_loss": final_eval, "baseline": base,
            "loss_over_baseline": final / base if base else None,
            "eval_over_baseline": final_eval / base if base else None,
            "target": target, "steps_to_target": reach, "seconds_to_target": seconds,
            "steps_to_target_train": steps_to_target(steps, loss, target)
            if target is not None and loss.size else None,
            "wall_time_s": _wall(m, result), "finished": True}


def _unfinished_record(cr: CompareRuns, name: str, e: dict, m: RunMetrics) -> dict:
    """The summary record of a run that did not finish: its settings and how far it got, and
    no measurement (a partial run's numbers are not comparable with the finished ones)."""
    status = str(cr.doc.get("status", {}).get(name) or NOT_FINISHED)
    if status == "done":  # compare.json says so, but result.json is missing
        status = NOT_FINISHED
    if m.empty:
        status = NO_METRICS
    trials = len(m.config.get("lr_trials") or ()) or 1
    return {"run": name, "cell": e["cell"], "optimizer": variant(e), "finished": False,
            "status": status, "steps_done": _steps_done(m), "steps": m.config.get("steps"),
            "learning_rate": None if trials > 1 else m.config.get("learning_rate"),
            "trials": trials}


def _unfinished_row(rec: dict, columns: int) -> list:
    lr = rec["learning_rate"]
    label = NO_METRICS if rec["status"] == NO_METRICS else (
        NOT_FINISHED + (" (failed)" if rec["status"].startswith("failed") else ""))
    steps = rec["steps_done"] if rec["steps"] is None else f"{rec['steps_done']} of {rec['steps']}"
    row = [rec["cell"], rec["optimizer"], "-" if lr is None else f"{lr:.3g}", rec["trials"],
           steps]
    return row + [label] * (columns - len(row))


def _damaged_record(name: str, e: dict, problem: str) -> dict:
    """The summary record of a run whose files cannot be used: what the grid asked, and why."""
    return {"run": name, "cell": e["cell"], "optimizer": variant(e), "finished": False,
            "status": DAMAGED, "problem": problem}


def compare_table(cr: CompareRuns) -> tuple[Table, list[dict[str, Any]]]:
    """The cells x optimizers table and one record per grid cell that started (for
    summary.json), in grid order; a run that did not finish reads "not finished", one with no
    metric yet "no metrics yet", one whose files cannot be used "damaged"."""
    base, target = baseline_of(cr), target_of(cr)
    goal = f"held-out loss <= {target:.3g}" if target is not None else "target"
    columns = ["cell", "optimizer", "chosen lr", "lr trials", "steps",
               "final train loss (last 10, mean over seeds)", "final held-out loss",
               "held-out loss / baseline", f"steps to {goal}",
               "s to target (one trial, compile excluded)",
               "wall time s (all trials and seeds, tuning included)"]
    rows, records = [], []
    for name in cr.grid:
        if name in cr.damaged:
            e, problem = cr.damaged[name]
            records.append(_damaged_record(name, e, problem))
            rows.append([e["cell"], variant(e)] + [DAMAGED] * (len(columns) - 2))
            continue
        if name in cr.unfinished:
            records.append(_unfinished_record(cr, name, *cr.unfinished[name]))
            rows.append(_unfinished_row(records[-1], len(columns)))
            continue
        if name not in cr.runs:
            continue  # never started
        e, m, result = cr.runs[name]
        rec = _record(name, e, m, result, base, target)
        records.append(rec)
        reach = rec["steps_to_target"]
        lr = rec["learning_rate"]
        rows.append([e["cell"], rec["optimizer"], "-" if lr is None else f"{lr:.3g}",
                     rec["trials"], rec["steps_done"], rec["final_train_loss"],
                     rec["final_eval_loss"], rec["eval_over_baseline"],
                     reach if reach is not None or target is None else "not reached",
                     rec["seconds_to_target"],
                     rec["wall_time_s"]])
    return Table(columns, rows, title="Cells x optimizers"), records
