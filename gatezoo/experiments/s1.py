r"""S1: lag-dependent effective learning rates during SGD training (docs/theory.md §4.4, §6.3).

Three models (leaky with ``alpha = 0.8``, scalar gate, vector gate; ``d_h = 64``, no biases,
PyTorch-style init) train with plain SGD (``eta = 1e-2``) on a task (``T = 80``, batch 64, fresh
batches each step). At each checkpoint iteration, before that iteration's update, a fixed probe
batch (12 sequences) measures for every pair ``k < t`` of every probe sequence

.. math::
    S_{t,k} = \Big\| \prod_{j=t}^{k+1} J_j \Big\|_2, \qquad
    P_{t,k} = \begin{cases} \alpha^{t-k} & \text{leaky} \\
        \prod_{j=k+1}^{t} \alpha_j & \text{scalar} \\
        \frac{1}{d_h} \sum_i \prod_{j=k+1}^{t} \alpha^{(i)}_j & \text{vector,} \end{cases}

and reports the normalised profile ``mu(l) = med_{t-k=l} S / med_{t-k=1} S``, the zeroth-order
prediction ``mu0(l) = Pbar(l) / Pbar(1)`` (``Pbar`` the lag-wise median of ``P``), the fitted power
``s`` (OLS slope of ``log S`` on ``log P`` with ``P`` trimmed to its 1%-99% quantiles), its ``R^2``
and the fitted profile ``mu0^s``.

The measurement is the ``sensitivity`` instrument's own
(:func:`gatezoo.instruments.sensitivity.lag_sensitivity` and ``lag_profile``), with
``norm="power"``: ``||.||_2`` is the largest singular value, by SVD at lag 1 (which normalises
every profile) and for longer windows by ``power_iters`` steps of power iteration warm-started
from the same window one lag shorter (converges to ``sigma_max``; tested against an SVD). Under
``compat="paper-code"`` the release's conventions apply (docs/theory.md §2.3 items 1-5): products in
reversed order, ``B`` from the post-update state, gate windows of ``l + 1`` factors, and its norm
estimate: 5 plain power iterations ``v <- P v / (||P v|| + 1e-12)`` in the model's float32 from
a fresh Gaussian start for every window (a lower bound of ``||P||_2`` that collapses, or
underflows to 0, once ``||P v||`` falls near the ``1e-12`` floor; such pairs leave the fit).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.experiments.checks import check_experiment, clip_checkpoints
from gatezoo.experiments.partial import resume_parts, write_parts
from gatezoo.experiments.seeded import (
    SeededModels,
    stream_key,
    train_with_checkpoints,
)
from gatezoo.experiments.stats import mean_std
from gatezoo.flops import count_flops
from gatezoo.instruments.model_fns import model_fns
from gatezoo.instruments.sensitivity import lag_profile, lag_sensitivity
from gatezoo.training.seeds import over_seeds

__all__ = ["S1Config", "S1_MODELS", "S1_TASKS", "run_s1_model", "run_s1"]

S1_MODELS = ("leaky", "scalar", "vector")
S1_TASKS = ("adding", "recall", "sinmix", "short")


@dataclasses.dataclass(frozen=True)
class S1Config:
    """Settings of S1; the defaults are docs/theory.md §6.3's (``steps=800`` as through run_all).

    Attributes:
      tasks: task names (``adding``, ``recall``, ``sinmix``, ``short``).
      models: ``leaky``, ``scalar``, ``vector``.
      seeds: number of seeds, run as ``1 .. seeds`` (the release's S1 numbering).
      steps: SGD iterations; ``checkpoints`` are kept at those iterations (``<= steps``).
      leaky_alpha: the leaky model's constant ``alpha``.
      power_iters: power iterations per window end; ``None``: 4 warm-started ones (exact) or
        the release's 5 from a fresh start (paper-code). The summary records the number used.
      trim: quantile trimmed from each end of ``P`` before fitting ``s``.
    """

    tasks: tuple[str, ...] = ("adding",)
    models: tuple[str, ...] = S1_MODELS
    seeds: int = 20
    steps: int = 800
    checkpoints: tuple[int, ...] = (0, 50, 200, 400, 600, 800)
    seq_len: int = 80
    hidden: int = 64
    input_dim: int = 4
    batch_size: int = 64
    probe_batch: int = 12
    learning_rate: float = 1e-2
    leaky_alpha: float = 0.8
    power_iters: int | None = None
    trim: float = 0.01
    compat: str = "exact"

    def __post_init__(self):
        if self.power_iters is None:
            object.__setattr__(self, "power_iters", 5 if self.compat == "paper-code" else 4)
        check_experiment(
            self, label="S1", models=S1_MODELS, tasks=S1_TASKS,
            positive=("seeds", "steps", "seq_len", "hidden", "batch_size", "probe_batch",
                      "power_iters"),
        )

    def with_steps(self, steps: int) -> S1Config:
        """The same config with ``steps`` and the checkpoints clipped to it (plus ``steps``)."""
        return dataclasses.replace(
            self, steps=steps, checkpoints=clip_checkpoints(self.checkpoints, steps)
        )


def _probe_fn(models: SeededModels, task: Any, config: S1Config):
    """The jitted probe of every seed: the ``sensitivity`` instrument's own
    :func:`~gatezoo.instruments.sensitivity.lag_sensitivity` (warm-started power iterations,
    or the release's norm under paper-code) and its :func:`~gatezoo.instruments.sensitivity.
    lag_profile` on the candidate predictor."""
    one_seed = jax.tree_util.tree_map(lambda a: a[0], models.params)
    fns, _ = model_fns(models.model(one_seed), task)
    paper = config.compat == "paper-code"
    T = config.seq_len

    def one(params, xs, ys, key):
        sens = lag_sensitivity(fns, params, xs, ys, compat=config.compat, norm="power",
                               power_iters=config.power_iters, key=key if paper else None)
        prof = lag_profile(sens, config.trim)
        # the profile's lags are 1..T-1; under the exact convention the pair (T, 0) of lag T
        # enters the fit only
        return {k: (v[: T - 1] if k in _PER_LAG else v) for k, v in prof.items()}

    # over seeds (params, probe batches and keys all have a leading seed axis)
    return jax.jit(lambda params, xs, ys, keys: over_seeds(lambda a: one(*a),
                                                          (params, xs, ys, keys)))


_PER_LAG = ("lags", "profile", "zeroth_order", "fitted")


def run_s1_model(
    task: Any, name: str, config: S1Config, probe: tuple[jax.Array, jax.Array],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains and probes one model of S1 (``leaky``, ``scalar`` or ``vector``) on one task;
    ``probe = (xs (seeds, probe_batch, T, d_x), ys)`` is the fixed probe batch of every seed."""
    t0 = time.perf_counter()
    seeds = list(range(1, config.seeds + 1))
    opts = {"alpha": config.leaky_alpha} if name == "leaky" else {}
    models = SeededModels.build(name, task.input_dim, config.hidden, seeds, cell_options=opts)
    run = train_with_checkpoints(
        models, task, "sgd", config.learning_rate, config.checkpoints,
        batch_size=config.batch_size,
        batch_key=lambda s, i: jax.random.fold_in(stream_key(s, "batches"), i),
        progress=_every_hundred(lambda d, n: log(f"s1 {task.name}/{name}: step {d}/{n}")),
    )
    probe_fn = _probe_fn(models, task, config)
    per_ckpt = []
    ckpts = sorted(run.checkpoints)
    for i, c in enumerate(ckpts):
        log(f"s1 {task.name}/{name}: probe {i + 1}/{len(ckpts)} (iteration {c})")
        keys = jnp.stack([jax.random.fold_in(stream_key(s, "power"), c) for s in seeds])
        args = (run.checkpoints[c], *probe, keys)
        if i == 0:  # every checkpoint's probe has the same shapes
            probe_flops = count_flops(probe_fn, *args).scaled(len(ckpts))
        prof = {k: np.asarray(v, None if k == "lags" else np.float64)
                for k, v in probe_fn(*args).items()}
        per_ckpt.append([{k: v[j] for k, v in prof.items()} for j in range(len(seeds))])
    out = _summarise_model(per_ckpt, ckpts, seeds, run)
    out["wall_time_s"] = time.perf_counter() - t0
    out["train_time_s"] = run.wall_time_s
    out["flops"] = {"train": run.flops.as_dict(), "probe": probe_flops.as_dict()}
    out["devices"] = run.devices  # the seeds were split over this many in training
    log(f"s1 {task.name}/{name}: {config.steps} steps x {len(seeds)} seeds, "
        f"{out['wall_time_s']:.1f} s (training {run.wall_time_s:.1f} s)")
    return out


def _every_hundred(fn):
    """A progress callback that reports at multiples of 100 steps and at the end."""

    def cb(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            fn(done, total)

    return cb


def _summarise_model(per_ckpt, ckpts, seeds, run) -> dict[str, Any]:
    """Per-seed arrays ``(ckpt, seed, lag)`` and the aggregates of docs/theory.md §6.3."""
    def stack(key):
        return np.array([[p[key] for p in row] for row in per_ckpt])

    profile, mu0, fitted = stack("profile"), stack("zeroth_order"), stack("fitted")
    slope, r2 = stack("slope"), stack("r2")
    prof = mean_std(profile, axis=1)
    sl = mean_std(slope, axis=1)
    loss_at = [run.losses[c] if c < len(run.losses) else run.losses[-1] for c in ckpts]
    return {
        "checkpoints": ckpts,
        "seeds": seeds,
        "lags": per_ckpt[0][0]["lags"],
        "per_seed": {
            "profile": profile, "zeroth_order": mu0, "fitted": fitted,
            "slope": slope, "r2": r2,
            "trim_low": stack("trim_low"), "trim_high": stack("trim_high"),
            "train_loss": np.array(loss_at),
        },
        "aggregate": {
            "profile_mean": prof["mean"], "profile_std": prof["std"],
            "zeroth_order_mean": np.nanmean(mu0, axis=1),
            "fitted_mean": np.nanmean(fitted, axis=1),
            "slope_mean": sl["mean"], "slope_std": sl["std"],
            "r2_mean": np.nanmean(r2, axis=1),
        },
        "train_loss_curve": {"mean": run.losses.mean(axis=1), "std": run.losses.std(axis=1)},
    }


def run_s1(
    config: S1Config = S1Config(), out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs S1 on every task of ``config``; writes ``s1.json`` into ``out_dir`` when given.

    ``s1.json`` is rewritten as each (task, model) finishes; a rerun into the same ``out_dir``
    with the same settings continues where the last one stopped (:mod:`.partial`).
    """
    from gatezoo.tasks import make_task

    start = time.perf_counter()
    tasks, earlier = resume_parts(out_dir, "s1", config, log)
    for t in config.tasks:
        entry = tasks.setdefault(t, {"task": t, "models": {}})
        todo = [m for m in config.models if m not in entry["models"]]
        if not todo:
            continue
        task = make_task(t, seq_len=config.seq_len, channels=config.input_dim)
        entry["baseline"] = task.baseline
        batches = [task.sample(stream_key(s, "probe_batch"), config.probe_batch)
                   for s in range(1, config.seeds + 1)]
        probe = tuple(jnp.stack(part) for part in zip(*batches, strict=True))
        for name in todo:
            entry["models"][name] = run_s1_model(task, name, config, probe, log)
            if out_dir is not None:
                write_parts(out_dir, "s1", config, tasks, earlier + time.perf_counter() - start)
    wall = earlier + time.perf_counter() - start
    if out_dir is not None:
        write_parts(out_dir, "s1", config, tasks, wall)
    return {"experiment": "s1", "config": dataclasses.asdict(config), "tasks": tasks,
            "wall_time_s": wall}
