"""The figures of a compare report, one builder per figure.

Each builder takes the :class:`~gatezoo.report.compare_report.CompareRuns` (and the task's
trivial baseline where it draws one) and returns a
:class:`~gatezoo.report.figures.ReportFigure` or ``None`` when the runs hold nothing to draw.
Figures are sized to be read at 1400 px: at most six curves per panel, one legend per figure
outside the panels, and log axes clipped to a stated range.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from gatezoo.metric_schema import metric_name, series_name
from gatezoo.report.figures import ReportFigure, color_for, new_figure, render
from gatezoo.report.runfiles import RunMetrics, lag_series

__all__ = ["loss_figure", "tuning_figure", "lag_figure", "attribution_figure",
           "gate_correction_figure",
           "analogies_figure", "anisotropy_figure", "variant", "smooth", "LAG_CLIP"]

#: lag profiles are drawn within this range (relative gain, lag 1 = 1); beyond it they are cut
LAG_CLIP = (1e-6, 10.0)

_STYLE = {"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10}


def variant(entry: dict[str, Any]) -> str:
    """Optimizer (and schedule, when not constant) label of a grid cell."""
    sch = entry.get("schedule", "constant")
    return entry["optimizer"] + ("" if sch == "constant" else f"/{sch}")


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    y = np.asarray(y, np.float64)
    if window <= 1 or y.size == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    lo = np.maximum(np.arange(1, y.size + 1) - window, 0)
    return (c[1:] - c[lo]) / (np.arange(1, y.size + 1) - lo)


def _panels(n: int, nrows: int = 1, width: float = 4.6, height: float = 3.6):
    ncols = n if nrows > 1 else min(n, 3)
    rows = nrows if nrows > 1 else (n + ncols - 1) // ncols
    fig, axes = new_figure(ncols=ncols, nrows=rows, width=width, height=height)
    flat = list(axes.ravel())
    for ax in flat[n * (nrows if nrows > 1 else 1):]:
        ax.axis("off")
    return fig, axes


def _label_cell_panel(ax, cell: str, xlabel: str, ylabel: str, base: float | None,
                      legend: dict[str, Any]) -> None:
    """Title and axis labels of one cell's panel, with the task's trivial baseline dashed."""
    if base is not None:
        legend["trivial baseline"] = ax.axhline(base, color="k", ls="--", lw=1)
    ax.set_title(cell)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _shared_legend(fig, handles_labels: dict[str, Any], ncol: int = 6) -> None:
    """One legend for the whole figure, below the panels."""
    if not handles_labels:
        fig.tight_layout()
        return
    fig.legend(list(handles_labels.values()), list(handles_labels), loc="lower center",
               ncol=min(ncol, len(handles_labels)), frameon=False, bbox_to_anchor=(0.5, 0.0))
    rows = (len(handles_labels) - 1) // ncol + 1
    fig.tight_layout(rect=(0, min(0.06 * rows / fig.get_figheight() * 3.6, 0.3), 1, 1))


def _finish(fig) -> bytes:
    return render(fig, tight=False)  # keep the room _shared_legend reserved


def _last_tracked(m: RunMetrics, base: str):
    """Lag profile at the last tracked step: ``(lags, step, mean over seeds)``."""
    lags, steps, stack = lag_series(m, base)
    if lags.size == 0 or steps.size == 0:  # never tracked, or never finite (NaN/Inf by design)
        return np.zeros(0, int), None, np.zeros(0)
    with np.errstate(all="ignore"):
        return lags, int(steps[-1]), np.nanmean(stack[-1], axis=-1)


def loss_figure(cr, base: float | None) -> ReportFigure:
    """Training loss (smoothed) and held-out loss against step, one panel per cell."""
    cells, variants = cr.cells, cr.variants
    with plt.rc_context(_STYLE):
        fig, axes = _panels(len(cells))
        flat = list(axes.ravel())
        data: dict[str, Any] = {}
        legend: dict[str, Any] = {}
        for ax, cell in zip(flat, cells, strict=False):
            for name, (e, m, _) in cr.runs.items():
                if e["cell"] != cell:
                    continue
                steps, loss = m.seed_mean("loss")
                col = color_for(variants.index(variant(e)))
                (line,) = ax.semilogy(steps, smooth(loss, 10), color=col, lw=1.5)
                legend[variant(e)] = line
                es, el = m.seed_mean("loss", "eval")
                if es.size:
                    ax.semilogy(es, el, "o", color=col, ms=4)
                data[name] = {"step": steps.tolist(), "loss_mean": loss.tolist(),
                              "eval_step": es.tolist(), "eval_loss_mean": el.tolist()}
            _label_cell_panel(ax, cell, "step", "loss", base, legend)
        _shared_legend(fig, legend)
        png = _finish(fig)
    return ReportFigure(
        "loss_curves", "Training loss per cell and optimizer (chosen learning rates)",
        "Training loss (mean over seeds, 10-step moving average; dots: held-out evaluation) "
        "against step, one panel per cell, one colour per optimizer, each at the learning rate "
        "its tuning chose. " + (
            "The dashed line is the task's trivial baseline: a curve that stays on it has "
            "learned nothing; the lower and earlier a curve falls below it, the better."
            if base is not None else "The task's trivial baseline is not known here, so none "
            "is drawn."),
        data, png,
    )


def tuning_figure(cr, base: float | None) -> ReportFigure | None:
    """Held-out loss against learning rate per cell x optimizer, the chosen rate marked."""
    tuned = {n: (e, r["tuning"]) for n, (e, _, r) in cr.runs.items()
             if r is not None and r.get("tuning", {}).get("searched")}
    if not tuned:
        return None
    cells, variants = cr.cells, cr.variants
    with plt.rc_context(_STYLE):
        fig, axes = _panels(len(cells))
        flat = list(axes.ravel())
        data: dict[str, Any] = {}
        legend: dict[str, Any] = {}
        top = 2.0 * base if base else None
        for ax, cell in zip(flat, cells, strict=False):
            for name, (e, t) in tuned.items():
                if e["cell"] != cell:
                    continue
                col = color_for(variants.index(variant(e)))
                rates = np.asarray(t["rates"])
                loss = np.asarray(t["eval_loss_mean"], np.float64)
                div = (np.asarray(t["diverged_at"]) >= 0).any(axis=1)
                shown = np.where(div | ~np.isfinite(loss), np.nan, loss)
                if top is not None:
                    shown = np.minimum(shown, top)
                (line,) = ax.semilogx(rates, shown, "-o", color=col, ms=4)
                legend[variant(e)] = line
                if div.any():
                    y = top if top is not None else np.nanmax(shown)
                    ax.plot(rates[div], np.full(div.sum(), y), "x", color=col, ms=8, mew=2)
                if t.get("chosen") is not None:
                    k = t["chosen"]
                    ax.plot(rates[k], shown[k], "*", color=col, ms=16, mec="k")
                data[name] = {"rates": rates.tolist(), "eval_loss_mean": loss.tolist(),
                              "diverged": div.tolist(), "chosen": t.get("chosen")}
            _label_cell_panel(ax, cell, "learning rate", "held-out loss (end)", base, legend)
        _shared_legend(fig, legend)
        png = _finish(fig)
    return ReportFigure(
        "tuning_curves", "Learning-rate tuning: held-out loss against rate",
        "Per cell (panel) and optimizer (colour): the held-out loss at the end of training, "
        "mean over seeds, for each learning-rate trial of the log-uniform search; the star is "
        "the rate chosen (lowest held-out loss among trials with no diverged seed), x marks "
        "trials that diverged. "
        + ("Losses above twice the trivial baseline are clipped there. " if top is not None
           else "")
        + "A star at the end of its grid means the search range should be widened.",
        data, png,
    )


# (series, line style, label): the profile the predictors are fitted to, then the predictors
_LAG_LINES = (
    (series_name("transport", None, "propagated"), "-", "measured (propagated from the last step)"),
    (series_name("transport", None, "frozen"), "--", "gate-frozen transport"),
    (series_name("transport", None, "weighted"), "-.", "adjoint-weighted retention"),
    (series_name("transport", None, "retention"), ":", "neuron mean of prod(1-alpha)"),
)
_ERROR_SIGNAL = series_name("lags", None, "ratio")
_G1_OVER_G0 = metric_name("expansion", None, "g1_over_g0")
_PARTS = (("diagonal", "diagonal retention"), ("mixing", "recurrent mixing"),
          ("gate", "gate part B"))


def _log_limits(values: list[np.ndarray]) -> tuple[float, float]:
    """Log-axis limits that hold every finite positive value (a factor 1.5 of margin), within
    :data:`LAG_CLIP`."""
    v = np.concatenate([np.ravel(x) for x in values]) if values else np.zeros(0)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return LAG_CLIP
    return max(v.min() / 1.5, LAG_CLIP[0]), min(v.max() * 1.5, LAG_CLIP[1])


def _draw_lag_panel(ax, cr, cell: str, data: dict, legend: dict) -> list[np.ndarray]:
    drawn = []
    for name, (e, m, _) in cr.runs.items():
        if e["cell"] != cell:
            continue
        col = color_for(cr.variants.index(variant(e)))
        for key, ls, _label in _LAG_LINES:
            lags, step, prof = _last_tracked(m, key)
            if lags.size == 0 and key == _LAG_LINES[0][0]:  # a run from before 'propagated'
                key = _ERROR_SIGNAL
                lags, step, prof = _last_tracked(m, key)
            if lags.size == 0:
                continue
            (line,) = ax.semilogy(lags, np.clip(prof, *LAG_CLIP), ls, color=col, marker=".")
            if ls == "-":
                legend.setdefault(variant(e), line)
            drawn.append(prof)
            data[name][key] = {"lags": lags.tolist(), "step": step, "mean": prof.tolist()}
    return drawn


def lag_figure(cr) -> ReportFigure | None:
    """The error signal by lag beside the theory's three predictors, one panel per cell."""
    from matplotlib.lines import Line2D

    cells = cr.cells
    data: dict[str, Any] = {n: {} for n in cr.runs}
    with plt.rc_context(_STYLE):
        fig, axes = _panels(len(cells), width=4.2, height=3.6)
        legend: dict[str, Any] = {}
        drawn = {c: _draw_lag_panel(ax, cr, c, data, legend)
                 for ax, c in zip(axes.ravel(), cells, strict=False)}
        if not any(drawn.values()):
            plt.close(fig)
            return None
        for ax, cell in zip(axes.ravel(), cells, strict=False):
            ax.set_ylim(*_log_limits(drawn[cell]))
            ax.set_title(cell)
            ax.set_xlabel("lag l")
        axes.ravel()[0].set_ylabel("relative to lag 0")
        for _, ls, label in _LAG_LINES:
            legend[label] = Line2D([], [], color="k", ls=ls)
        _shared_legend(fig, legend, ncol=4)
        png = _finish(fig)
    return ReportFigure(
        "effective_lr_by_lag", "The error signal by lag against the theory's predictions",
        "At the last tracked step (mean over seeds), one panel per cell, one colour per "
        "optimizer, every curve relative to lag 0. Solid: the last step's error signal "
        "propagated back, ||lambda_T^T J_T...J_T-l+1|| (the training error signal "
        "||dL/dh_T-l|| when the loss has only a last-step term). Dashed: the gate-frozen "
        "transport ||lambda_T^T A_T...A_T-l+1||, the theory's zeroth-order prediction (gates "
        "held at their values). Dash-dot: the adjoint-weighted retention ||lambda_T * "
        "prod(1 - alpha)||, the gates' diagonal alone. Dotted: the neuron mean of "
        "prod(1 - alpha), which weighs fast and slow neurons alike and so falls below the "
        "others once training makes the gates heterogeneous. Fitted powers and R^2 are in the "
        "Findings; each panel's log axis spans its data.",
        data, png,
    )


