r"""S1: lag-dependent effective learning rates during SGD training (THEORY.md §4.4, §6.3).

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

``||.||_2`` is the largest singular value: by SVD at lag 1 (which normalises every profile), and
for longer windows by ``power_iters`` steps of power iteration on ``P^T P`` warm-started from the
window's previous end (converges to ``sigma_max``; tested against an SVD). Under
``compat="paper-code"`` the release's conventions apply (THEORY.md §2.3 items 1-5): products in
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
from gatezoo.experiments.stats import mean_std, ols_slope
from gatezoo.flops import count_flops
from gatezoo.linalg import singular_values
from gatezoo.models import cell_fn
from gatezoo.models.jacobians import state_jacobians
from gatezoo.training.seeds import over_seeds

__all__ = [
    "S1Config", "S1_MODELS", "S1_TASKS", "sensitivity_probe", "release_power_norms",
    "lag_profile", "run_s1_model", "run_s1",
]

S1_MODELS = ("leaky", "scalar", "vector")
S1_TASKS = ("adding", "recall", "sinmix", "short")
_START_BLOCKS = 4
_FRESH_ITERS = 40


@dataclasses.dataclass(frozen=True)
class S1Config:
    """Settings of S1; the defaults are THEORY.md §6.3's (``steps=800`` as through run_all).

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


def _spectral_norms(P: jax.Array, v: jax.Array, iters: int):
    """Largest singular value of each ``P (n, d, d)`` by power iteration on ``P^T P`` (converges
    to ``sigma_max``) from start vectors ``v (n, d)``; returns the vectors for a warm start."""

    def body(_, v):
        w = jnp.einsum("nij,nj->ni", P, v)
        # normalise between P and P^T: no squared norms, so no underflow at long lags
        w = w / (_norm(w)[:, None] + jnp.finfo(w.dtype).tiny)
        w = jnp.einsum("nji,nj->ni", P, w)
        return w / (_norm(w)[:, None] + jnp.finfo(w.dtype).tiny)

    v = jax.lax.fori_loop(0, iters, body, v)
    return _norm(jnp.einsum("nij,nj->ni", P, v)), v


def release_power_norms(P: jax.Array, key: jax.Array, iters: int = 5) -> jax.Array:
    r"""The release's estimate of ``||P||_2`` for each ``P (n, d, d)`` (THEORY.md §2.3 items 3, 5).

    From a fresh Gaussian ``v``, ``iters`` times ``v <- P v / (||P v|| + 10^{-12})`` in ``P``'s
    dtype, then ``||P v||``. Where ``||P v||`` nears the floor the vector stops being unit and
    the estimate collapses toward 0 (about ``sigma^{iters + 1} / 10^{-12 iters}``), as in the
    release. Its norms are PyTorch's float32 norms on a CPU (:func:`_release_norm`): the
    estimates of the longest, most collapsed windows underflow to 0 and leave the fit.
    """

    def unit(w):
        return w / (_release_norm(w)[..., None] + 1e-12)

    v = unit(jax.random.normal(key, P.shape[:-1], P.dtype))
    v = jax.lax.fori_loop(0, iters, lambda _, v: unit(jnp.einsum("nij,nj->ni", P, v)), v)
    return _release_norm(jnp.einsum("nij,nj->ni", P, v))


def _release_norm(w: jax.Array) -> jax.Array:
    """``||w||`` over the last axis as PyTorch takes a float32 norm on a CPU: each square
    rounded onto float32's grid *with* subnormals (XLA flushes them to zero), then summed
    (in float64 here: the sum's rounding differs from PyTorch's by float32 rounding only).
    Squares below half the smallest float32 subnormal are 0, so a vector of entries below
    about ``4e-23`` has norm 0. Needs ``jax_enable_x64`` for the exact threshold (the CLI runs
    reproductions under it); without it the squares flush below ``1e-38``."""
    if w.dtype != jnp.float32 or not jax.config.read("jax_enable_x64"):
        return jnp.sqrt(jnp.sum(w * w, axis=-1))
    sq = jnp.square(w.astype(jnp.float64))
    step = 2.0**-149  # float32's smallest subnormal: the grid below 2^-126
    sq = jnp.where(sq < 2.0**-126, jnp.round(sq / step) * step,
                   sq.astype(jnp.float32).astype(jnp.float64))
    return jnp.sqrt(jnp.sum(sq, axis=-1)).astype(w.dtype)


