r"""The first-order expansion check of the paper's appendix (docs/theory.md §6.2).

An untrained scalar- or vector-gated cell (every matrix ``N(0, 0.2^2)``, no biases, float64) runs
over one sinusoidal input sequence. Each step's state Jacobian splits as ``J_j = A_j + B_j``
(gate-frozen and gate-induced parts, docs/theory.md §2.1). For the whole window ``j = 1..T``:

.. math::
    F(\varepsilon) = \prod_{j=T}^{1} (A_j + \varepsilon B_j), \qquad
    L_1 = \frac{d F}{d \varepsilon}\Big|_{0}, \qquad
    E(\varepsilon) = \| F(\varepsilon) - F(0) - \varepsilon L_1 \|_F, \qquad
    C_2(\varepsilon) = E(\varepsilon) / \varepsilon^2 .

``E`` is second order, so its log-log slope over the smallest ``eps`` is 2. Per-step spectral
norms ``||A_j||_2``, ``||B_j||_2`` and ``r_j = ||B_j|| / ||A_j||`` measure how small the gate
correction is. ``compat="paper-code"`` uses the release's conventions (theory §2.3): ``B`` from
the post-update state, ``B_code = (I - Gamma_j) B``, and products in reversed order
``J_1 J_2 ... J_T``.

Seeds are vmapped: one compiled function computes every seed's statistics at once.

Example:
  >>> import jax
  >>> from gatezoo.experiments.appendix import AppendixConfig, run_appendix
  >>> with jax.enable_x64(True):
  ...     summary = run_appendix(AppendixConfig(seeds=3, seq_len=20, hidden=8))
  >>> round(summary["gates"]["vector"]["aggregate"]["slope_median"], 2)
  2.0
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatezoo.experiments.seeded import stream_key
from gatezoo.experiments.stats import iqr_inliers, mean_std, median_iqr, to_list
from gatezoo.flops import FlopCount, count_flops
from gatezoo.linalg import singular_values
from gatezoo.models import InitSpec, cell_fn, make_cell
from gatezoo.models.jacobians import (
    CONVENTIONS,
    deformed_product,
    loglog_slope,
    product_first_order,
    state_jacobians,
    truncation_error,
)

__all__ = ["EPS_GRID", "AppendixConfig", "appendix_signal", "gate_factors",
           "appendix_per_seed", "run_appendix"]

EPS_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
APPENDIX_GATES = ("scalar", "vector")


@dataclasses.dataclass(frozen=True)
class AppendixConfig:
    """Settings of the appendix check; the defaults are docs/theory.md §6.2's.

    Attributes:
      gates: which gated cells to check (``"scalar"``, ``"vector"``).
      seeds: number of seeds, run as seeds ``0 .. seeds - 1``.
      seq_len: ``T``, the window length (one product of ``T`` factors).
      hidden, input_dim: ``d_h`` and ``d_x``.
      init_std: std of the Gaussian initialisation of every matrix.
      noise_std: std of the additive input noise.
      t_max: the input's time grid is ``linspace(0, t_max, T)``.
      eps_grid: the deformation strengths; the first ``slope_points`` give the small-eps slope.
      compat: ``"exact"`` or ``"paper-code"`` (docs/theory.md §2.3).
    """

    gates: tuple[str, ...] = APPENDIX_GATES
    seeds: int = 20
    seq_len: int = 100
    hidden: int = 64
    input_dim: int = 3
    init_std: float = 0.2
    noise_std: float = 0.05
    t_max: float = 12.0
    eps_grid: tuple[float, ...] = EPS_GRID
    slope_points: int = 5
    compat: str = "exact"

    def __post_init__(self):
        for g in self.gates:
            if g not in APPENDIX_GATES:
                raise ValueError(f"unknown appendix gate {g!r}; choose from {APPENDIX_GATES}")
        if self.compat not in CONVENTIONS:
            raise ValueError(f"unknown compat {self.compat!r}; choose one of {CONVENTIONS}")
        for name in ("seeds", "seq_len", "hidden", "input_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 2 <= self.slope_points <= len(self.eps_grid):
            raise ValueError(
                f"slope_points must lie in [2, {len(self.eps_grid)}], got {self.slope_points}"
            )


def appendix_signal(key: jax.Array, config: AppendixConfig) -> jax.Array:
    r"""The input sequence ``(T, d_x)``: ``x_{t,k} = \sin(f_k t + \varphi_k) + n_{t,k}``.

    ``t`` runs over ``linspace(0, t_max, T)``, ``f_k = linspace(0.03, 0.09, d_x)[k]``,
    ``varphi_k ~ N(0, 1)`` and ``n ~ N(0, noise_std^2)``.
    """
    k_phase, k_noise = jax.random.split(key)
    t = jnp.linspace(0.0, config.t_max, config.seq_len)
    freqs = jnp.linspace(0.03, 0.09, config.input_dim)
    phases = jax.random.normal(k_phase, (config.input_dim,))
    noise = config.noise_std * jax.random.normal(k_noise, (config.seq_len, config.input_dim))
    return jnp.sin(t[:, None] * freqs[None, :] + phases[None, :]) + noise


def _make(gate: str, seed: int, config: AppendixConfig):
    return make_cell(
        gate, config.input_dim, config.hidden, rngs=nnx.Rngs(params=stream_key(seed, "cell")),
        init=InitSpec(scheme="normal", std=config.init_std), use_bias=False,
        param_dtype=jnp.float64,
    )


def gate_factors(cell: nnx.Module, xs: jax.Array, compat: str = "exact"):
    """Per-step factors ``A_j, B_j`` (each ``(T, d_h, d_h)``) of one sequence ``xs (T, d_x)``.

    The forward pass starts from ``h_0 = 0``; factor ``j`` is the closed-form split of
    :func:`gatezoo.models.jacobians.state_jacobians` at ``(h_{j-1}, x_j)``. Under
    ``compat="paper-code"`` ``B`` is the release's ``(I - Gamma_j) B`` (docs/theory.md §2.3 item 1).
    """
    fn = cell_fn(cell)
    h0 = jnp.zeros((cell.hidden_features,), xs.dtype)

    def forward(h, x):
        h_new, _ = fn.step(fn.params, h, x)
        return h_new, h

    _, h_prev = jax.lax.scan(forward, h0, xs)  # h_prev[j] = h_{j-1}
    return jax.vmap(lambda h, x: state_jacobians(cell, h, x, compat=compat))(h_prev, xs)


def appendix_per_seed(a: jax.Array, b: jax.Array, eps_grid: jax.Array, compat: str):
    """Statistics of one window from its factors ``a, b`` ``(T, d, d)``.

    Returns a dict of arrays: ``E``, ``C2`` over ``eps_grid``; Frobenius norms of ``F(0)``,
    ``F(1)``, ``L1`` and ``F(0) + L1``; per-step spectral norms ``norm_A``, ``norm_B`` and
    ratios ``r``. ``L1`` is the Fréchet derivative of the product at ``eps = 0``.
    """
    f0, l1 = product_first_order(a, b, compat=compat)
    e = truncation_error(a, b, eps_grid, compat=compat, norm="fro")
    f1 = deformed_product(a, b, 1.0, compat=compat)
    norm_a = singular_values(a)[..., 0]
    norm_b = singular_values(b)[..., 0]
    return {
        "E": e,
        "C2": e / eps_grid**2,
        "F0_norm": jnp.linalg.norm(f0),
        "F1_norm": jnp.linalg.norm(f1),
        "L1_norm": jnp.linalg.norm(l1),
        "F0_plus_L1_norm": jnp.linalg.norm(f0 + l1),
        "norm_A": norm_a,
        "norm_B": norm_b,
        "r": norm_b / norm_a,
    }


def _gate_stats(gate: str, config: AppendixConfig) -> tuple[dict[str, np.ndarray], FlopCount]:
    """Per-seed statistics of one gate type, all seeds in one vmapped, jitted call, and that
    call's operation count."""
    seeds = list(range(config.seeds))
    cells = [_make(gate, s, config) for s in seeds]
    graphdef, _, rest = nnx.split(cells[0], nnx.Param, ...)
    params = jax.tree_util.tree_map(
        lambda *p: jnp.stack(p), *[nnx.state(c, nnx.Param) for c in cells]
    )
    # the signal's stream is not the cell's: ``nnx.Rngs(key)`` draws ``fold_in(key, i)``, so a
    # signal key ``fold_in(key(s), 1)`` would be the cell's second parameter draw
    keys = jnp.stack([stream_key(s, "probe_batch") for s in seeds])
    eps_grid = jnp.asarray(config.eps_grid, jnp.float64)

    def one(p, key):
        xs = appendix_signal(key, config).astype(jnp.float64)
        a, b = gate_factors(nnx.merge(graphdef, p, rest), xs, config.compat)
        return appendix_per_seed(a, b, eps_grid, config.compat)

    fn = jax.jit(jax.vmap(one))
    return {k: np.asarray(v) for k, v in fn(params, keys).items()}, count_flops(fn, params, keys)