def _gains(m: RunMetrics) -> list[float] | None:
    vals = []
    for tag, _ in _PARTS:
        st, v = m.seed_mean(metric_name("transport", None, f"{tag}_gain"))
        if not st.size or not np.isfinite(v[-1]):
            return None
        vals.append(float(v[-1]))
    return vals


def attribution_figure(cr) -> ReportFigure | None:
    """The error signal's log-gain per lag by part, one panel per cell."""
    rows = {c: [(n, variant(e), _gains(m)) for n, (e, m, _) in cr.runs.items()
                if e["cell"] == c] for c in cr.cells}
    rows = {c: [r for r in v if r[2] is not None] for c, v in rows.items()}
    cells = [c for c in cr.cells if rows[c]]
    if not cells:
        return None
    data: dict[str, Any] = {}
    with plt.rc_context(_STYLE):
        fig, axes = _panels(len(cells), width=4.2, height=3.4)
        legend: dict[str, Any] = {}
        for ax, cell in zip(axes.ravel(), cells, strict=False):
            x = np.arange(len(rows[cell]))
            for k, (_tag, label) in enumerate(_PARTS):
                vals = [r[2][k] for r in rows[cell]]
                legend[label] = ax.bar(x + (k - 1) * 0.27, vals, 0.27, color=color_for(k))
            for name, var, gains in rows[cell]:
                data[name] = {"variant": var} | {t: v for (t, _), v in zip(_PARTS, gains,
                                                                          strict=True)}
            ax.axhline(0.0, color="k", lw=0.8)
            ax.set_xticks(x, [r[1] for r in rows[cell]], rotation=20)
            ax.set_title(cell)
        axes.ravel()[0].set_ylabel("log-gain per lag (nats)")
        _shared_legend(fig, legend, ncol=3)
        png = _finish(fig)
    return ReportFigure(
        "persistence_attribution", "What carries the error signal back in time",
        "At the last tracked step (mean over seeds), per cell and optimizer: the propagated "
        "error signal's log-gain per step of lag (mean over the window's lags, nats; negative: "
        "decay) split exactly into the part of the gates' diagonal retention prod(1 - alpha), "
        "of the recurrent weights' mixing (the gate-frozen Jacobian A beyond its diagonal) and "
        "of the gate-induced part B (the full Jacobian minus A). The three bars add to the "
        "total; a positive bar sustains the signal against the others' decay. The Findings "
        "state each part's share of the total.",
        data, png,
    )