def _norm(w: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis, scaled by the largest entry so that tiny vectors
    (long products of contracting Jacobians, in float32) do not underflow when squared."""
    m = jnp.max(jnp.abs(w), axis=-1, keepdims=True)
    safe = jnp.where(m > 0, m, 1.0)
    return m[..., 0] * jnp.sqrt(jnp.sum((w / safe) ** 2, axis=-1))


def sensitivity_probe(cell, xs: jax.Array, compat: str, power_iters: int, alpha_const=None,
                      key: jax.Array | None = None):
    """``S[t, k]`` and ``P[t, k]`` for one sequence ``xs (T, d_x)``; both ``(T + 1, T + 1)``
    indexed by state times ``0..T``, NaN where the pair is not measured (``k >= t``; under
    paper-code also ``k = 0``). ``key`` draws the release's start vectors (paper-code only).
    """
    fn = cell_fn(cell)
    T = xs.shape[0]
    d = cell.hidden_features
    h0 = jnp.zeros((d,), xs.dtype)

    def fwd(h, x):
        return fn.step(fn.params, h, x)[0], h

    _, h_prev = jax.lax.scan(fwd, h0, xs)
    convention = "paper-code" if compat == "paper-code" else "exact"
    A, B = jax.vmap(lambda h, x: state_jacobians(cell, h, x, convention=convention))(h_prev, xs)
    J = A + B  # J[j - 1] = J_j, j = 1..T
    alpha = jax.vmap(fn.time_scale, in_axes=(None, 0, 0))(fn.params, h_prev, xs)  # (T, d)
    plain = compat == "paper-code"
    if plain and key is None:
        raise ValueError("sensitivity_probe: paper-code draws fresh start vectors; pass key")
    # Windows starting at state k only need the end times t > k. Starts are split into blocks
    # and each block scans only from its first start on, so about (1/2 + 1/(2 nb)) of the
    # T x T products of one all-starts scan are formed.
    bounds = np.linspace(0, T, min(_START_BLOCKS, T) + 1).astype(int)
    S_rows = jnp.full((T, T), jnp.nan, J.dtype)  # [t - 1, k]
    # a window that starts at t - 1 is the single factor J_t: its vector is converged once here
    # (cheap, one matrix) so that longer windows start warm
    ones = jnp.ones((T, d), J.dtype) / jnp.sqrt(d)
    _, v_fresh = _spectral_norms(J, ones, _FRESH_ITERS)
    for k0, k1 in zip(bounds[:-1], bounds[1:], strict=True):
        if k1 <= k0:
            continue
        n = int(k1 - k0)
        slots = jnp.arange(k0, k1)
        eye = jnp.broadcast_to(jnp.eye(d, dtype=J.dtype), (n, d, d))
        v0 = jnp.ones((n, d), J.dtype) / jnp.sqrt(d)

        def step(carry, inp, slots=slots):
            P, v = carry
            Jt, t, vf = inp
            P = jnp.where((slots < t)[:, None, None], (P @ Jt) if plain else (Jt @ P), P)
            if plain:
                return (P, v), release_power_norms(P, jax.random.fold_in(key, t), power_iters)
            v = jnp.where((slots == t - 1)[:, None], vf[None], v)
            s_t, v = _spectral_norms(P, v, power_iters)
            return (P, v), s_t

        _, blk = jax.lax.scan(
            step, (eye, v0), (J[k0:], jnp.arange(k0 + 1, T + 1), v_fresh[k0:]))
        S_rows = S_rows.at[k0:, k0:k1].set(blk)  # rows t = k0+1..T
    if not plain:  # lag 1 normalises every profile: take it exactly, by SVD
        diag = jnp.arange(T)
        S_rows = S_rows.at[diag, diag].set(singular_values(J)[..., 0])
    nan_row = jnp.full((1, T), jnp.nan, S_rows.dtype)
    S = jnp.concatenate([nan_row, S_rows], axis=0)  # [t, k], t = 0..T
    S = jnp.concatenate([S, jnp.full((T + 1, 1), jnp.nan, S.dtype)], axis=1)
    t_idx = jnp.arange(T + 1)[:, None]
    k_idx = jnp.arange(T + 1)[None, :]
    valid = k_idx < t_idx
    if compat == "paper-code":
        valid = valid & (k_idx >= 1)
    # predictor P[t, k] from cumulative log-gates; paper-code includes alpha_k (l + 1 factors)
    if alpha_const is not None:
        lag = (t_idx - k_idx).astype(J.dtype)
        pred = jnp.power(alpha_const, lag)
    else:
        log_a = jnp.log(alpha)  # (T, d), row j - 1 is alpha_j
        c = jnp.concatenate([jnp.zeros((1, d), log_a.dtype), jnp.cumsum(log_a, axis=0)])
        lo = jnp.maximum(k_idx - 1, 0) if compat == "paper-code" else k_idx
        lo = jnp.broadcast_to(lo, (T + 1, T + 1))
        diff = c[:, None, :] - c[lo[0]][None, :, :]  # (t, k, d)
        pred = jnp.mean(jnp.exp(diff), axis=-1)
    S = jnp.where(valid, S, jnp.nan)
    pred = jnp.where(valid, pred, jnp.nan)
    return S, pred


def lag_profile(S: np.ndarray, P: np.ndarray, trim: float) -> dict[str, Any]:
    """Profiles and the power fit of one checkpoint from ``S, P`` ``(B, T + 1, T + 1)``."""
    T = S.shape[-1] - 1
    lags = np.arange(1, T)
    s_med = np.full(len(lags), np.nan)
    p_med = np.full(len(lags), np.nan)
    for i, lag in enumerate(lags):
        sd = np.diagonal(S, offset=-lag, axis1=-2, axis2=-1)
        pd = np.diagonal(P, offset=-lag, axis1=-2, axis2=-1)
        if np.isfinite(sd).any():
            s_med[i] = np.nanmedian(sd)
            p_med[i] = np.nanmedian(pd)
    mu = s_med / s_med[0]
    mu0 = p_med / p_med[0]
    s_all, p_all = S[np.isfinite(S)], P[np.isfinite(S)]
    ok = (s_all > 0) & (p_all > 0) & np.isfinite(p_all)
    s_all, p_all = s_all[ok], p_all[ok]
    lo, hi = (np.quantile(p_all, [trim, 1 - trim]) if p_all.size else (np.nan, np.nan))
    keep = (p_all >= lo) & (p_all <= hi)
    slope, _, r2 = ols_slope(np.log(p_all[keep]), np.log(s_all[keep]))
    return {
        "lags": lags, "profile": mu, "zeroth_order": mu0, "fitted": mu0 ** slope,
        "slope": slope, "r2": r2, "trim_low": lo, "trim_high": hi,
        "S_median_lag1": s_med[0],
    }


def _probe_fn(models: SeededModels, config: S1Config, alpha_const):
    def one(params, xs, key):
        cell = models.model(params).cell
        keys = jax.random.split(key, xs.shape[0])
        return jax.vmap(
            lambda x, k: sensitivity_probe(cell, x, config.compat, config.power_iters,
                                           alpha_const, key=k)
        )(xs, keys)

    # over seeds (params, probe batches and keys all have a leading seed axis)
    return jax.jit(lambda params, xs, keys: over_seeds(lambda a: one(*a), (params, xs, keys)))


def run_s1_model(
    task: Any, name: str, config: S1Config, probe_xs: jax.Array,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains and probes one model of S1 (``leaky``, ``scalar`` or ``vector``) on one task;
    ``probe_xs (seeds, probe_batch, T, d_x)`` is the fixed probe batch of every seed."""
    t0 = time.perf_counter()
    seeds = list(range(1, config.seeds + 1))
    opts = {"alpha": config.leaky_alpha} if name == "leaky" else {}
    models = SeededModels.build(name, task.input_dim, config.hidden, seeds, cell_options=opts)
    run = train_with_checkpoints(
        models, task, "sgd", config.learning_rate, config.checkpoints,
        batch_size=config.batch_size,
        batch_key=lambda s, i: jax.random.fold_in(stream_key(s, "train"), i),
        progress=_every_hundred(lambda d, n: log(f"s1 {task.name}/{name}: step {d}/{n}")),
    )
    probe = _probe_fn(models, config, config.leaky_alpha if name == "leaky" else None)
    per_ckpt = []
    ckpts = sorted(run.checkpoints)
    for i, c in enumerate(ckpts):
        log(f"s1 {task.name}/{name}: probe {i + 1}/{len(ckpts)} (iteration {c})")
        keys = jnp.stack([jax.random.fold_in(stream_key(s, "power"), c) for s in seeds])
        if i == 0:  # every checkpoint's probe has the same shapes
            probe_flops = count_flops(probe, run.checkpoints[c], probe_xs, keys).scaled(len(ckpts))
        S, P = probe(run.checkpoints[c], probe_xs, keys)
        S, P = np.asarray(S, np.float64), np.asarray(P, np.float64)
        per_ckpt.append([lag_profile(S[i], P[i], config.trim) for i in range(len(seeds))])
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
    """Per-seed arrays ``(ckpt, seed, lag)`` and the aggregates of THEORY.md §6.3."""
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
        probe_xs = jnp.stack([task.sample(stream_key(s, "probe"), config.probe_batch)[0]
                              for s in range(1, config.seeds + 1)])
        for name in todo:
            entry["models"][name] = run_s1_model(task, name, config, probe_xs, log)
            if out_dir is not None:
                write_parts(out_dir, "s1", config, tasks, earlier + time.perf_counter() - start)
    wall = earlier + time.perf_counter() - start
    if out_dir is not None:
        write_parts(out_dir, "s1", config, tasks, wall)
    return {"experiment": "s1", "config": dataclasses.asdict(config), "tasks": tasks,
            "wall_time_s": wall}
