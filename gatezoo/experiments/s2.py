r"""S2: joint anisotropy of propagation and of updates (docs/theory.md §4.5, §6.4).

Three model/optimizer pairs train on a task (``T = 120``, batch 64, ``d_x = 6``, ``d_h = 64``, no
biases): ``plain`` (Elman) with Adam 1e-3, ``scalar`` with SGD 1e-2, ``multi`` (vector gate) with
SGD 1e-2. At each checkpoint two anisotropy measurements are taken:

* **Propagation.** On a fixed probe batch (64 sequences), for lags
  ``l in {1, 2, 4, 8, 12, 16, 24, 32, 40}`` and up to 64 random ``(b, t, k)`` with ``t - k = l``,
  the Jacobian product ``M = prod_{j=t}^{k+1} J_j`` and its top 16 singular values (float64):
  ``AI = sigma_1 / sigma_10`` and ``CE_10 = sum_{i<=10} sigma_i^2 / sum_{i<=16} sigma_i^2``, median
  over the triples.
* **Updates (gradient covariance).** 256 per-sequence gradients on fresh sequences, flattened into
  rows (float64), each row normalised, columns centred, near-constant columns dropped, ``1e-8``
  jitter; ``AI`` and ``CE_10`` of its singular values (denominator: all of them).

Project additions (not in the release, docs/theory.md §8 item 11): effective rank ``erank``
``exp(H(sigma^2 / sum sigma^2))`` and participation ratio ``pr`` ``(sum sigma^2)^2 / sum sigma^4``
(:func:`gatezoo.instruments.spectrum_stats`).

``compat="paper-code"`` adds the release's conventions: reversed products and the post-update
``B`` (§2.3), the same training batch at every step (the release's default-seeded generator
per call; the release's one batch also serves every seed, here each seed draws its own) with
``1e-6`` input jitter, and checkpoint ``c`` taken after the update of
iteration ``c`` (``c + 1`` updates). The exact default trains on fresh batches and checkpoints
``c`` after ``c`` updates.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.experiments.checks import check_experiment, clip_checkpoints
from gatezoo.experiments.partial import resume_parts, write_parts
from gatezoo.experiments.s1 import _every_hundred
from gatezoo.experiments.seeded import (
    SeededModels,
    flat_size,
    stream_key,
    train_with_checkpoints,
)
from gatezoo.experiments.stats import as_array, median_iqr, to_list
from gatezoo.flops import count_flops
from gatezoo.instruments.anisotropy import window_spectra
from gatezoo.instruments.model_fns import model_fns
from gatezoo.instruments.stats import spectrum_stats
from gatezoo.linalg import symmetric_eigenvalues
from gatezoo.training.seeds import over_seeds

__all__ = ["S2Config", "S2_PAIRS", "S2_TASKS", "run_s2"]

# model name -> (cell, optimizer, learning rate)
S2_PAIRS = {
    "plain": ("elman", "adam", 1e-3),
    "scalar": ("scalar", "sgd", 1e-2),
    "multi": ("vector", "sgd", 1e-2),
}
S2_TASKS = ("adding", "ar2", "movingavg", "delaysum", "narma10", "narma20")
S2_LAGS = (1, 2, 4, 8, 12, 16, 24, 32, 40)
_PAPER_FLOOR = 1e-12


@dataclasses.dataclass(frozen=True)
class S2Config:
    """Settings of S2; the defaults are theory §6.4's (1200 iterations as through run_all)."""

    tasks: tuple[str, ...] = ("adding", "ar2", "movingavg", "delaysum", "narma10")
    models: tuple[str, ...] = tuple(S2_PAIRS)
    seeds: int = 20
    steps: int = 1200
    checkpoints: tuple[int, ...] = (0, 400, 800, 1200)
    seq_len: int = 120
    hidden: int = 64
    input_dim: int = 6
    batch_size: int = 64
    probe_batch: int = 64
    lags: tuple[int, ...] = S2_LAGS
    triples_per_lag: int = 64
    svd_k: int = 16
    rank_r: int = 10
    grad_samples: int = 256
    compat: str = "exact"

    def __post_init__(self):
        check_experiment(
            self, label="S2", models=S2_PAIRS, tasks=S2_TASKS,
            positive=("seeds", "steps", "seq_len", "hidden", "batch_size", "probe_batch",
                      "grad_samples", "triples_per_lag"),
        )
        if not 1 <= self.rank_r <= min(self.svd_k, self.hidden):
            raise ValueError(f"rank_r must lie in [1, min(svd_k, hidden)], got {self.rank_r}")
        if max(self.lags) >= self.seq_len:
            raise ValueError(f"lags must be < seq_len={self.seq_len}, got max {max(self.lags)}")

    def with_steps(self, steps: int) -> S2Config:
        return dataclasses.replace(
            self, steps=steps, checkpoints=clip_checkpoints(self.checkpoints, steps)
        )