def gate_correction_figure(cr) -> ReportFigure | None:
    """||G1|| / ||G0|| over training, one panel per optimizer, one colour per cell."""
    rows = [(n, e, m) for n, (e, m, _) in cr.runs.items()
            if m.get(_G1_OVER_G0) is not None]
    if not rows:
        return None
    cells, variants = cr.cells, cr.variants
    with plt.rc_context(_STYLE):
        fig, axes = _panels(len(variants))
        flat = list(axes.ravel())
        data: dict[str, Any] = {}
        legend: dict[str, Any] = {}
        for ax, var in zip(flat, variants, strict=False):
            for name, e, m in rows:
                if variant(e) != var:
                    continue
                st, r = m.seed_mean(_G1_OVER_G0)
                (line,) = ax.semilogy(st, r, color=color_for(cells.index(e["cell"])))
                legend[e["cell"]] = line
                data[name] = {"step": st.tolist(), "g1_over_g0_mean": r.tolist()}
            ax.set_title(var)
            ax.set_xlabel("step")
            ax.set_ylabel("||G1|| / ||G0||")
        _shared_legend(fig, legend)
        png = _finish(fig)
    return ReportFigure(
        "gate_correction", "First-order gate correction of the gradient over training",
        "||G1|| / ||G0|| (mean over seeds) against step, one panel per optimizer, one "
        "colour per gated cell: the size of the gate-induced first-order part of the "
        "gradient relative to the gates-frozen part. Small but non-zero and persistent "
        "values are the 'small but systematic' corrections of the theory.",
        data, png,
    )