def summarise_gate(stats: dict[str, np.ndarray], config: AppendixConfig) -> dict[str, Any]:
    """Per-seed scalars, the outlier rule and the aggregates of docs/theory.md §6.2 for one gate."""
    eps = np.asarray(config.eps_grid)
    n = config.slope_points
    e = stats["E"]
    slopes = np.array([float(loglog_slope(eps[:n], row[:n])) for row in e])
    e1 = e[:, -1] if eps[-1] == 1.0 else np.full(len(e), np.nan)
    r = stats["r"]
    per_seed = {
        "seed": list(range(config.seeds)),
        "E": e,
        "C2": stats["C2"],
        "slope": slopes,
        "E1": e1,
        "E1_over_F1": e1 / stats["F1_norm"],
        "E1_over_F0_plus_L1": e1 / stats["F0_plus_L1_norm"],
        "L1_over_F0": stats["L1_norm"] / stats["F0_norm"],
        "F0_norm": stats["F0_norm"],
        "F1_norm": stats["F1_norm"],
        "r_median": np.median(r, axis=1),
        "r_p90": np.percentile(r, 90, axis=1),
        "r_p99": np.percentile(r, 99, axis=1),
        "r_max": r.max(axis=1),
        "norm_A": stats["norm_A"],
        "norm_B": stats["norm_B"],
        "r": r,
    }
    # outlier rule of the release: E(1) outside Tukey's 1.5 IQR fences, or a non-finite slope
    keep = iqr_inliers(e1) & np.isfinite(slopes)
    if not keep.any():
        keep = np.isfinite(slopes)
    ek, c2k = e[keep], stats["C2"][keep]
    e_agg, c2_agg = median_iqr(ek), median_iqr(c2k)
    a_agg, b_agg = mean_std(stats["norm_A"][keep]), mean_std(stats["norm_B"][keep])
    sk = slopes[keep]
    aggregate = {
        "n_kept": int(keep.sum()),
        "E_median": e_agg["median"], "E_q25": e_agg["q25"], "E_q75": e_agg["q75"],
        "C2_median": c2_agg["median"], "C2_q25": c2_agg["q25"], "C2_q75": c2_agg["q75"],
        "slope_mean": float(np.mean(sk)), "slope_std": float(np.std(sk)),
        "slope_median": float(np.median(sk)),
        "E1_median": float(np.median(e1[keep])),
        "E1_over_F1_median": float(np.median(per_seed["E1_over_F1"][keep])),
        "E1_over_F0_plus_L1_median": float(np.median(per_seed["E1_over_F0_plus_L1"][keep])),
        "L1_over_F0_median": float(np.median(per_seed["L1_over_F0"][keep])),
        "norm_A_mean": a_agg["mean"], "norm_A_std": a_agg["std"],
        "norm_B_mean": b_agg["mean"], "norm_B_std": b_agg["std"],
        "r_median_of_medians": float(np.median(per_seed["r_median"][keep])),
        "r_p90_median": float(np.median(per_seed["r_p90"][keep])),
        "r_max_max": float(np.max(per_seed["r_max"][keep])),
    }
    return {
        "eps": eps,
        "per_seed": per_seed,
        "outliers": [s for s, k in zip(per_seed["seed"], keep, strict=False) if not k],
        "aggregate": aggregate,
    }