def _propagation(fns, params, xs: jax.Array, ys: jax.Array, key: jax.Array,
                 config: S2Config) -> dict[str, jax.Array]:
    """Per-lag medians of the product anisotropy on the probe batch ``xs (B, T, d_x)``: the
    ``anisotropy`` instrument's :func:`~gatezoo.instruments.anisotropy.window_spectra` on the
    release's draws of windows."""
    B, T, _ = xs.shape
    paper = config.compat == "paper-code"
    n = config.triples_per_lag
    draws = []
    for i, lag in enumerate(config.lags):
        kb, kk = jax.random.split(jax.random.fold_in(key, i))
        b = jax.random.randint(kb, (n,), 0, B)
        # window k+1..k+lag ends at t = k + lag <= T; the release's t stops at T - 1
        k = jax.random.randint(kk, (n,), 0, T - lag + (0 if paper else 1))
        draws.append((b, k, jnp.full((n,), lag)))
    b, k, lag_n = (jnp.concatenate(part) for part in zip(*draws, strict=True))
    sv = window_spectra(fns, params, xs, ys, b, k, lag_n, max(config.lags),
                        compat=config.compat, dtype=jnp.float64)
    st = spectrum_stats(sv[..., : config.svd_k].reshape(len(config.lags), n, -1),
                        config.rank_r, floor=_PAPER_FLOOR if paper else 0.0)
    # the release skips non-finite products
    return {name: (jnp.nanmedian(v, axis=1) if paper else jnp.median(v, axis=1))
            for name, v in st.items()}


def _grad_cov(models: SeededModels, task, params, keys: jax.Array, config: S2Config):
    """Gradient-covariance spectrum statistics from per-sequence gradients (``keys (M,)``)."""

    def one(key):
        x, y = task.sample(key, 1)
        g = jax.grad(lambda p: task.loss(models.predict(p, x), y))(params)
        return jnp.concatenate([jnp.ravel(v) for v in jax.tree_util.tree_leaves(g)])

    G = jax.vmap(one)(keys).astype(jnp.float64)  # (M, n_params)
    M = G.shape[0]
    paper = config.compat == "paper-code"
    G = G / (jnp.linalg.norm(G, axis=1, keepdims=True) + (_PAPER_FLOOR if paper else 1e-300))
    G = G - G.mean(axis=0, keepdims=True)
    keep = jnp.linalg.norm(G, axis=0) > 1e-10 * jnp.sqrt(M)
    jitter = 1e-8 * jax.random.normal(jax.random.fold_in(keys[0], 17), G.shape, G.dtype)
    G = jnp.where(keep[None, :], G + jitter, 0.0)  # dropping a column = zeroing it for the SVD
    # singular values from the (M x M) Gram matrix: M << n_params
    lam = symmetric_eigenvalues(G @ G.T)[::-1]
    sv = jnp.sqrt(jnp.maximum(lam, 0.0))
    st = spectrum_stats(sv, config.rank_r, floor=_PAPER_FLOOR if paper else 0.0)
    st["kept_columns"] = jnp.sum(keep)
    return st


class _S2Task(NamedTuple):
    task: Any
    seeds: list[int]
    probe_xs: jax.Array  # (S, probe_batch, T, d_x)


def _prepare_task(task_name: str, config: S2Config) -> _S2Task:
    from gatezoo.tasks import make_task

    task = make_task(task_name, seq_len=config.seq_len, channels=config.input_dim)
    seeds = list(range(1, config.seeds + 1))  # the release's numbering, like S1
    probe_xs = jnp.stack(
        [task.sample(stream_key(s, "probe_batch"), config.probe_batch)[0] for s in seeds])
    return _S2Task(task, seeds, probe_xs)