# (panel key, optimizers compared, gate metric, optimizer metric, log-y, title)
_ANALOGIES = (
    ("momentum", ("momentum", "nesterov"), "beta_gate", "beta_optimizer", False,
     "momentum: 1 - mean(alpha) vs beta (--)"),
    ("schedule", ("sgd",), "gate_step", "lr", True, "schedule: lr x mean(alpha) vs lr (--)"),
    ("adam", ("adam", "adamw", "rmsprop"), "gate_anisotropy", "adam_anisotropy", True,
     "Adam: gate vs Adam max/min per row (--)"),
)


def analogies_figure(cr) -> ReportFigure | None:
    """The three gate-vs-optimizer analogies over training, one panel each."""
    def runs_of(kinds):
        picked = [(n, e, m) for n, (e, m, _) in cr.runs.items() if e["optimizer"] in kinds]
        return picked or [(n, e, m) for n, (e, m, _) in cr.runs.items()]

    cells = cr.cells
    with plt.rc_context(_STYLE):
        fig, axes = new_figure(ncols=3, width=4.6, height=3.6)
        data: dict[str, Any] = {key: {} for key, *_ in _ANALOGIES}
        legend: dict[str, Any] = {}
        for ax, (key, kinds, gate_metric, opt_metric, logy, title) in zip(
                axes[0], _ANALOGIES, strict=True):
            plot = ax.semilogy if logy else ax.plot
            for name, e, m in runs_of(kinds):
                col = color_for(cells.index(e["cell"]))
                st, gate = m.seed_mean(metric_name("analogies", None, gate_metric))
                if not st.size:
                    continue
                (line,) = plot(st, gate, color=col)
                legend[e["cell"]] = line
                data[key][name] = {"step": st.tolist(), gate_metric: gate.tolist()}
                st2, opt = m.seed_mean(metric_name("analogies", None, opt_metric))
                if st2.size:
                    plot(st2, opt, color=col, ls="--", lw=1)
                    data[key][name][opt_metric] = opt.tolist()
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
        if not legend:
            plt.close(fig)
            return None
        _shared_legend(fig, legend)
        png = _finish(fig)
    return ReportFigure(
        "gate_vs_optimizer", "Gate-induced beside optimizer-induced adaptivity",
        "Three analogies over training (means over seeds; colour = cell). Left, momentum "
        "runs: the leak 1 - mean(alpha) acts as a momentum coefficient along sequence time "
        "(solid) beside the optimizer's own momentum beta (dashed). Middle, SGD runs: the "
        "gate scales each step as lr x mean(alpha), a data-driven schedule (solid), beside "
        "the learning rate in force (dashed). Right, Adam runs: max/min over neurons of the "
        "gate's per-neuron scaling, a diagonal preconditioner (solid), beside max/min of "
        "Adam's per-row effective step (dashed). Where solid and dashed differ, gates and "
        "optimizer adapt differently: complementary, not equivalent.",
        data, png,
    )


