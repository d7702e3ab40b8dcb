"""Figures and table of a ``gatezoo compare`` folder (or of a single train run).

Every number drawn is read from the runs' ``metrics.jsonl`` (means over seeds at the steps where
a metric was tracked); each :class:`~gatezoo.report.figures.ReportFigure` keeps those arrays in
``data``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gatezoo.report.figures import ReportFigure, color_for, new_figure, render
from gatezoo.report.page import Table
from gatezoo.report.runfiles import RunMetrics, lag_series, read_metrics

__all__ = ["CompareRuns", "load_compare", "compare_figures", "compare_table", "smooth"]


class CompareRuns:
    """The runs of a compare folder: ``runs[name] = (entry, RunMetrics, result or None)``."""

    def __init__(self, root: Path, doc: dict[str, Any], runs: dict[str, tuple]):
        self.root, self.doc, self.runs = root, doc, runs

    @property
    def cells(self) -> list[str]:
        return list(dict.fromkeys(e["cell"] for e, _, _ in self.runs.values()))

    @property
    def variants(self) -> list[str]:
        """Optimizer (and schedule) labels in grid order."""
        return list(dict.fromkeys(_variant(e) for e, _, _ in self.runs.values()))


def _variant(entry: dict[str, Any]) -> str:
    sch = entry.get("schedule", "constant")
    return entry["optimizer"] + ("" if sch == "constant" else f"/{sch}")


def load_compare(root: str | Path) -> CompareRuns:
    """Reads a compare folder (``compare.json`` + run sub-folders) or one train run folder."""
    root = Path(root)
    if (root / "compare.json").is_file():
        doc = json.loads((root / "compare.json").read_text())
        entries = doc["grid"]
    elif (root / "metrics.jsonl").is_file():
        cfg = json.loads((root / "config.json").read_text()) if (
            root / "config.json").is_file() else {}
        doc = {"experiment": "train", "config": cfg, "status": {}}
        entries = [{"name": ".", "cell": cfg.get("cell", "?"),
                    "optimizer": cfg.get("optimizer", "?"),
                    "schedule": cfg.get("schedule", "constant")}]
    else:
        raise FileNotFoundError(f"{str(root)!r} is neither a compare folder nor a train run")
    runs = {}
    for e in entries:
        d = root / e["name"]
        if not (d / "metrics.jsonl").is_file():
            continue  # not started yet (interrupted before it)
        result = json.loads((d / "result.json").read_text()) if (
            d / "result.json").is_file() else None
        runs[e["name"]] = (e, read_metrics(d), result)
    return CompareRuns(root, doc, runs)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    y = np.asarray(y, np.float64)
    if window <= 1 or y.size == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(y.size):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _baseline(cr: CompareRuns) -> float | None:
    try:
        from gatezoo.tasks import make_task

        cfg = cr.doc.get("config", {})
        task = make_task(cfg.get("task", "adding"), cfg.get("seq_len"),
                         **dict(cfg.get("task_options") or {}))
        return float(task.baseline)
    except Exception:  # the report must still build without the task (e.g. a user's own)
        return None


def _panels(n: int, width=4.2, height=3.2):
    ncols = min(n, 3)
    nrows = (n + ncols - 1) // ncols
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=width, height=height)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _last_tracked(m: RunMetrics, base: str):
    """Lag profile at the last tracked step: ``(lags, step, mean over seeds)``."""
    lags, steps, stack = lag_series(m, base)
    if lags.size == 0:
        return lags, None, np.zeros(0)
    with np.errstate(all="ignore"):
        return lags, int(steps[-1]), np.nanmean(stack[-1], axis=-1)


def compare_figures(cr: CompareRuns) -> list[ReportFigure]:
    figs: list[ReportFigure] = []
    base = _baseline(cr)
    cells, variants = cr.cells, cr.variants

    # 1. loss curves ----------------------------------------------------------------------
    fig, axes = _panels(len(cells))
    data: dict[str, Any] = {}
    for ax, cell in zip(axes, cells, strict=False):
        for name, (e, m, _) in cr.runs.items():
            if e["cell"] != cell:
                continue
            steps, loss = m.seed_mean("loss")
            col = color_for(variants.index(_variant(e)))
            ax.semilogy(steps, smooth(loss, 10), color=col, label=_variant(e))
            es, el = m.seed_mean("loss", "eval")
            if es.size:
                ax.semilogy(es, el, "o", color=col, ms=3)
            data[name] = {"step": steps.tolist(), "loss_mean": loss.tolist(),
                          "eval_step": es.tolist(), "eval_loss_mean": el.tolist()}
        if base is not None:
            ax.axhline(base, color="k", ls="--", lw=1, label="trivial baseline")
        ax.set_title(cell)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    figs.append(ReportFigure(
        "loss_curves", "Training loss per cell and optimizer",
        "Training loss (mean over seeds, 10-step moving average; dots: held-out evaluation) "
        "against step, one panel per cell, one colour per optimizer. The dashed line is the "
        "task's trivial baseline: a curve that stays on it has learned nothing; the lower and "
        "earlier a curve falls below it, the better.",
        data, render(fig),
    ))

    # 2. effective learning rate by lag: measured vs predicted ----------------------------
    fig, axes = _panels(len(cells))
    data = {}
    any_lag = False
    for ax, cell in zip(axes, cells, strict=False):
        for name, (e, m, _) in cr.runs.items():
            if e["cell"] != cell:
                continue
            col = color_for(variants.index(_variant(e)))
            entry = {}
            for key, ls, lab in (("sensitivity/profile", "-", "measured S(l)/S(1)"),
                                 ("lags/ratio", "-.", "error signal ||dL/dh_T-l||"),
                                 ("transport/candidate", ":", "predicted prod(alpha)"),
                                 ("transport/retention", "--", "predicted prod(1-alpha)")):
                lags, step, prof = _last_tracked(m, key)
                if lags.size == 0:
                    continue
                any_lag = True
                ax.semilogy(lags, prof, ls, color=col, marker=".",
                            label=f"{_variant(e)}: {lab}")
                entry[key] = {"lags": lags.tolist(), "step": step, "mean": prof.tolist()}
            data[name] = entry
        ax.set_title(cell)
        ax.set_xlabel("lag l")
        ax.set_ylabel("relative gain (lag 1 = 1)")
        ax.legend(fontsize=5)
    if any_lag:
        figs.append(ReportFigure(
            "effective_lr_by_lag", "Effective learning rate by lag: measured vs predicted",
            "At the last tracked step (mean over seeds), per cell: the measured transport gain "
            "by lag (solid: probe sensitivity ||J_t...J_t-l+1||_2 normalised at lag 1; dash-dot: "
            "the training error signal's norm by lag) beside the gate-product predictions "
            "(dotted: product of candidate weights alpha; dashed: product of retentions "
            "1 - alpha). Curves that fall together mean the gates alone explain how strongly "
            "errors from l steps back update the weights; log y-axis.",
            data, render(fig),
        ))

    # 3. gate correction ||G1|| / ||G0|| over training ------------------------------------
    rows = [(n, e, m) for n, (e, m, _) in cr.runs.items()
            if m.get("expansion/g1_over_g0") is not None]
    if rows:
        fig, axes = _panels(len(variants))
        data = {}
        for ax, var in zip(axes, variants, strict=False):
            for name, e, m in rows:
                if _variant(e) != var:
                    continue
                st, r = m.seed_mean("expansion/g1_over_g0")
                ax.semilogy(st, r, color=color_for(cells.index(e["cell"])), label=e["cell"])
                data[name] = {"step": st.tolist(), "g1_over_g0_mean": r.tolist()}
            ax.set_title(var)
            ax.set_xlabel("step")
            ax.set_ylabel("||G1|| / ||G0||")
            ax.legend(fontsize=7)
        figs.append(ReportFigure(
            "gate_correction", "First-order gate correction of the gradient over training",
            "||G1|| / ||G0|| (mean over seeds) against step, one panel per optimizer, one "
            "colour per gated cell: the size of the gate-induced first-order part of the "
            "gradient relative to the gates-frozen part. Small but non-zero and persistent "
            "values are the 'small but systematic' corrections of the theory.",
            data, render(fig),
        ))

    # 4. gate-induced beside optimizer-induced effective learning rates -------------------
    # each analogy is drawn for the runs of the optimizer it compares with (all runs if the
    # grid has none of that kind)
    def runs_of(kinds):
        picked = [(n, e, m) for n, (e, m, _) in cr.runs.items() if e["optimizer"] in kinds]
        return picked or [(n, e, m) for n, (e, m, _) in cr.runs.items()]

    fig, axes = new_figure(ncols=3, width=4.4)
    ax_m, ax_s, ax_a = axes[0]
    # (panel key, axis, optimizers compared, gate metric, optimizer metric, log-y, label)
    panels = (
        ("momentum", ax_m, ("momentum", "nesterov"), "beta_gate", "beta_optimizer", False,
         "1 - mean(alpha)"),
        ("schedule", ax_s, ("sgd",), "gate_step", "lr", True, "lr x mean(alpha)"),
        ("adam", ax_a, ("adam", "adamw", "rmsprop"), "gate_anisotropy", "adam_anisotropy",
         True, "gate"),
    )
    data = {key: {} for key, *_ in panels}
    drew = False
    for key, ax, kinds, gate_metric, opt_metric, logy, label in panels:
        plot = ax.semilogy if logy else ax.plot
        for name, e, m in runs_of(kinds):
            col = color_for(cells.index(e["cell"]))
            st, gate = m.seed_mean(f"analogies/{gate_metric}")
            if not st.size:
                continue
            drew = True
            plot(st, gate, color=col, label=f"{e['cell']}: {label} ({_variant(e)})")
            data[key][name] = {"step": st.tolist(), gate_metric: gate.tolist()}
            st2, opt = m.seed_mean(f"analogies/{opt_metric}")
            if st2.size:
                plot(st2, opt, color=col, ls="--", lw=1)
                data[key][name][opt_metric] = opt.tolist()
    ax_m.set_title("momentum: leak 1 - alpha vs optimizer beta (--)", fontsize=9)
    ax_s.set_title("schedule: lr x alpha vs lr in force (--)", fontsize=9)
    ax_a.set_title("Adam: gate vs Adam per-row anisotropy (--)", fontsize=9)
    for ax in (ax_m, ax_s, ax_a):
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    if drew:
        figs.append(ReportFigure(
            "gate_vs_optimizer", "Gate-induced beside optimizer-induced adaptivity",
            "Three analogies over training (means over seeds; colour = cell). Left, momentum "
            "runs: the leak 1 - mean(alpha) acts as a momentum coefficient along sequence time "
            "(solid) beside the optimizer's own momentum beta (dashed). Middle, SGD runs: the "
            "gate scales each step as lr x mean(alpha), a data-driven schedule (solid), beside "
            "the learning rate in force (dashed). Right, Adam runs: max/min over neurons of the "
            "gate's per-neuron scaling, a diagonal preconditioner (solid), beside max/min of "
            "Adam's per-row effective step (dashed). Where solid and dashed differ, gates and "
            "optimizer adapt differently: complementary, not equivalent.",
            data, render(fig),
        ))

    # 5. anisotropy of propagation and of updates per cell and optimizer ------------------
    width = 0.8 / max(len(variants), 1)
    fig, axes = new_figure(ncols=2, width=5.6)
    data = {"propagation_ai": {}, "update_ai": {}}
    drew = False
    x = np.arange(len(cells))
    for vi, var in enumerate(variants):
        prop, upd = [], []
        for cell in cells:
            p = u = np.nan
            for e, m, _ in cr.runs.values():
                if e["cell"] == cell and _variant(e) == var:
                    lags, _, prof = _last_tracked(m, "anisotropy/jac_ai")
                    if lags.size:
                        p = float(np.nanmedian(prof))
                    st, g = m.seed_mean("anisotropy/grad_ai")
                    if st.size:
                        u = float(g[-1])
            prop.append(p)
            upd.append(u)
        data["propagation_ai"][var] = prop
        data["update_ai"][var] = upd
        if np.isfinite(prop).any() or np.isfinite(upd).any():
            drew = True
        axes[0, 0].bar(x + vi * width, prop, width, color=color_for(vi), label=var)
        axes[0, 1].bar(x + vi * width, upd, width, color=color_for(vi), label=var)
    for ax, title in ((axes[0, 0], "propagation: Jacobian-product AI (median over lags)"),
                      (axes[0, 1], "updates: per-sample gradient AI")):
        ax.set_xticks(x + width * (len(variants) - 1) / 2)
        ax.set_xticklabels(cells)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    if drew:
        data["cells"] = cells
        figs.append(ReportFigure(
            "anisotropy", "Anisotropy of propagation and of updates",
            "At the last probe (mean over seeds), per cell (groups) and optimizer (colours). "
            "Left: anisotropy index sigma_1/sigma_10 of Jacobian products through the sequence "
            "(median over the probed lags): how strongly the cell's state transport favours "
            "few directions, set by the gates. Right: the same index for the per-sample "
            "gradients: how concentrated the updates are in parameter space, where Adam acts. "
            "Higher = more concentrated (log scale).",
            data, render(fig),
        ))
    return figs


def steps_to_target(steps: np.ndarray, loss: np.ndarray, target: float, window: int = 10):
    """First step at which the moving-average loss is at or below ``target`` (None if never)."""
    sm = smooth(loss, window)
    hit = np.nonzero(sm <= target)[0]
    return int(steps[hit[0]]) if hit.size else None


def compare_table(cr: CompareRuns) -> tuple[Table, list[dict[str, Any]]]:
    base = _baseline(cr)
    cfg = cr.doc.get("config", {})
    target = cfg.get("target")
    if target is None and base is not None:
        target = 0.5 * base
    rows, records = [], []
    for name, (e, m, result) in cr.runs.items():
        steps, loss = m.seed_mean("loss")
        final = float(np.mean(loss[-10:])) if loss.size else float("nan")
        es, el = m.seed_mean("loss", "eval")
        final_eval = float(el[-1]) if el.size else float("nan")
        reach = steps_to_target(steps, loss, target) if target is not None and loss.size else None
        if result is not None:
            wall = float(result["wall_time_s"])
        else:  # interrupted: time of the steps that ran
            sps = m.get("steps_per_sec")
            per_step = 1.0 / np.nanmean(sps, axis=1) if sps is not None else np.zeros(0)
            wall = float(np.nansum(per_step)) if per_step.size else float("nan")
        rec = {"run": name, "cell": e["cell"], "optimizer": _variant(e),
               "steps_done": int(steps[-1]) + 1 if steps.size else 0,
               "final_train_loss": final, "final_eval_loss": final_eval, "baseline": base,
               "loss_over_baseline": final / base if base else None,
               "target": target, "steps_to_target": reach, "wall_time_s": wall,
               "finished": result is not None}
        records.append(rec)
        rows.append([e["cell"], _variant(e), rec["steps_done"], final, final_eval, base,
                     rec["loss_over_baseline"], reach if reach is not None else "not reached",
                     wall])
    table = Table(["cell", "optimizer", "steps", "final train loss (last 10, mean over seeds)",
                   "final eval loss", "trivial baseline", "loss / baseline",
                   f"steps to loss <= {target:.3g}" if target is not None else "steps to target",
                   "wall time s"], rows, title="Cells x optimizers")
    return table, records
