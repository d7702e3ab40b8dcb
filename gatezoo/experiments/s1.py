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
window's previous end (converges to ``sigma_max``; tested against an SVD). With the default 4
steps, single values at lags 2-3 can be low by up to a few per cent where the top singular
values nearly tie, while the lag-wise medians and the fit move by < 0.4 % and 1e-5 (measured
against 80 steps on d_h = 64, T = 80). Under
``compat="paper-code"`` the release's conventions apply (THEORY.md §2.3): products in reversed
order, ``B`` from the post-update state, 5 plain power iterations on ``P`` (a lower bound of
``||P||_2``), and gate windows of ``l + 1`` factors.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.experiments.checks import check_experiment, clip_checkpoints
from gatezoo.experiments.seeded import SeededModels, over_seeds, train_with_checkpoints
from gatezoo.experiments.stats import mean_std, ols_slope, to_list
from gatezoo.linalg import singular_values
from gatezoo.models import cell_fn
from gatezoo.models.jacobians import state_jacobians

__all__ = ["S1Config", "S1_MODELS", "S1_TASKS", "sensitivity_probe", "lag_profile", "run_s1"]

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
      power_iters: power iterations per window end (exact mode; warm-started).
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
    power_iters: int = 4
    trim: float = 0.01
    compat: str = "exact"

    def __post_init__(self):
        check_experiment(
            self, label="S1", models=S1_MODELS, tasks=S1_TASKS,
            positive=("seeds", "steps", "seq_len", "hidden", "batch_size", "probe_batch"),
        )

    def with_steps(self, steps: int) -> S1Config:
        """The same config with ``steps`` and the checkpoints clipped to it (plus ``steps``)."""
        return dataclasses.replace(
            self, steps=steps, checkpoints=clip_checkpoints(self.checkpoints, steps)
        )


def _spectral_norms(P: jax.Array, v: jax.Array, iters: int, plain: bool):
    """Largest singular value of each ``P (n, d, d)``; ``v (n, d)`` start vectors.

    ``plain=False``: power iteration on ``P^T P`` (converges to ``sigma_max``), returning the
    vectors for a warm start. ``plain=True``: the release's ``v <- P v / ||P v||`` (5 times), whose
    ``||P v||`` tends to the largest ``|eigenvalue|``.
    """

    def body(_, v):
        w = jnp.einsum("nij,nj->ni", P, v)
        if not plain:
            # normalise between P and P^T: no squared norms, so no underflow at long lags
            w = w / (_norm(w)[:, None] + jnp.finfo(w.dtype).tiny)
            w = jnp.einsum("nji,nj->ni", P, w)
        return w / (_norm(w)[:, None] + jnp.finfo(w.dtype).tiny)

    v = jax.lax.fori_loop(0, iters, body, v)
    return _norm(jnp.einsum("nij,nj->ni", P, v)), v