def _anisotropy_values(cr, cell: str, var: str) -> tuple[float, float]:
    p = u = np.nan
    for e, m, _ in cr.runs.values():
        if e["cell"] == cell and variant(e) == var:
            lags, _, prof = _last_tracked(m, series_name("anisotropy", None, "jac_ai"))
            if lags.size:
                p = float(np.nanmedian(prof))
            st, g = m.seed_mean(metric_name("anisotropy", None, "grad_ai"))
            if st.size:
                u = float(g[-1])
    return p, u


def anisotropy_figure(cr) -> ReportFigure | None:
    """Anisotropy of propagation and of updates, bars per cell and optimizer."""
    cells, variants = cr.cells, cr.variants
    width = 0.8 / max(len(variants), 1)
    data: dict[str, Any] = {"propagation_ai": {}, "update_ai": {}}
    x = np.arange(len(cells))
    with plt.rc_context(_STYLE):
        fig, axes = new_figure(ncols=2, width=6.0, height=3.8)
        drew = False
        for vi, var in enumerate(variants):
            prop, upd = zip(*(_anisotropy_values(cr, c, var) for c in cells), strict=True)
            data["propagation_ai"][var], data["update_ai"][var] = list(prop), list(upd)
            drew = drew or bool(np.isfinite(prop).any() or np.isfinite(upd).any())
            axes[0, 0].bar(x + vi * width, prop, width, color=color_for(vi), label=var)
            axes[0, 1].bar(x + vi * width, upd, width, color=color_for(vi), label=var)
        for ax, title in ((axes[0, 0], "propagation: Jacobian-product AI (median over lags)"),
                          (axes[0, 1], "updates: per-sample gradient AI")):
            ax.set_xticks(x + width * (len(variants) - 1) / 2)
            ax.set_xticklabels(cells)
            ax.set_yscale("log")
            ax.set_title(title, fontsize=10)
        if not drew:
            plt.close(fig)
            return None
        handles, labels = axes[0, 0].get_legend_handles_labels()
        _shared_legend(fig, dict(zip(labels, handles, strict=True)))
        png = _finish(fig)
    data["cells"] = cells
    return ReportFigure(
        "anisotropy", "Anisotropy of propagation and of updates",
        "At the last probe (mean over seeds), per cell (groups) and optimizer (colours). "
        "Left: anisotropy index sigma_1/sigma_10 of Jacobian products through the sequence "
        "(median over the probed lags): how strongly the cell's state transport favours "
        "few directions, set by the gates. Right: the same index for the per-sample "
        "gradients: how concentrated the updates are in parameter space, where Adam acts. "
        "Higher = more concentrated (log scale).",
        data, png,
    )