def run_appendix(
    config: AppendixConfig = AppendixConfig(), out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Runs the check for every gate in ``config.gates``; writes ``appendix.json`` and the
    per-step ratio CSVs ``appendix_<gate>_ratios.csv`` into ``out_dir`` when given.

    Needs float64: run under ``jax.enable_x64(True)`` (the CLI does).

    Returns:
      ``{"experiment": "appendix", "config": ..., "gates": {gate: summary}, "wall_time_s": ...}``
      with each gate's ``per_seed`` arrays, ``outliers`` and ``aggregate`` statistics.
    """
    if not jax.config.jax_enable_x64:
        raise ValueError("the appendix check runs in float64: wrap it in jax.enable_x64(True)")
    done = _finished(out_dir, config)
    if done is not None:
        return done
    start = time.perf_counter()
    gates = {}
    for gate in config.gates:
        t0 = time.perf_counter()
        stats, flops = _gate_stats(gate, config)
        gates[gate] = summarise_gate(stats, config)
        gates[gate]["wall_time_s"] = time.perf_counter() - t0
        gates[gate]["flops"] = flops.as_dict()
    summary = {
        "experiment": "appendix",
        "config": dataclasses.asdict(config),
        "gates": gates,
        "wall_time_s": time.perf_counter() - start,
    }
    if out_dir is not None:
        write_appendix(summary, out_dir)
    return summary


def _finished(out_dir: str | Path | None, config: AppendixConfig) -> dict[str, Any] | None:
    """The ``appendix.json`` of an earlier run of ``config`` in ``out_dir``, if there is one."""
    path = None if out_dir is None else Path(out_dir) / "appendix.json"
    if path is None or not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if doc.get("config") != to_list(dataclasses.asdict(config)):
        raise ValueError(f"{str(path)!r} holds an appendix run with other settings; choose "
                         "another --out, or the same settings to continue it")
    return doc


def write_appendix(summary: dict[str, Any], out_dir: str | Path) -> None:
    """Writes ``appendix.json`` and one ``appendix_<gate>_ratios.csv`` per gate."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "appendix.json").write_text(json.dumps(to_list(summary), indent=1))
    for gate, g in summary["gates"].items():
        ps = g["per_seed"]
        with open(out / f"appendix_{gate}_ratios.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["seed", "step", "norm_A", "norm_B", "r"])
            for i, seed in enumerate(ps["seed"]):
                for j in range(len(ps["r"][i])):
                    w.writerow([seed, j + 1, f"{ps['norm_A'][i][j]:.10g}",
                                f"{ps['norm_B'][i][j]:.10g}", f"{ps['r'][i][j]:.10g}"])