def _norm(w: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis, scaled by the largest entry so that tiny vectors
    (long products of contracting Jacobians, in float32) do not underflow when squared."""
    m = jnp.max(jnp.abs(w), axis=-1, keepdims=True)
    safe = jnp.where(m > 0, m, 1.0)
    return m[..., 0] * jnp.sqrt(jnp.sum((w / safe) ** 2, axis=-1))


def sensitivity_probe(cell, xs: jax.Array, compat: str, power_iters: int, alpha_const=None):
    """``S[t, k]`` and ``P[t, k]`` for one sequence ``xs (T, d_x)``; both ``(T + 1, T + 1)``
    indexed by state times ``0..T``, NaN where the pair is not measured (``k >= t``; under
    paper-code also ``k = 0``).
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
    reversed_order = compat == "paper-code"
    plain = compat == "paper-code"
    iters = 5 if plain else power_iters
    # Windows starting at state k only need the end times t > k. Starts are split into blocks
    # and each block scans only from its first start on, so about (1/2 + 1/(2 nb)) of the
    # T x T products of one all-starts scan are formed.
    bounds = np.linspace(0, T, min(_START_BLOCKS, T) + 1).astype(int)
    S_rows = jnp.full((T, T), jnp.nan, J.dtype)  # [t - 1, k]
    # a window that starts at t - 1 is the single factor J_t: its vector is converged once here
    # (cheap, one matrix) so that longer windows start warm
    ones = jnp.ones((T, d), J.dtype) / jnp.sqrt(d)
    _, v_fresh = _spectral_norms(J, ones, _FRESH_ITERS, False)
    for k0, k1 in zip(bounds[:-1], bounds[1:], strict=True):
        if k1 <= k0:
            continue
        n = int(k1 - k0)
        slots = jnp.arange(k0, k1)
        eye = jnp.broadcast_to(jnp.eye(d, dtype=J.dtype), (n, d, d))
        v0 = jnp.ones((n, d), J.dtype) / jnp.sqrt(d)

        def step(carry, inp, slots=slots, v0=v0):
            P, v = carry
            Jt, t, vf = inp
            P = jnp.where((slots < t)[:, None, None],
                          (P @ Jt) if reversed_order else (Jt @ P), P)
            if not plain:
                v = jnp.where((slots == t - 1)[:, None], vf[None], v)
            # plain power iteration restarts from the same vector, like the release
            s_t, v_new = _spectral_norms(P, v0 if plain else v, iters, plain)
            return (P, v_new), s_t

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
    def one(params, xs):
        cell = models.model(params).cell
        return jax.vmap(
            lambda x: sensitivity_probe(cell, x, config.compat, config.power_iters, alpha_const)
        )(xs)

    # over seeds (params and probe batches both have a leading seed axis)
    return jax.jit(lambda params, xs: over_seeds(lambda a: one(*a), (params, xs)))


def run_s1_task(
    task_name: str, config: S1Config, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Trains and probes every model of ``config`` on one task; returns its summary."""
    from gatezoo.tasks import make_task

    task = make_task(task_name, seq_len=config.seq_len, channels=config.input_dim)
    seeds = list(range(1, config.seeds + 1))
    probe_xs = jnp.stack([
        task.sample(jax.random.key(s + 999), config.probe_batch)[0] for s in seeds
    ])
    out: dict[str, Any] = {}
    for name in config.models:
        t0 = time.perf_counter()
        opts = {"alpha": config.leaky_alpha} if name == "leaky" else {}
        models = SeededModels.build(name, task.input_dim, config.hidden, seeds,
                                    cell_options=opts)
        run = train_with_checkpoints(
            models, task, "sgd", config.learning_rate, config.checkpoints,
            batch_size=config.batch_size,
            batch_key=lambda s, i: jax.random.fold_in(jax.random.key(s + 123), i),
            progress=_every_hundred(lambda d, n: log(f"s1 {task_name}/{name}: step {d}/{n}")),
        )
        probe = _probe_fn(models, config, config.leaky_alpha if name == "leaky" else None)
        per_ckpt = []
        for c in sorted(run.checkpoints):
            S, P = probe(run.checkpoints[c], probe_xs)
            S, P = np.asarray(S, np.float64), np.asarray(P, np.float64)
            per_ckpt.append([lag_profile(S[i], P[i], config.trim) for i in range(len(seeds))])
        out[name] = _summarise_model(per_ckpt, sorted(run.checkpoints), seeds, run)
        out[name]["wall_time_s"] = time.perf_counter() - t0
        log(f"s1 {task_name}/{name}: {config.steps} steps x {len(seeds)} seeds, "
            f"{out[name]['wall_time_s']:.1f} s (training {run.wall_time_s:.1f} s)")
    return {"task": task_name, "baseline": task.baseline, "models": out}


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
    """Runs S1 on every task of ``config``; writes ``s1.json`` into ``out_dir`` when given."""
    start = time.perf_counter()
    tasks = {}
    for t in config.tasks:
        tasks[t] = run_s1_task(t, config, log)
        if out_dir is not None:  # after each task, so an interrupted run keeps what finished
            _write(out_dir, config, tasks, time.perf_counter() - start)
    summary = {"experiment": "s1", "config": dataclasses.asdict(config), "tasks": tasks,
               "wall_time_s": time.perf_counter() - start}
    if out_dir is not None:
        _write(out_dir, config, tasks, summary["wall_time_s"])
    return summary


def _write(out_dir, config, tasks, wall):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"experiment": "s1", "config": dataclasses.asdict(config), "tasks": tasks,
               "wall_time_s": wall}
    (out / "s1.json").write_text(json.dumps(to_list(summary)))
