"""Figures and table of the appendix check (docs/theory.md §6.2), built from ``appendix.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gatezoo.report.figures import ReportFigure, color_for, finite, new_figure, render
from gatezoo.report.page import Table

__all__ = ["appendix_figures", "appendix_table", "load_appendix"]


def load_appendix(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "appendix.json").read_text())


def _truncation_figure(gate: str, g: dict[str, Any], summary: dict[str, Any]) -> ReportFigure:
    """E(eps) against eps, log-log, with the slope-2 reference."""
    eps, agg = finite(g["eps"]), g["aggregate"]
    compat, n_small = summary["config"]["compat"], summary["config"]["slope_points"]
    fig, ax = new_figure()
    ax = ax[0, 0]
    med, lo, hi = finite(agg["E_median"]), finite(agg["E_q25"]), finite(agg["E_q75"])
    ax.fill_between(eps, lo, hi, alpha=0.25, color=color_for(0), label="IQR over seeds")
    ax.loglog(eps, med, "o-", color=color_for(0), label="median E(eps)")
    ref = med[0] * (eps / eps[0]) ** 2
    ax.loglog(eps, ref, "k--", lw=1, label="slope 2 reference")
    ax.set_xlabel("eps")
    ax.set_ylabel("E(eps) = ||F(eps) - F(0) - eps L1||_F")
    ax.set_title(f"{gate} gate: truncation error ({compat})")
    ax.legend(fontsize=8)
    return ReportFigure(
        f"appendix_{gate}_E", f"{gate} gate: first-order truncation error E(eps)",
        f"Median (line) and interquartile band (shaded) over {agg['n_kept']} kept seeds of "
        "the truncation error of the first-order expansion of the Jacobian product over the "
        f"whole window, against the deformation eps, log-log. The dashed line has slope 2: a "
        f"second-order remainder runs parallel to it as eps -> 0. Small-eps slope (first "
        f"{n_small} points): {agg['slope_mean']:.4f} +/- {agg['slope_std']:.4f}.",
        {"eps": eps.tolist(), "E_median": med.tolist(), "E_q25": lo.tolist(),
         "E_q75": hi.tolist()},
        render(fig),
    )


def _constant_figure(gate: str, g: dict[str, Any], summary: dict[str, Any]) -> ReportFigure:
    """C2(eps) = E(eps) / eps^2 against eps."""
    eps, agg = finite(g["eps"]), g["aggregate"]
    fig, ax = new_figure()
    ax = ax[0, 0]
    med, lo, hi = finite(agg["C2_median"]), finite(agg["C2_q25"]), finite(agg["C2_q75"])
    ax.fill_between(eps, lo, hi, alpha=0.25, color=color_for(1))
    ax.semilogx(eps, med, "o-", color=color_for(1), label="median C2(eps)")
    ax.set_xlabel("eps")
    ax.set_ylabel("C2(eps) = E(eps) / eps^2")
    ax.set_title(f"{gate} gate: second-order constant")
    ax.legend(fontsize=8)
    return ReportFigure(
        f"appendix_{gate}_C2", f"{gate} gate: second-order constant C2(eps)",
        "Median and interquartile band over seeds of C2 = E/eps^2 against eps (log x-axis). "
        "A flat curve at small eps means the remainder is exactly second order; where it "
        "bends (large eps) higher orders of the gate correction take over.",
        {"eps": eps.tolist(), "C2_median": med.tolist(), "C2_q25": lo.tolist(),
         "C2_q75": hi.tolist()},
        render(fig),
    )


def _norms_figure(gate: str, g: dict[str, Any], summary: dict[str, Any]) -> ReportFigure:
    """Per-step norms of A_j and B_j, with r_j on a twin axis."""
    agg, ps = g["aggregate"], g["per_seed"]
    fig, ax = new_figure(width=6.4)
    ax = ax[0, 0]
    a_m, a_s = finite(agg["norm_A_mean"]), finite(agg["norm_A_std"])
    b_m, b_s = finite(agg["norm_B_mean"]), finite(agg["norm_B_std"])
    steps = np.arange(1, len(a_m) + 1)
    for m, s, lab, c in ((a_m, a_s, "||A_j||_2", 0), (b_m, b_s, "||B_j||_2", 1)):
        ax.plot(steps, m, color=color_for(c), label=lab)
        ax.fill_between(steps, m - s, m + s, color=color_for(c), alpha=0.2)
    ax.set_xlabel("step j")
    ax.set_ylabel("spectral norm (mean +/- std over seeds)")
    r = np.array([finite(row) for row in ps["r"]])
    r_mean = np.nanmean(r, axis=0)
    ax2 = ax.twinx()
    ax2.plot(steps, r_mean, color=color_for(2), ls=":", label="r_j = ||B_j||/||A_j|| (mean)")
    ax2.set_ylabel("r_j", color=color_for(2))
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper right")
    ax.set_title(f"{gate} gate: per-step Jacobian parts")
    return ReportFigure(
        f"appendix_{gate}_norms", f"{gate} gate: per-step norms of A_j and B_j",
        "Spectral norms of the gate-frozen Jacobian A_j and the gate-induced part B_j at "
        "each step (mean, band = +/- one std over seeds; left axis) and their ratio r_j "
        "(dotted, right axis). r_j well below 1 is what makes the first-order expansion "
        f"accurate; median of per-seed medians {agg['r_median_of_medians']:.3g}.",
        {"step": steps.tolist(), "norm_A_mean": a_m.tolist(), "norm_A_std": a_s.tolist(),
         "norm_B_mean": b_m.tolist(), "norm_B_std": b_s.tolist(),
         "r_mean": r_mean.tolist()},
        render(fig),
    )


def _ratio_histogram(gate: str, g: dict[str, Any], summary: dict[str, Any]) -> ReportFigure:
    """Histogram of r_j, one outline per seed."""
    agg = g["aggregate"]
    r = np.array([finite(row) for row in g["per_seed"]["r"]])
    fig, ax = new_figure()
    ax = ax[0, 0]
    bins = np.linspace(0, max(np.nanmax(r), 1e-12), 31)
    for i, row in enumerate(r):
        ax.hist(row, bins=bins, histtype="step", alpha=0.5, color=color_for(i))
    ax.axvline(agg["r_median_of_medians"], color="k", ls="--", lw=1,
               label="median of per-seed medians")
    ax.set_xlabel("r_j = ||B_j||_2 / ||A_j||_2")
    ax.set_ylabel("steps")
    ax.legend(fontsize=8)
    ax.set_title(f"{gate} gate: distribution of r_j")
    return ReportFigure(
        f"appendix_{gate}_ratio_hist", f"{gate} gate: histogram of r_j",
        "Histogram of the per-step ratio r_j over the window, one outline per seed. Mass "
        "far below 1 means the gate-induced part is a small correction at every step.",
        {"bins": bins.tolist(), "r": r.tolist()},
        render(fig),
    )


def appendix_figures(summary: dict[str, Any]) -> list[ReportFigure]:
    """Four figures per gate: E(eps), C2(eps), per-step norms with r_j, and the r_j histogram."""
    builders = (_truncation_figure, _constant_figure, _norms_figure, _ratio_histogram)
    return [build(gate, g, summary) for gate, g in summary["gates"].items() for build in builders]


def appendix_table(summary: dict[str, Any]) -> Table:
    rows = []
    for gate, g in summary["gates"].items():
        a = g["aggregate"]
        rows.append([
            gate, summary["config"]["compat"], f"{a['n_kept']}/{len(g['per_seed']['seed'])}",
            a["slope_mean"], a["slope_std"], a["slope_median"], a["E1_over_F1_median"],
            a["E1_over_F0_plus_L1_median"], a["L1_over_F0_median"], a["r_median_of_medians"],
            a["r_p90_median"],
        ])
    return Table(
        ["gate", "compat", "seeds kept", "slope mean", "slope std", "slope median",
         "E(1)/||F(1)||", "E(1)/||F(0)+L1||", "||L1||/||F(0)||", "median r_j", "median p90 r_j"],
        rows, title="First-order expansion check (theory §6.2)",
    )
