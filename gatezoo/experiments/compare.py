"""``gatezoo compare``: a grid of cells x optimizers (x schedules) on one task, seeds vmapped.

Each grid cell is an ordinary training run (:func:`gatezoo.training.train`) with instruments on,
written to its own sub-folder of the compare folder, so every part of the comparison can be
opened, resumed or re-plotted on its own:

.. code-block:: text

    runs/compare-<timestamp>/
      compare.json              the grid (what was asked) and the status of each cell
      <cell>-<optimizer>[-<schedule>]/
        config.json metrics.jsonl checkpoints/ result.json (when that run finished)
      report.html summary.json table.md figures/*.png   (gatezoo.report)

The defaults are the README's main job: the adding task at ``T = 24``, cells leaky
(``alpha = 0.2``), scalar, vector, GRU and LSTM, optimizers SGD, momentum and Adam, each tuned
over 3 learning rates (log-uniform, :data:`LR_RANGES`), three seeds, 1000 steps of batch 64,
sized for a 2-core CPU (its time: benchmarks/README.md). Every grid cell (all its trials and seeds)
is one compiled program; the chosen trial's seeds are the run that is reported.

Example:
  >>> import json, tempfile
  >>> from gatezoo.experiments.compare import CompareConfig, run_compare
  >>> config = CompareConfig(cells=("gru",), optimizers=("adam",), seq_len=6, hidden=4,
  ...                        steps=4, batch_size=4, seeds=1, trials=1, instruments=("gates",),
  ...                        eval_every=2, steps_per_call=2)
  >>> out = run_compare(config, tempfile.mkdtemp(), progress=False, log=lambda line: None)
  >>> sorted(p.name for p in out.iterdir())
  ['compare.json', 'gru-adam']
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CompareConfig", "DEFAULT_LR", "LR_RANGES", "SELECTION_RULE", "grid", "run_name",
           "run_compare", "default_workers", "select_trial"]

#: learning rate per optimizer when there is no search (``trials=1``, a non-constant schedule)
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.02, "nesterov": 0.02, "adam": 1e-2, "adamw": 1e-2,
              "rmsprop": 1e-3}

#: the declared search space per optimizer: log-uniform over ``[lo, hi]``, each a factor 30 wide
#: (the same budget in log-rate for every optimizer), placed where the adding task trains
LR_RANGES = {"sgd": (1e-2, 0.3), "momentum": (2e-3, 6e-2), "nesterov": (2e-3, 6e-2),
             "adam": (2e-3, 6e-2), "adamw": (2e-3, 6e-2), "rmsprop": (3e-4, 1e-2)}

SELECTION_RULE = (
    "per grid cell, the trial with the lowest held-out loss at the last step, averaged over "
    "seeds; a trial in which any seed diverged (non-finite loss or gradient) is not eligible; "
    "ties go to the smaller rate"
)


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """The grid and the shared settings of every run in it.

    Attributes:
      task, seq_len, task_options: the task (``seq_len=None``: the task's default).
      cells: cell names; ``cell_options``: per-cell options, e.g. ``{"leaky": {"alpha": 0.2}}``.
      optimizers: optimizer names; ``learning_rates``: per-optimizer pinned rates (no search).
      trials: learning-rate trials per grid cell (the same budget for every optimizer), spaced
        log-uniformly over ``lr_ranges[optimizer]`` (missing ones from :data:`LR_RANGES`), run
        as slots beside the seeds in one compiled program and selected by
        :data:`SELECTION_RULE`. ``trials=1``, a pinned rate or a non-constant schedule: one
        rate (pinned, else :data:`DEFAULT_LR`).
      schedules: learning-rate schedules (each multiplies the grid).
      seeds: number of seeds (``0 .. seeds - 1``), vmapped inside each run.
      steps, batch_size, hidden: the run's size.
      instruments: instrument names or presets attached to every run (gate instruments are
        skipped for cells without gates); ``every``: their schedule (names or tiers).
      target: held-out loss to reach for the time-to-target columns (``None``: half the task's
        trivial baseline).
    """

    task: str = "adding"
    seq_len: int | None = 24
    task_options: dict = dataclasses.field(default_factory=dict)
    cells: tuple[str, ...] = ("leaky", "scalar", "vector", "gru", "lstm")
    cell_options: dict = dataclasses.field(default_factory=lambda: {"leaky": {"alpha": 0.2}})
    optimizers: tuple[str, ...] = ("sgd", "momentum", "adam")
    learning_rates: dict = dataclasses.field(default_factory=dict)
    trials: int = 3
    lr_ranges: dict = dataclasses.field(default_factory=dict)
    schedules: tuple[str, ...] = ("constant",)
    seeds: int = 3
    steps: int = 1000
    batch_size: int = 64
    hidden: int = 32
    instruments: tuple[str, ...] = ("economy", "expansion", "anisotropy")
    every: dict = dataclasses.field(
        default_factory=lambda: {"step": 50, "probe": 500})
    eval_every: int = 100
    steps_per_call: int = 100
    compat: str = "exact"
    target: float | None = None

    def __post_init__(self):
        for name in ("cells", "optimizers", "schedules"):
            if not getattr(self, name):
                raise ValueError(f"compare needs at least one entry in {name}")
        for name in ("seeds", "steps", "batch_size", "hidden", "trials"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

    def learning_rate(self, optimizer: str) -> float:
        return float(self.learning_rates.get(optimizer, DEFAULT_LR.get(optimizer, 1e-3)))

    def lr_range(self, optimizer: str) -> tuple[float, float]:
        lo, hi = self.lr_ranges.get(optimizer, LR_RANGES.get(optimizer, (1e-4, 1e-1)))
        return float(lo), float(hi)

    def lr_trials(self, optimizer: str, schedule: str = "constant") -> tuple[float, ...]:
        """The rates tried for ``optimizer`` (``()``: no search, one rate)."""
        from gatezoo.training.trials import log_grid

        if self.trials <= 1 or optimizer in self.learning_rates or schedule != "constant":
            return ()
        return log_grid(*self.lr_range(optimizer), self.trials)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("cells", "optimizers", "schedules", "instruments"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompareConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown compare field(s) {', '.join(unknown)}")
        d = dict(d)
        for k in ("cells", "optimizers", "schedules", "instruments"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def run_name(cell: str, optimizer: str, schedule: str, schedules: tuple[str, ...]) -> str:
    """Sub-folder of one grid cell: ``<cell>-<optimizer>`` (plus ``-<schedule>`` if several)."""
    return f"{cell}-{optimizer}" + (f"-{schedule}" if len(schedules) > 1 else "")


def grid(config: CompareConfig) -> list[dict[str, Any]]:
    """The grid cells in run order: ``{"name", "cell", "optimizer", "schedule"}``."""
    return [
        {"name": run_name(c, o, s, config.schedules), "cell": c, "optimizer": o, "schedule": s}
        for c in config.cells for o in config.optimizers for s in config.schedules
    ]


def train_config(config: CompareConfig, entry: dict[str, Any]):
    """The :class:`gatezoo.training.TrainConfig` of one grid cell."""
    from gatezoo.training import TrainConfig

    return TrainConfig(
        cell=entry["cell"], cell_options=dict(config.cell_options.get(entry["cell"], {})),
        hidden=config.hidden, task=config.task, seq_len=config.seq_len,
        task_options=dict(config.task_options), optimizer=entry["optimizer"],
        learning_rate=config.learning_rate(entry["optimizer"]), schedule=entry["schedule"],
        lr_trials=config.lr_trials(entry["optimizer"], entry["schedule"]),
        steps=config.steps, batch_size=config.batch_size, seeds=tuple(range(config.seeds)),
        steps_per_call=config.steps_per_call, eval_every=config.eval_every,
        checkpoint_every=config.steps, keep_checkpoints=1,
        instruments=tuple(config.instruments), every=dict(config.every), compat=config.compat,
    )


def validate(config: CompareConfig) -> None:
    """Checks every name of the grid before anything runs (one clear error line)."""
    from gatezoo.models import cell_names
    from gatezoo.tasks import make_task
    from gatezoo.training.optimizers import optimizer_names, schedule_names

    for c in config.cells:
        if c not in cell_names():
            raise ValueError(f"unknown cell {c!r}; choose from: {', '.join(cell_names())}")
    for o in config.optimizers:
        if o not in optimizer_names():
            raise ValueError(
                f"unknown optimizer {o!r}; choose from: {', '.join(optimizer_names())}")
    for s in config.schedules:
        if s not in schedule_names():
            raise ValueError(f"unknown schedule {s!r}; choose from: {', '.join(schedule_names())}")
    for o, pair in {**config.lr_ranges}.items():
        if o not in config.optimizers:
            raise ValueError(f"--lr-range names optimizer {o!r}, which is not in the grid")
        try:
            lo, hi = pair
        except (TypeError, ValueError):
            raise ValueError(f"the learning-rate range of {o!r} must be LO:HI, got {pair!r}"
                             ) from None
        if not 0 < float(lo) <= float(hi):
            raise ValueError(f"the learning-rate range of {o!r} needs 0 < LO <= HI, "
                             f"got {lo}:{hi}")
    make_task(config.task, config.seq_len, **dict(config.task_options))
    for entry in grid(config):
        train_config(config, entry)


def _write_status(out: Path, config: CompareConfig, status: dict[str, Any], start: float):
    doc = {"experiment": "compare", "config": config.to_dict(), "grid": grid(config),
           "status": status, "wall_time_s": time.perf_counter() - start}
    tmp = out / "compare.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out / "compare.json")


def _previous_status(path: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The run statuses of an earlier compare into the same folder. A compare.json that cannot
    be read only loses those (each run's own folder says whether it finished), so it is said
    and started afresh rather than refused."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except OSError as err:
        problem = f"cannot be read ({err.strerror or type(err).__name__})"
    except (UnicodeDecodeError, json.JSONDecodeError):
        problem = "is not valid JSON"
    else:
        status = doc.get("status") if isinstance(doc, dict) else None
        return dict(status) if isinstance(status, dict) else {}
    log(f"{path} {problem}; the status of each run is rebuilt from its folder")
    return {}


def default_workers() -> int:
    """Two worker processes on a CPU-only machine with at least two cores, else one (an
    accelerator is not shared between processes)."""
    import os

    import jax

    return 2 if jax.default_backend() == "cpu" and (os.cpu_count() or 1) >= 2 else 1


def select_trial(eval_loss: Any, diverged: Any, n_trials: int) -> int | None:
    """The trial chosen by :data:`SELECTION_RULE` (``None`` if every trial diverged).

    Args:
      eval_loss: final held-out loss per slot, ``(n_trials * seeds,)``, trial-major.
      diverged: per slot, the first non-finite step (``-1``: none).
      n_trials: the number of trials (the rates ascending, so the first minimum is the
        smaller rate).
    """
    import numpy as np

    loss = np.asarray(eval_loss, np.float64).reshape(n_trials, -1).mean(axis=1)
    bad = (np.asarray(diverged).reshape(n_trials, -1) >= 0).any(axis=1) | ~np.isfinite(loss)
    if bad.all():
        return None
    return int(np.argmin(np.where(bad, np.inf, loss)))


def _tuning_record(config: CompareConfig, entry: dict[str, Any], tc: Any, result: Any):
    """``(chosen trial or None, the tuning record of result.json)``."""
    import numpy as np

    rates = tc.lr_trials
    if not rates:
        return None, {"searched": False, "chosen_rate": tc.learning_rate,
                      "why": "pinned with --lr" if entry["optimizer"] in config.learning_rates
                      else f"trials={config.trials}" if config.trials <= 1
                      else f"schedule {entry['schedule']} (trials need the constant schedule)"}
    n, s = len(rates), len(tc.seeds)
    chosen = select_trial(result.final_eval["loss"], result.diverged, n)
    loss = np.asarray(result.final_eval["loss"], np.float64).reshape(n, s)
    lo, hi = config.lr_range(entry["optimizer"])
    return chosen, {
        "searched": True, "space": {"kind": "log-uniform grid", "lo": lo, "hi": hi, "trials": n},
        "rule": SELECTION_RULE, "rates": list(rates),
        "eval_loss": loss.tolist(), "eval_loss_mean": loss.mean(axis=1).tolist(),
        "diverged_at": np.asarray(result.diverged).reshape(n, s).tolist(),
        "chosen": chosen, "chosen_rate": None if chosen is None else rates[chosen],
        "slot_runs": n * s,
    }


def _run_entry(config_dict: dict[str, Any], entry: dict[str, Any], out: str,
               progress: bool) -> dict[str, Any]:
    """Trains one grid cell (all its learning-rate trials and seeds, one compiled program)
    into ``out/<name>``, selects the rate and writes ``result.json`` (a top-level function, so
    worker processes can run it). The record's ``final_*`` values are the chosen trial's."""
    from gatezoo.training import train

    config = CompareConfig.from_dict(config_dict)
    run_dir = Path(out) / entry["name"]
    tc = train_config(config, entry)
    resume = (run_dir / "checkpoints").is_dir()
    result = train(tc, run_dir, resume=resume, progress=progress)
    chosen, tuning = _tuning_record(config, entry, tc, result)
    s = len(tc.seeds)
    pick = slice(0, s) if chosen is None else slice(chosen * s, (chosen + 1) * s)
    record = {
        "wall_time_s": float(result.wall_time),
        # the trial whose seeds the report shows (the first when every trial diverged)
        "trial": (chosen or 0) if tuning["searched"] else None,
        "tuning": tuning,
        "final_loss": [float(v) for v in result.final_loss[pick]],
        "final_eval": {k: [float(x) for x in v[pick]] for k, v in result.final_eval.items()},
    }
    # a temporary file and a rename: an interruption mid-write must not leave a cut
    # result.json, which a rerun would take for a finished run
    tmp = run_dir / ".result.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(run_dir / "result.json")
    return record


def _collect(fut: Any, i: int, entry: dict[str, Any], status: dict[str, Any],
             finished: Callable[..., None]) -> None:
    """Records the outcome of one worker's grid cell: done, failed, or interrupted when that
    worker alone was stopped (its run saved a checkpoint; a rerun continues it)."""
    err = fut.exception()  # the worker's exception, never this process's own interrupt
    if isinstance(err, KeyboardInterrupt):
        status[entry["name"]] = "interrupted"
    elif err is not None:
        finished(i, entry, err=err)
    else:
        finished(i, entry, fut.result())


def _rates_label(config: CompareConfig, entry: dict[str, Any]) -> str:
    rates = config.lr_trials(entry["optimizer"], entry["schedule"])
    if rates:
        return f"{len(rates)} rates {rates[0]:.3g}..{rates[-1]:.3g}"
    return f"lr {config.learning_rate(entry['optimizer']):g}"


def _result_label(record: dict[str, Any]) -> str:
    loss = record["final_eval"]["loss"]
    lr = record["tuning"]["chosen_rate"] or float("nan")
    return f"lr {lr:.3g}, held-out loss {sum(loss) / len(loss):.4g}"


def _run_in_pool(workers: int, todo: list, n_cells: int, cfg_dict: dict[str, Any], out: str,
                 status: dict[str, Any], finished: Callable[..., None],
                 log: Callable[[str], None], save: Callable[[], None]) -> None:
    """Trains the grid cells of ``todo`` in ``workers`` worker processes; on Ctrl-C or SIGTERM
    the workers are stopped (their runs saved) before the interrupt goes on."""
    import concurrent.futures as cf
    import multiprocessing as mp

    from gatezoo.experiments.interrupts import run_in_worker, stop_workers, worker_init
    from gatezoo.experiments.plugins import registered_modules

    # spawn: a fresh interpreter per worker (JAX's runtime is not fork-safe); workers
    # re-import the modules that registered user cells and optimizers
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                  initializer=worker_init, initargs=(registered_modules(),))
    futures = {}
    try:
        for i, entry in todo:
            log(f"[{i}/{n_cells}] {entry['name']}: queued")
            status[entry["name"]] = "queued"
            futures[pool.submit(run_in_worker, _run_entry, cfg_dict, entry, out,
                                False)] = (i, entry)
        for fut in cf.as_completed(futures):
            _collect(fut, *futures[fut], status, finished)
    except KeyboardInterrupt:
        # the workers must stop (and release what they hold) before this process ends;
        # what they finish meanwhile still counts
        try:
            stop_workers(pool)
        finally:
            for fut, (i, entry) in futures.items():
                if status[entry["name"]] != "queued":
                    continue  # already recorded
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    finished(i, entry, fut.result())
                else:
                    status[entry["name"]] = "interrupted"
            save()
        raise
    pool.shutdown()


def run_compare(
    config: CompareConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    workers: int = 1,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Runs the grid into ``out_dir`` and returns the folder (the report is built separately,
    by :func:`gatezoo.report.build_report`; the CLI does both, also after Ctrl-C).

    ``workers > 1`` trains that many grid cells at once in separate processes: compiling a
    run's train step is single-threaded and takes most of a small run's time, so two workers
    on two cores finish the grid sooner. A grid cell whose folder already holds a finished run
    (``result.json``) is skipped, so a compare interrupted by Ctrl-C continues where it stopped
    when run again with the same ``--out``. On Ctrl-C or SIGTERM the workers' runs save a
    checkpoint and the workers exit before the interrupt goes on; those runs are marked
    ``interrupted`` and the report shows them as not finished.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    validate(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cells = grid(config)
    status: dict[str, Any] = {}
    status = _previous_status(out / "compare.json", log)
    todo = []
    for i, entry in enumerate(cells, 1):
        if (out / entry["name"] / "result.json").exists():
            log(f"[{i}/{len(cells)}] {entry['name']}: already finished, kept")
            status[entry["name"]] = "done"
        else:
            todo.append((i, entry))
    _write_status(out, config, status, start)

    def started(i, entry):
        log(f"[{i}/{len(cells)}] {entry['name']}: {config.task}, {_rates_label(config, entry)}, "
            f"{config.steps} steps x {config.seeds} seeds")
        status[entry["name"]] = "running"
        _write_status(out, config, status, start)

    def finished(i, entry, record=None, err=None):
        if err is not None:  # a diverged run must not lose the rest of the grid
            status[entry["name"]] = f"failed: {err}"
            log(f"[{i}/{len(cells)}] {entry['name']}: failed: {err}")
        else:
            status[entry["name"]] = "done"
            log(f"[{i}/{len(cells)}] {entry['name']}: done in {record['wall_time_s']:.1f} s, "
                + _result_label(record))
        _write_status(out, config, status, start)

    cfg_dict = config.to_dict()
    if workers <= 1 or len(todo) <= 1:
        for i, entry in todo:
            started(i, entry)
            try:
                record = _run_entry(cfg_dict, entry, str(out), progress)
            except KeyboardInterrupt:
                status[entry["name"]] = "interrupted"
                _write_status(out, config, status, start)
                raise
            except Exception as err:
                finished(i, entry, err=err)
                continue
            finished(i, entry, record)
    else:
        _run_in_pool(workers, todo, len(cells), cfg_dict, str(out), status, finished, log,
                     lambda: _write_status(out, config, status, start))
    _write_status(out, config, status, start)
    return out