def _train(models: SeededModels, prep: _S2Task, name: str, config: S2Config, log):
    """Trains one model on every seed; returns the run and ``{checkpoint: params}``."""
    _, opt, lr = S2_PAIRS[name]
    progress = _every_hundred(
        lambda d, n: log(f"s2 {prep.task.name}/{name}: step {d}/{n}"))
    if config.compat == "paper-code":
        # the release's quirks (docs/theory.md §6.4): one fixed batch for every step, 1e-6 jitter,
        # and checkpoint c saved after the update of iteration c (c + 1 updates). The release
        # also shares its one batch across seeds; a batch shared here would be another single
        # draw, and which draw it is decides whether the gated models grow a slow recurrent
        # mode by iteration 1200 (their late AI varies 200-fold between draws), so each seed
        # gets its own fixed batch and the seed spread covers the draw
        marks = [min(c + 1, config.steps) for c in config.checkpoints]
        run = train_with_checkpoints(
            models, prep.task, opt, lr, marks, batch_size=config.batch_size,
            batch_key=lambda s, i: stream_key(s, "batches"), input_jitter=1e-6,
            jitter_key=lambda s, i: jax.random.fold_in(stream_key(s, "jitter"), i),
            progress=progress,
        )
        return run, {c: run.checkpoints[min(c + 1, config.steps)] for c in config.checkpoints}
    run = train_with_checkpoints(
        models, prep.task, opt, lr, config.checkpoints, batch_size=config.batch_size,
        batch_key=lambda s, i: jax.random.fold_in(stream_key(s, "batches"), i),
        progress=progress,
    )
    return run, run.checkpoints


