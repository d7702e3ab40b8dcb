"""The train config (a JSON-serialisable dataclass) and the result of a run."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from gatezoo.models.jacobians import CONVENTIONS
from gatezoo.training.sharding import SHARD_AXES

__all__ = ["TrainConfig", "RunResult", "parse_seeds"]

DTYPES = ("float32", "float64", "bfloat16")
MAX_SEED = 2**31 - 1

# Fields a resumed run may change: they alter how far and how often, never what a step computes.
RESUMABLE_CHANGES = (
    "steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
    "steps_per_call", "devices", "shard",
)


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run; every field has a working default.

    Model: ``cell`` (a registered cell name), ``cell_options`` (e.g. ``{"alpha": 0.8}`` for
    ``leaky``), ``hidden``, ``init`` (``flax``/``torch``/``normal``), ``init_std``,
    ``gate_bias`` (float or ``"chrono"``), ``use_bias``, ``readout_bias``.
    Task: ``task`` (registered name), ``seq_len`` (``None``: the task's default),
    ``task_options``.
    Optimizer: ``optimizer`` (a registered name, an ``optax.GradientTransformation`` or a
    factory ``learning_rate -> GradientTransformation``; the last two are written to JSON by
    name only, so a run using them resumes only from Python with the same object),
    ``learning_rate``, ``schedule``, ``momentum``, ``clip``, ``warmup`` (see
    :mod:`gatezoo.training.optimizers`).
    Loop: ``steps`` updates, ``batch_size``, ``seeds`` (vmapped side by side), ``dtype``
    (``float64`` runs inside ``jax.enable_x64``), ``steps_per_call`` (K compiled steps per host
    round-trip), ``eval_every``/``eval_batches`` (held-out batches of ``batch_size``),
    ``checkpoint_every``/``keep_checkpoints``, ``devices`` (``None``: all devices when the split
    axis divides over them, else one; an integer: exactly that many, the axis must divide),
    ``shard`` (what the devices split: ``"batch"``, each batch, or ``"seeds"``, the slots, whose
    number must then divide over the devices; :mod:`gatezoo.training.sharding`),
    ``seed_batch`` (``k``: groups of ``k`` seeds vmapped, the groups run one after another in
    the compiled step; ``None``: automatic, groups of 1 on CPU, where that is faster (see
    benchmarks/README.md), and all seeds in one vmap on GPU and TPU).
    Instruments: ``instruments`` (names or tiers), ``every`` (per-instrument schedule
    overrides), ``probe_batch_size``, ``compat`` (``exact`` or ``paper-code``),
    ``self_check`` (the ``expansion`` instrument's check that the cell's ``__call__`` and its
    gate path agree; adds ``expansion``).
    ``fixed_batch``: the same training batch at every step (the S2 experiment's quirk).
    ``lr_trials``: learning rates tried side by side (``()``: just ``learning_rate``); with
    ``N`` of them the run trains ``N x len(seeds)`` slots, trial-major, in one compiled program
    (:mod:`gatezoo.training.trials`; needs the constant schedule).

    Example:
      >>> config = TrainConfig(cell="leaky", cell_options={"alpha": 0.2}, hidden=16,
      ...                      seeds=(0, 1), lr_trials=(1e-3, 1e-2))
      >>> config.optimizer, config.task, config.slot_seeds()
      ('adam', 'adding', (0, 1, 0, 1))
      >>> TrainConfig.from_dict(config.to_dict()) == config  # what config.json holds
      True
      >>> config.replace(hidden=32).hidden
      32

    References:
      Kingma and Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`__, ICLR 2015 (the default optimizer).

      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025 (what the instruments
      measure; ``compat``: docs/theory.md §2.3).
    """

    cell: str = "gru"
    cell_options: dict = dataclasses.field(default_factory=dict)
    hidden: int = 64
    init: str = "flax"
    init_std: float = 0.2
    gate_bias: float | str = 0.0
    use_bias: bool = True
    readout_bias: bool = True
    task: str = "adding"
    seq_len: int | None = None
    task_options: dict = dataclasses.field(default_factory=dict)
    optimizer: Any = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    momentum: float = 0.9
    clip: float | None = None
    warmup: int = 0
    steps: int = 1000
    batch_size: int = 64
    seeds: tuple[int, ...] = (0,)
    dtype: str = "float32"
    steps_per_call: int = 50
    eval_every: int = 200
    eval_batches: int = 4
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    probe_batch_size: int = 16
    instruments: tuple[str, ...] = ()
    every: dict = dataclasses.field(default_factory=dict)
    compat: str = "exact"
    self_check: bool = False
    fixed_batch: bool = False
    devices: int | None = None
    shard: str = "batch"
    seed_batch: int | None = None
    lr_trials: tuple[float, ...] = ()

    def __post_init__(self):
        self.seeds = parse_seeds(self.seeds)
        if isinstance(self.lr_trials, (str, bytes)) or not hasattr(self.lr_trials, "__iter__"):
            raise ValueError(f"lr_trials must be a sequence of learning rates, got "
                             f"{self.lr_trials!r}")
        self.lr_trials = tuple(_number("lr_trials", r) for r in self.lr_trials)
        if isinstance(self.instruments, str):
            self.instruments = tuple(n for n in self.instruments.split(",") if n)
        self.instruments = tuple(self.instruments)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError (one line, naming the field, the value and what is allowed) for
        values no run can use. Integers from numpy become Python integers."""
        for name, low in _INTEGER_FIELDS:
            setattr(self, name, _integer(name, getattr(self, name), low))
        for name in ("seq_len", "devices", "seed_batch"):
            if getattr(self, name) is not None:
                setattr(self, name, _integer(name, getattr(self, name), 1))
        for name in ("use_bias", "readout_bias", "self_check", "fixed_batch"):
            setattr(self, name, _flag(name, getattr(self, name)))
        for name in ("cell_options", "task_options", "every"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {getattr(self, name)!r}")
        self._validate_names()
        self._validate_numbers()
        if self.shard == "seeds" and self.seed_batch is not None:
            raise ValueError("seed_batch does not apply with shard='seeds' (the slots are "
                             "vmapped all at once and split over the devices); leave it unset")
        if self.lr_trials and self.schedule != "constant":
            raise ValueError(f"lr_trials need the constant schedule, got {self.schedule!r}")
        if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                   and v >= 1 for k, v in self.every.items()):
            raise ValueError(
                f"every must map instrument names to integers >= 1, got {self.every!r}"
            )

    def _validate_names(self) -> None:
        from gatezoo.models.init import INIT_SCHEMES
        from gatezoo.training.optimizers import SCHEDULES

        for name, choices in (("shard", SHARD_AXES), ("dtype", DTYPES), ("compat", CONVENTIONS),
                              ("init", INIT_SCHEMES), ("schedule", tuple(sorted(SCHEDULES)))):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of: "
                                 f"{', '.join(choices)}")
        for name in ("cell", "task"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                register = "gz.register_cell" if name == "cell" else "gz.register_task"
                raise ValueError(
                    f"{name} must be a registered name, got {getattr(self, name)!r}; register "
                    f"it first with {register}(name, factory, description) and pass the name"
                )
        if not all(isinstance(n, str) and n for n in self.instruments):
            raise ValueError(f"instruments must be names (strings), got {self.instruments!r}")
        if not (isinstance(self.optimizer, str) or callable(self.optimizer)
                or hasattr(self.optimizer, "update")):
            raise ValueError(
                "optimizer must be a registered name, an optax.GradientTransformation or a "
                f"factory learning_rate -> GradientTransformation, got {self.optimizer!r}"
            )

    def _validate_numbers(self) -> None:
        self.learning_rate = _number("learning_rate", self.learning_rate)
        self.init_std = _number("init_std", self.init_std)
        if self.clip is not None:
            self.clip = _number("clip", self.clip)
        momentum = _number("momentum", self.momentum, low=0.0)
        if momentum >= 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        self.momentum = momentum
        if self.gate_bias != "chrono":
            try:
                self.gate_bias = _number("gate_bias", self.gate_bias, low=-math.inf)
            except ValueError:
                raise ValueError(f"gate_bias must be a finite number or 'chrono', got "
                                 f"{self.gate_bias!r}") from None

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(dataclasses.replace(self, optimizer="adam"))
        d["optimizer"] = _optimizer_label(self.optimizer)
        d["seeds"] = list(self.seeds)
        d["instruments"] = list(self.instruments)
        d["lr_trials"] = list(self.lr_trials)
        return d

    # -- slots: trials x seeds -------------------------------------------------------------
    def slot_seeds(self) -> tuple[int, ...]:
        """The seed of every slot: ``seeds`` once per learning-rate trial (trial-major)."""
        return tuple(self.seeds) * max(len(self.lr_trials), 1)

    def slot_tags(self) -> list[dict[str, Any]]:
        """What names each slot in the metric lines: ``{"seed"}`` plus ``{"trial"}`` with trials."""
        if not self.lr_trials:
            return [{"seed": s} for s in self.seeds]
        return [{"seed": s, "trial": k} for k in range(len(self.lr_trials)) for s in self.seeds]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config from a dict; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; fields: {', '.join(sorted(names))}"
            )
        return cls(**d)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {str(p)!r} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(p)!r} must hold a JSON object")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# integer fields and their least value
_INTEGER_FIELDS = (
    ("steps", 0), ("warmup", 0), ("hidden", 1), ("batch_size", 1), ("steps_per_call", 1),
    ("eval_every", 1), ("eval_batches", 1), ("checkpoint_every", 1), ("keep_checkpoints", 1),
    ("probe_batch_size", 1),
)


def _integer(name: str, value: Any, low: int) -> int:
    """``value`` as a Python int (numpy integers included; bools and floats refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _number(name: str, value: Any, low: float | None = None) -> float:
    """A finite real number, > 0 (or >= ``low``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) \
        and math.isfinite(value)
    ok = ok and (value > 0 if low is None else value >= low)
    if not ok:
        bound = "> 0" if low is None else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _optimizer_label(optimizer: Any) -> str:
    if isinstance(optimizer, str):
        return optimizer
    if hasattr(optimizer, "update") and hasattr(optimizer, "init"):
        return "optax.GradientTransformation"
    return getattr(optimizer, "__name__", type(optimizer).__name__)


def parse_seeds(seeds: Any) -> tuple[int, ...]:
    """Seeds from a tuple/list of ints, an int ``n`` (seeds ``0..n-1``) or a string.

    Strings: ``"4"`` means ``0,1,2,3``; ``"0,5,7"`` lists them.
    """
    if isinstance(seeds, str):
        text = seeds.strip()
        try:
            if "," in text:
                seeds = [int(s) for s in text.split(",") if s.strip()]
            else:
                seeds = int(text)
        except ValueError:
            raise ValueError(
                f"seeds must be a count like '4' or a list like '0,1,2', got {text!r}"
            ) from None
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, (bool, np.bool_)):
        if seeds < 1:
            raise ValueError(f"the number of seeds must be >= 1, got {seeds}")
        return tuple(range(int(seeds)))
    if not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a count or a sequence of integers, got {seeds!r}")
    seeds = list(seeds)
    bad = [s for s in seeds if isinstance(s, (bool, np.bool_))
           or not isinstance(s, numbers.Integral)]
    if bad:
        raise ValueError(f"seeds must be integers, got {bad[0]!r} in {seeds!r}")
    out = tuple(int(s) for s in seeds)
    if not out:
        raise ValueError("seeds must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {out}")
    if any(s < 0 or s > MAX_SEED for s in out):
        # the trainer keys every slot with an int32 seed
        raise ValueError(f"seeds must be in [0, {MAX_SEED}], got {out}")
    return out


@dataclasses.dataclass
class RunResult:
    """What :func:`gatezoo.training.train` returns.

    Attributes:
      params: final parameters, every leaf stacked over seeds (leading axis ``len(seeds)``).
      opt_state: final optimizer state, stacked over seeds.
      final_loss: the training loss of the last step, one per slot (numpy ``(S,)``; with
        ``lr_trials`` the slots are trials x seeds, trial-major).
      final_eval: the last held-out evaluation, ``{metric: (S,) array}``.
      history: the metric lines written to ``metrics.jsonl`` by this call (list of dicts).
      wall_time: seconds spent in ``train`` (compilation included).
      run_dir: the run folder (``None`` when the run was not written to disk).
      state: the full final :class:`~gatezoo.training.step.TrainState`.
      config: the config that ran.
      step_fns: the compiled functions of the run (``step_fns.chunk._cache_size()`` is 1: one
        trace per run).
      diverged: per slot, the first step whose loss or gradient was not finite (-1: none);
        only runs with ``lr_trials`` get here with a diverged slot (others raise).

    Example:
      >>> import dataclasses
      >>> [field.name for field in dataclasses.fields(RunResult)][:4]
      ['params', 'opt_state', 'final_loss', 'final_eval']

      The example of :func:`gatezoo.train` gets one from a short run.

    References:
      None: a record of a finished run, with no rule of its own; :func:`gatezoo.train` cites
      what the run computes.
    """

    params: Any
    opt_state: Any
    final_loss: Any
    final_eval: dict
    history: list
    wall_time: float
    run_dir: Path | None
    state: Any
    config: TrainConfig
    step_fns: Any = None
    diverged: Any = None
