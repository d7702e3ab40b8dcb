"""The ``gatezoo`` command line.

Each subcommand lives in a function ``_cmd_NAME(args) -> int`` registered in ``_build_parser``.
Errors a user can cause (unknown names, bad numbers) are reported as one line on stderr with a
non-zero exit, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from gatezoo.experiments import interrupts
from gatezoo.registry_entry import descriptions

__all__ = ["main", "UsageError"]


class UsageError(ValueError):
    """A mistake in the command line; printed as one line, exit status 2."""


def _list_cells() -> dict[str, str]:
    from gatezoo.models.registry import CELLS

    return descriptions(CELLS)


def _list_tasks() -> dict[str, str]:
    from gatezoo.tasks import TASKS

    return descriptions(TASKS)


def _list_optimizers() -> dict[str, str]:
    from gatezoo.training.optimizers import OPTIMIZERS

    return descriptions(OPTIMIZERS)


def _list_schedules() -> dict[str, str]:
    from gatezoo.training.optimizers import SCHEDULES

    return dict(SCHEDULES)


def _list_instruments() -> dict[str, str]:
    from gatezoo.instruments import list_section

    return list_section()


def _cmd_list(args: argparse.Namespace) -> int:
    sections = (("cells", _list_cells), ("tasks", _list_tasks),
                ("optimizers", _list_optimizers), ("schedules", _list_schedules),
                ("instruments", _list_instruments))
    for title, loader in sections:
        if args.what not in (None, title):
            continue
        entries = loader()
        print(f"{title}:")
        width = max((len(n) for n in entries), default=0)
        for name in sorted(entries):
            print(f"  {name.ljust(width)}  {entries[name]}")
    return 0


# -- gatezoo train ------------------------------------------------------------------------------

# (flag, TrainConfig field, type, help); every default is None so that a --config file (or the
# stored config of a resumed run) is the base and only the flags given override it.
_TRAIN_FLAGS = [
    ("--cell", "cell", str, "cell name (gatezoo list cells); default gru"),
    ("--hidden", "hidden", int, "hidden size d_h; default 64"),
    ("--init", "init", str, "weight init: flax, torch or normal; default flax"),
    ("--init-std", "init_std", float, "std of --init normal; default 0.2"),
    ("--gate-bias", "gate_bias", None, "time-scale gate bias (float) or 'chrono'; default 0"),
    ("--task", "task", str, "task name (gatezoo list tasks); default adding"),
    ("--seq-len", "seq_len", int, "sequence length T; default: the task's"),
    ("--optimizer", "optimizer", str,
     "sgd, momentum, nesterov, adam, adamw, rmsprop or a name added by gz.register_optimizer "
     "(see --import); default adam"),
    ("--lr", "learning_rate", float, "peak learning rate; default 1e-3"),
    ("--schedule", "schedule", str,
     "constant, cosine, warmup-cosine, exponential, step; default constant"),
    ("--momentum", "momentum", float, "momentum beta of momentum/nesterov; default 0.9"),
    ("--clip", "clip", float, "clip gradients to this global norm; default off"),
    ("--warmup", "warmup", int, "warmup steps of warmup-cosine; default 0"),
    ("--steps", "steps", int, "number of updates; default 1000"),
    ("--batch-size", "batch_size", int,
     "batch size per seed (divided over devices); default 64"),
    ("--seeds", "seeds", str, "a count ('4' = seeds 0..3) or a list ('0,5,7'), run side by side "
     "with vmap; default 1"),
    ("--dtype", "dtype", str, "float32, float64 (jax_enable_x64 on for the run) or bfloat16; "
     "default float32"),
    ("--steps-per-call", "steps_per_call", int,
     "K, compiled steps per host round trip; default 50"),
    ("--eval-every", "eval_every", int, "evaluate on held-out batches every N steps; default 200"),
    ("--eval-batches", "eval_batches", int, "held-out batches per evaluation; default 4"),
    ("--checkpoint-every", "checkpoint_every", int, "save a checkpoint every N steps; default 500"),
    ("--keep", "keep_checkpoints", int, "keep the last k checkpoints; default 3"),
    ("--devices", "devices", int, "split the --shard axis over exactly N devices (it must "
     "divide); default: all devices when it divides, else one"),
    ("--shard", "shard", str, "what the devices split: batch (default; each batch, gradients "
     "all-reduced) or seeds (the seeds x lr trials, whose number must divide over them)"),
    ("--seed-batch", "seed_batch", int, "vmap seeds in groups of k, groups one after another "
     "inside the compiled step; default: 1 on CPU (faster there), all seeds in one vmap "
     "on GPU/TPU"),
    ("--instruments", "instruments", str,
     "instruments to attach, comma-separated names or tiers (economy, full)"),
    ("--probe-batch", "probe_batch_size", int, "probe batch size of probe-tier instruments; "
     "default 16"),
    ("--compat", "compat", str, "exact (default) or paper-code conventions"),
]


def _parse_value(text: str):
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_pairs(items: Sequence[str], flag: str) -> dict:
    out = {}
    for item in items:
        for part in item.split(","):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise UsageError(f"{flag} takes NAME=VALUE, got {part!r}")
            out[key.strip()] = _parse_value(value.strip())
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from gatezoo.training.config import TrainConfig

    out = Path(args.out) if args.out else None
    if args.resume and out is None:
        raise UsageError("--resume needs --out RUN_DIR (the folder of the run to continue)")
    if args.config:
        base = TrainConfig.from_json(args.config)
    elif args.resume and (out / "config.json").is_file():
        base = TrainConfig.from_json(out / "config.json")
    else:
        base = TrainConfig()
    changes: dict = {}
    for _, field, _, _ in _TRAIN_FLAGS:
        value = getattr(args, field)
        if value is not None:
            changes[field] = value
    if "gate_bias" in changes and changes["gate_bias"] != "chrono":
        try:
            changes["gate_bias"] = float(changes["gate_bias"])
        except ValueError:
            raise UsageError(
                f"--gate-bias must be a number or 'chrono', got {changes['gate_bias']!r}"
            ) from None
    if args.cell_option:
        changes["cell_options"] = {**base.cell_options, **_parse_pairs(args.cell_option,
                                                                       "--cell-option")}
    if args.task_option:
        changes["task_options"] = {**base.task_options, **_parse_pairs(args.task_option,
                                                                       "--task-option")}
    if args.every:
        changes["every"] = {**base.every, **_parse_pairs(args.every, "--every")}
    if args.fixed_batch:
        changes["fixed_batch"] = True
    if args.self_check:
        changes["self_check"] = True
    config = TrainConfig.from_dict({**base.to_dict(), **changes})
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{config.cell}-{config.task}-{stamp}"

    from gatezoo.training.loop import TrainingDiverged, train

    try:
        result = train(config, out, resume=args.resume, progress=not args.quiet)
    except TrainingDiverged as err:
        print(f"gatezoo train: {err}", file=sys.stderr)
        return 1
    ev = result.final_eval
    if "loss" in ev:
        import numpy as np

        from gatezoo.training.loop import load_task

        losses = np.asarray(ev["loss"])
        baseline = getattr(load_task(config), "baseline", None)
        text = f"eval loss {losses.mean():.4g} (seeds: {', '.join(f'{v:.4g}' for v in losses)})"
        if baseline is not None:
            text += f"; baseline {baseline:.4g}"
        print(text)
    print(f"run folder: {out}")
    return 0


class _Renamed(argparse.Action):
    """A renamed flag, still accepted: stores its value and notes the new name on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"gatezoo: note: {option_string} is now {self.new}; the old spelling will be "
              "removed", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_train_parser(sub) -> None:
    from gatezoo.metric_schema import metric_name

    p = sub.add_parser(
        "train",
        help="train a cell on a task (seeds side by side), with checkpoints and metrics",
        description=(
            "Train a cell on a benchmark task with an Optax optimizer. Seeds run side by side "
            "(jax.vmap), K steps per host round trip run as one compiled lax.scan, the batch is "
            "sharded over devices. The run folder gets config.json, metrics.jsonl (one line per "
            "step and seed), checkpoints/ (orbax) and events/ (TensorBoard, with the "
            "tensorboard extra). Every flag has a working default; flags override --config."
        ),
        epilog=(
            "examples:\n"
            "  gatezoo train --cell gru --task adding --seq-len 50 --lr 1e-2 --steps 400 "
            "--seeds 4\n"
            "  gatezoo train --config run.json --out runs/mine\n"
            "  gatezoo train --out runs/mine --resume --steps 2000\n"
            "  gatezoo train --dtype float64 ...   (the run inside jax.enable_x64)\n"
            "  gatezoo train --seeds 32 --seed-batch 1   (on CPUs: see benchmarks/README.md)\n"
            "several hosts: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID\n"
            "(or GATEZOO_DISTRIBUTED=auto under SLURM/MPI/Cloud TPU) and run the same command\n"
            "on every host; process 0 writes the run folder."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="JSON file of TrainConfig fields")
    p.add_argument("--out", metavar="DIR",
                   help="run folder; default runs/<cell>-<task>-<timestamp>")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint")
    for flag, field, kind, help_text in _TRAIN_FLAGS:
        p.add_argument(flag, dest=field, type=kind, default=None, help=help_text)
    p.add_argument("--batch", dest="batch_size", type=int, action=_Renamed, new="--batch-size",
                   help="old spelling of --batch-size (deprecated)")
    p.add_argument("--cell-option", action="append", metavar="K=V",
                   help="cell option, e.g. alpha=0.8 for leaky (repeatable)")
    p.add_argument("--task-option", action="append", metavar="K=V",
                   help="task option, e.g. channels=6 for adding (repeatable)")
    p.add_argument("--every", action="append", metavar="NAME=N",
                   help="track instrument NAME every N steps (repeatable or comma-separated)")
    p.add_argument("--fixed-batch", action="store_true",
                   help="the same training batch at every step (the S2 experiment's quirk)")
    p.add_argument("--self-check", action="store_true",
                   help="check every step that the cell's __call__ and its gate path agree "
                   f"({metric_name('expansion', None, 'self_check')}, rounding-level when they "
                   "do; adds expansion)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_cmd_train)


# -- compare, reproduce, report ----------------------------------------------------------------


def _csv(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _timestamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def _cmd_compare(args: argparse.Namespace) -> int:
    import dataclasses

    from gatezoo.experiments.compare import CompareConfig, run_compare

    base = CompareConfig()
    changes: dict = {}
    for flag, field in (("cells", "cells"), ("optimizers", "optimizers"),
                        ("schedules", "schedules"), ("instruments", "instruments")):
        value = _csv(getattr(args, flag))
        if value is not None:
            changes[field] = value
    for field in ("task", "seq_len", "seeds", "steps", "batch_size", "hidden", "target",
                  "eval_every", "compat", "trials"):
        value = getattr(args, field)
        if value is not None:
            changes[field] = value
    if args.lr:
        changes["learning_rates"] = {k: float(v) for k, v in _parse_pairs(args.lr, "--lr").items()}
    if args.lr_range:
        changes["lr_ranges"] = {k: _parse_range(v) for k, v in
                                _parse_pairs(args.lr_range, "--lr-range").items()}
    if args.every:
        changes["every"] = {k: int(v) for k, v in _parse_pairs(args.every, "--every").items()}
    if args.task_option:
        changes["task_options"] = _parse_pairs(args.task_option, "--task-option")
    config = dataclasses.replace(base, **changes)
    out = args.out or f"runs/compare-{_timestamp()}"
    from gatezoo.experiments.compare import default_workers

    workers = args.workers if args.workers is not None else default_workers()
    try:
        run_compare(config, out, progress=not args.quiet, workers=workers)
    except KeyboardInterrupt:
        print(f"gatezoo compare: interrupted; building the report of what finished in {out}",
              file=sys.stderr)
        _report_quietly(out)
        raise
    from gatezoo.report import build_report

    page = build_report(out)
    print(f"report: {page}")
    return 0


def _parse_range(text: object) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"--lr-range needs OPT=LO:HI, got {text!r}") from None
    return lo, hi


def _report_quietly(out) -> None:
    from gatezoo.report import build_report

    try:
        page = build_report(out)
        print(f"report: {page}", file=sys.stderr)
    except (FileNotFoundError, ValueError) as err:
        print(f"gatezoo: no report: {err}", file=sys.stderr)


def _reproduce_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes FIELD=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _typed_like(default, value: str, field: str):
    """``value`` (text) converted to the type of the config field's ``default``."""
    try:
        if isinstance(default, tuple):
            kind = type(default[0]) if default else str
            return tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        if isinstance(default, bool):
            return value.lower() in ("1", "true", "yes")
        return type(default)(value)
    except ValueError:
        raise UsageError(f"--set {field}={value!r}: not a value of this field") from None


def _experiment_config(cls, args, overrides: dict[str, str], used: set, **fixed):
    """``cls`` built from the CLI's flags, then ``--set`` overrides of its own fields."""
    import dataclasses

    tasks = _csv(args.tasks)
    kw = dict(fixed, compat=args.compat)
    if args.seeds is not None:  # 0 is a value to validate, not "use the default"
        kw["seeds"] = args.seeds
    names = {f.name for f in dataclasses.fields(cls)}
    if tasks and "tasks" in names:
        kw["tasks"] = tasks
    if args.models and "models" in names:
        kw["models"] = _csv(args.models)
    defaults = cls(**{k: v for k, v in kw.items() if k in names})
    for key, value in overrides.items():
        if key in names:
            kw[key] = _typed_like(getattr(defaults, key), value, key)
            used.add(key)
    return cls(**{k: v for k, v in kw.items() if k in names})


def _run_parts(which: str, args, out: str, log) -> None:
    from gatezoo.experiments.appendix import AppendixConfig
    from gatezoo.experiments.s1 import S1Config, run_s1
    from gatezoo.experiments.s2 import S2Config, run_s2

    overrides, used = _reproduce_overrides(args.set), set()
    parts = []
    if which in ("appendix", "all"):
        parts.append((_appendix_part(log), _experiment_config(AppendixConfig, args, overrides,
                                                               used)))
    if which in ("s1", "all"):
        cfg = _experiment_config(S1Config, args, overrides, used)
        steps = args.steps if args.steps is not None else (800 if which == "all" else 600)
        parts.append((run_s1, cfg.with_steps(steps)))
    if which in ("s2", "all"):
        cfg = _experiment_config(S2Config, args, overrides, used)
        steps = args.steps if args.steps is not None else (1200 if which == "all" else 800)
        parts.append((run_s2, cfg.with_steps(steps)))
    # every setting is checked before the first part runs
    unknown = sorted(set(overrides) - used)
    if unknown:
        raise UsageError(f"--set: no field {', '.join(unknown)} in the {which} settings")
    for run, cfg in parts:
        run(cfg, out, log=log)


def _appendix_part(log):
    """``run_appendix`` with one progress line per gate."""
    from gatezoo.experiments.appendix import run_appendix

    def run(cfg, out, log=log):
        summary = run_appendix(cfg, out)
        for gate, g in summary["gates"].items():
            a = g["aggregate"]
            log(f"appendix {gate}: small-eps slope {a['slope_mean']:.4f} +/- "
                f"{a['slope_std']:.4f} ({a['n_kept']} seeds kept), median r_j "
                f"{a['r_median_of_medians']:.3g}, {g['wall_time_s']:.1f} s")

    return run


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import time

    import jax

    from gatezoo.report import build_report

    which = args.experiment
    out = args.out or f"runs/reproduce-{which}-{_timestamp()}"

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    # float64 for the expansion check and the SVDs (training stays float32 by explicit dtypes);
    # a context, so that a caller's (or a test's) global setting is left as it was
    try:
        with jax.enable_x64(True):
            _run_parts(which, args, out, log)
    except KeyboardInterrupt:
        print(f"gatezoo reproduce: interrupted; report of what finished in {out}",
              file=sys.stderr)
        _report_quietly(out)
        raise
    page = build_report(out)
    print(f"reproduce {which}: {time.perf_counter() - start:.1f} s; report: {page}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from gatezoo.report import build_report

    page = build_report(args.run_dir, args.out)
    print(f"report: {page}")
    return 0


def _add_experiment_parsers(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="train cells x optimizers on one task with instruments; write a report",
        description="Train a grid of cells x optimizers (x schedules) x seeds on one task "
        "(seeds vmapped), with instruments on, and write report.html, summary.json, table.md "
        "and figures/*.png. With no arguments: the adding task (T=24), cells leaky (alpha 0.2), "
        "scalar, vector, gru, lstm; optimizers sgd, momentum, adam, each tuned over 3 "
        "learning rates; 3 seeds; 1000 steps of batch 64.",
    )
    p.add_argument("--task", help="task name (default adding)")
    p.add_argument("--seq-len", type=int, help="sequence length T (default 24)")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE", default=[],
                   help="task option (repeatable)")
    p.add_argument("--cells", help="comma-separated cell names")
    p.add_argument("--optimizers", help="comma-separated optimizer names")
    p.add_argument("--schedules", help="comma-separated schedules (default constant)")
    p.add_argument("--lr", action="append", metavar="OPT=RATE", default=[],
                   help="pin the learning rate of an optimizer, no search, e.g. --lr sgd=0.05 "
                   "(repeatable)")
    p.add_argument("--trials", type=int, help="learning-rate trials per cell x optimizer, "
                   "log-uniform over the optimizer's range, trained beside the seeds in one "
                   "compiled program; the best held-out loss wins (default 3; 1: no search)")
    p.add_argument("--lr-range", action="append", metavar="OPT=LO:HI", default=[],
                   help="learning-rate search range of an optimizer, e.g. --lr-range "
                   "sgd=0.01:1 (repeatable)")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    p.add_argument("--steps", type=int, help="training steps per run (default 1000)")
    p.add_argument("--batch-size", type=int, help="batch size (default 64)")
    p.add_argument("--hidden", type=int, help="hidden size (default 32)")
    p.add_argument("--instruments", help="comma-separated instruments/presets "
                   "(default economy,expansion,anisotropy)")
    p.add_argument("--every", action="append", metavar="NAME=N", default=[],
                   help="instrument or tier schedule (default step=50,probe=500; repeatable)")
    p.add_argument("--eval-every", type=int, help="held-out evaluation period (default 100)")
    p.add_argument("--target", type=float, help="held-out loss for the time-to-target "
                   "columns (default half the trivial baseline)")
    p.add_argument("--compat", choices=("exact", "paper-code"), help="Jacobian conventions")
    p.add_argument("--workers", type=int, help="grid cells trained at once in separate "
                   "processes (default 2 on a CPU-only machine with 2+ cores, else 1)")
    p.add_argument("--out", help="output folder (default runs/compare-<timestamp>); an "
                   "existing compare folder continues where it stopped")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "reproduce",
        help="reproduce the paper's experiments (appendix, s1, s2, all)",
        description="Run the experiments of theory §6 with the paper's settings: appendix "
        "(first-order expansion check, 20 seeds), s1 (effective-LR profiles, SGD, 600 steps; "
        "800 via 'all'), s2 (anisotropy, 800 iterations; 1200 via 'all'). Writes JSON "
        "summaries, figures and report.html.",
    )
    p.add_argument("experiment", choices=("appendix", "s1", "s2", "all"))
    p.add_argument("--seeds", type=int, help="number of seeds (default 20)")
    p.add_argument("--tasks", help="comma-separated tasks (s1: adding,recall,sinmix,short; "
                   "s2: adding,ar2,movingavg,delaysum,narma10,narma20)")
    p.add_argument("--models", help="comma-separated models (s1: leaky,scalar,vector; "
                   "s2: plain,scalar,multi)")
    p.add_argument("--steps", type=int, help="training iterations (checkpoints clipped to it)")
    p.add_argument("--compat", choices=("exact", "paper-code"), default="exact",
                   help="exact mathematics (default) or the authors' code conventions")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                   help="override a setting of the experiment (repeatable), e.g. --set hidden=32"
                   " --set checkpoints=0,200 --set probe_batch=8; fields: those of "
                   "AppendixConfig, S1Config and S2Config")
    p.add_argument("--out", help="output folder (default runs/reproduce-<what>-<timestamp>); "
                   "an existing folder of the same settings continues where it stopped")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("report", help="rebuild the report of a (finished or interrupted) run",
                       description="Rebuild report.html, summary.json, table.md and "
                       "figures/*.png from the files of a run folder.")
    p.add_argument("run_dir", help="a compare, reproduce or train run folder")
    p.add_argument("--out", help="write the report here instead of into RUN_DIR")
    p.set_defaults(func=_cmd_report)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatezoo",
        description=(
            "Gated recurrent cells as data-driven preconditioners: train a zoo of Flax cells "
            "with Optax, measure how gates rescale the gradient by lag and direction, and "
            "compare with what schedules, momentum and Adam do."
        ),
    )
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import a Python module first (repeatable): one that calls gz.register_cell / "
        "register_task / register_optimizer / register_instrument makes its names usable by "
        "every command",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("list", help="list the cells (and tasks, optimizers, instruments)")
    p.add_argument(
        "what", nargs="?", default=None, help="only this section (cells, tasks, optimizers, ...)"
    )
    p.set_defaults(func=_cmd_list)
    _add_train_parser(sub)
    _add_experiment_parsers(sub)
    return parser


# SIGTERM is handled like Ctrl-C; the handler is shared with compare's worker processes
Terminated = interrupts.Terminated
_swallows_exceptions = interrupts.swallows_exceptions
_raise_terminated = interrupts.raise_terminated


def _import_plugins(modules: Sequence[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UsageError(f"--import {name}: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    shown = warnings.showwarning
    try:
        warnings.showwarning = _one_line_warning(args.command, shown)
        _import_plugins(args.imports)
        return int(args.func(args) or 0)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"gatezoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder: the fault, not a traceback
        print(f"gatezoo {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"gatezoo {args.command}: {'terminated' if terminated else 'interrupted'}",
              file=sys.stderr)
        return 143 if terminated else 130
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line_warning(command: str, fallback: Any) -> Any:
    """Warnings addressed to the user (a damaged run folder) as one line on stderr; others as
    Python shows them."""
    from gatezoo.report.runfiles import ReportWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ReportWarning):
            print(f"gatezoo {command}: warning: {message}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def run() -> None:
    """The ``gatezoo`` command: :func:`main`, then exit with its status. After Ctrl-C or SIGTERM
    (everything finished is saved by then) the process leaves at once, without the interpreter's
    teardown: XLA computations cut off mid-flight can crash it in their destructors."""
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