def run_s2_model(
    prep: _S2Task, name: str, config: S2Config, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Trains and probes one model of S2 (``plain``, ``scalar`` or ``multi``) on one task."""
    t0 = time.perf_counter()
    cell, opt, lr = S2_PAIRS[name]
    task, seeds = prep.task, prep.seeds
    models = SeededModels.build(cell, task.input_dim, config.hidden, seeds)
    n_params = flat_size(models.params)
    run, params_at = _train(models, prep, name, config, log)

    one_seed = jax.tree_util.tree_map(lambda a: a[0], models.params)
    fns, _ = model_fns(models.model(one_seed), task)
    y_shape = jax.eval_shape(lambda k: task.sample(k, 1)[1], jax.random.key(0)).shape[1:]

    def probe(params, xs, tkey, gkeys):
        ys = jnp.zeros(xs.shape[:1] + y_shape, xs.dtype)  # the states do not read the targets
        prop = _propagation(fns, params, xs, ys, tkey, config)
        return prop, _grad_cov(models, task, params, gkeys, config)

    probe_j = jax.jit(lambda *a: over_seeds(lambda b: probe(*b), a))
    model_index = list(S2_PAIRS).index(name)
    rows = jnp.arange(config.grad_samples)
    prop_rows, gc_rows = [], []
    for i, c in enumerate(config.checkpoints):
        log(f"s2 {task.name}/{name}: probe {i + 1}/{len(config.checkpoints)} "
            f"(iteration {c})")
        # the three models share the triples (as in the release), fresh at each checkpoint
        tkeys = jnp.stack([jax.random.fold_in(stream_key(s, "triples"), c) for s in seeds])
        gkeys = jnp.stack([
            jax.vmap(lambda r, s=s: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
                stream_key(s, "gradcov"), model_index), c), r))(rows)
            for s in seeds])
        if i == 0:  # every checkpoint's probe has the same shapes
            probe_flops = count_flops(probe_j, params_at[c], prep.probe_xs, tkeys,
                                      gkeys).scaled(len(config.checkpoints))
        prop, gc = probe_j(params_at[c], prep.probe_xs, tkeys, gkeys)
        prop_rows.append({k: np.asarray(v) for k, v in prop.items()})
        gc_rows.append({k: np.asarray(v) for k, v in gc.items()})
    out = _summarise(prop_rows, gc_rows, config, seeds, run, n_params, cell, opt, lr)
    out["wall_time_s"] = time.perf_counter() - t0
    out["train_time_s"] = run.wall_time_s
    out["flops"] = {"train": run.flops.as_dict(), "probe": probe_flops.as_dict()}
    out["devices"] = run.devices  # the seeds were split over this many in training
    log(f"s2 {task.name}/{name}: {config.steps} steps x {len(seeds)} seeds, "
        f"{out['wall_time_s']:.1f} s (training {run.wall_time_s:.1f} s)")
    return out


def _summarise(prop_rows, gc_rows, config, seeds, run, n_params, cell, opt, lr):
    per_seed_prop = {k: np.stack([r[k] for r in prop_rows]) for k in prop_rows[0]}  # (C, S, L)
    per_seed_gc = {k: np.stack([r[k] for r in gc_rows]) for k in gc_rows[0]}  # (C, S)
    agg_prop = {}
    for k, v in per_seed_prop.items():
        m = median_iqr(v, axis=1)
        agg_prop[f"{k}_median"], agg_prop[f"{k}_q25"], agg_prop[f"{k}_q75"] = (
            m["median"], m["q25"], m["q75"])
    agg_gc = {}
    for k, v in per_seed_gc.items():
        m = median_iqr(v, axis=1)
        agg_gc[f"{k}_median"], agg_gc[f"{k}_q25"], agg_gc[f"{k}_q75"] = (
            m["median"], m["q25"], m["q75"])
    return {
        "cell": cell, "optimizer": opt, "learning_rate": lr, "n_params": n_params,
        "checkpoints": list(config.checkpoints), "lags": list(config.lags), "seeds": seeds,
        "per_seed": {"propagation": per_seed_prop, "grad_cov": per_seed_gc},
        "aggregate": {"propagation": agg_prop, "grad_cov": agg_gc},
        "train_loss_curve": {"mean": run.losses.mean(axis=1), "std": run.losses.std(axis=1)},
        "final_train_loss": run.losses[-1] if len(run.losses) else np.full(len(seeds), np.nan),
    }


def _headline(models: dict[str, Any]) -> dict[str, Any]:
    """docs/theory.md §7 claim 15: is multi+SGD's anisotropy >= plain+Adam's? Fractions over seeds,
    lags and checkpoints (a sign test's raw material)."""
    if "multi" not in models or "plain" not in models:
        return {}
    out = {}
    for kind in ("propagation", "grad_cov"):
        for stat in ("ai", "ce"):
            a = as_array(to_list(models["multi"]["per_seed"][kind][stat]))
            b = as_array(to_list(models["plain"]["per_seed"][kind][stat]))
            ok = np.isfinite(a) & np.isfinite(b)
            out[f"{kind}_{stat}_multi_ge_plain_fraction"] = (
                float(np.mean(a[ok] >= b[ok])) if ok.any() else float("nan"))
            out[f"{kind}_{stat}_n"] = int(ok.sum())
    return out


def run_s2(
    config: S2Config = S2Config(), out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs S2 on every task of ``config``; writes ``s2.json`` into ``out_dir`` when given.

    ``s2.json`` is rewritten as each (task, model) finishes, so an interrupted run keeps every
    finished part; run again with the same ``out_dir`` and config, it continues from there (a
    different config is refused). Needs float64 for the SVDs: run under
    ``jax.enable_x64(True)`` (the CLI does).
    """
    if not jax.config.jax_enable_x64:
        raise ValueError("S2 takes its SVDs in float64: wrap it in jax.enable_x64(True)")
    start = time.perf_counter()
    tasks, earlier = resume_parts(out_dir, "s2", config, log)
    for t in config.tasks:
        entry = tasks.setdefault(t, {"task": t, "models": {}, "comparison": {}})
        todo = [m for m in config.models if m not in entry["models"]]
        if not todo:
            continue
        prep = _prepare_task(t, config)
        entry["baseline"] = prep.task.baseline
        for name in todo:
            entry["models"][name] = run_s2_model(prep, name, config, log)
            entry["comparison"] = _headline(entry["models"])
            if out_dir is not None:
                write_parts(out_dir, "s2", config, tasks,
                            earlier + time.perf_counter() - start)
    wall = earlier + time.perf_counter() - start
    if out_dir is not None:
        write_parts(out_dir, "s2", config, tasks, wall)
    return {"experiment": "s2", "config": dataclasses.asdict(config), "tasks": tasks,
            "wall_time_s": wall}
