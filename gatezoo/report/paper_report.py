"""Figures and tables of S1 (``s1.json``) and S2 (``s2.json``), docs/theory.md §6.3-§6.4."""

from __future__ import annotations

from typing import Any

import numpy as np

from gatezoo.report.figures import ReportFigure, color_for, finite, new_figure, render
from gatezoo.report.page import Table

__all__ = ["s1_figures", "s1_table", "s2_figures", "s2_table"]



def _f(x) -> np.ndarray:
    """Nested lists with ``None`` -> float array with NaN."""
    a = np.array(x, dtype=object)
    return np.vectorize(lambda v: np.nan if v is None else float(v), otypes=[float])(a)


def s1_figures(summary: dict[str, Any]) -> list[ReportFigure]:
    figs = []
    compat = summary["config"]["compat"]
    for task, tv in summary["tasks"].items():
        models = tv["models"]
        # --- profiles per checkpoint: measured, zeroth-order, fitted ---------------------
        names = list(models)
        ckpts = models[names[0]]["checkpoints"]
        fig, axes = new_figure(ncols=len(names), width=4.6)
        data: dict[str, Any] = {}
        for ax, name in zip(axes[0], names, strict=False):
            m = models[name]
            lags = finite(m["lags"])
            agg = m["aggregate"]
            prof, mu0, fit = _f(agg["profile_mean"]), _f(agg["zeroth_order_mean"]), _f(
                agg["fitted_mean"])
            for ci, c in enumerate(ckpts):
                col = color_for(ci)
                s, r2 = _f(agg["slope_mean"])[ci], _f(agg["r2_mean"])[ci]
                ax.semilogy(lags, prof[ci], color=col, label=f"it {c}: s={s:.2f}, R2={r2:.2f}")
                ax.semilogy(lags, mu0[ci], color=col, ls=":", lw=1)
                ax.semilogy(lags, fit[ci], color=col, ls="--", lw=1)
            ax.set_title(f"{task} / {name}")
            ax.set_xlabel("lag l = t - k")
            ax.set_ylabel("normalised effective LR mu(l)")
            ax.legend(fontsize=6)
            data[name] = {"lags": lags.tolist(), "profile_mean": prof.tolist(),
                          "zeroth_order_mean": mu0.tolist(), "fitted_mean": fit.tolist()}
        figs.append(ReportFigure(
            f"s1_{task}_profiles", f"S1 {task}: effective learning rate by lag",
            "For each model (panel) and checkpoint iteration (colour): the measured normalised "
            "sensitivity mu(l) = median ||J_t...J_{k+1}||_2 at lag l over its value at lag 1 "
            "(solid, mean over seeds), the zeroth-order gate-product prediction (dotted) and the "
            "fitted power of it (dashed); the legend gives the fitted power s and R^2. A steeper "
            "fall means gradients from far in the past are damped more: a lag-dependent "
            f"effective learning rate (compat: {compat}).",
            data, render(fig),
        ))
        # --- heat-map lag x checkpoint --------------------------------------------------
        fig, axes = new_figure(ncols=len(names), width=4.4)
        data = {}
        for ax, name in zip(axes[0], names, strict=False):
            prof = _f(models[name]["aggregate"]["profile_mean"])
            with np.errstate(divide="ignore", invalid="ignore"):
                img = np.log10(prof)
            im = ax.imshow(img, aspect="auto", origin="lower", cmap="viridis",
                           extent=[0.5, img.shape[1] + 0.5, -0.5, len(ckpts) - 0.5])
            ax.set_yticks(range(len(ckpts)))
            ax.set_yticklabels([str(c) for c in ckpts])
            ax.set_xlabel("lag")
            ax.set_ylabel("iteration")
            ax.set_title(f"{name}: log10 mu(l)")
            fig.colorbar(im, ax=ax)
            data[name] = img.tolist()
        figs.append(ReportFigure(
            f"s1_{task}_heatmap", f"S1 {task}: lag x checkpoint heat-map",
            "log10 of the normalised profile mu(l) (mean over seeds) by lag (x) and checkpoint "
            "iteration (y). Colour changes along y show the effective-LR profile moving during "
            "training; darker to the right means faster decay with lag.",
            data, render(fig),
        ))
        # --- slope against iteration ----------------------------------------------------
        fig, ax = new_figure()
        ax = ax[0, 0]
        data = {}
        for i, name in enumerate(names):
            agg = models[name]["aggregate"]
            m, s = _f(agg["slope_mean"]), _f(agg["slope_std"])
            ax.errorbar(ckpts, m, yerr=s, marker="o", capsize=3, color=color_for(i), label=name)
            data[name] = {"iteration": list(ckpts), "slope_mean": m.tolist(),
                          "slope_std": s.tolist()}
        ax.set_xlabel("iteration")
        ax.set_ylabel("fitted power s")
        ax.legend(fontsize=8)
        ax.set_title(f"S1 {task}: fitted power over training")
        figs.append(ReportFigure(
            f"s1_{task}_slope", f"S1 {task}: fitted power s against iteration",
            "Mean +/- std over seeds of the OLS slope s of log S on log P (the power to which the "
            "gate product must be raised to match the measured sensitivity). s = 1 means the "
            "gate product alone predicts the transport; its drift shows the coupling changing as "
            "the gates learn.",
            data, render(fig),
        ))
    return figs


def s1_table(summary: dict[str, Any]) -> Table:
    rows = []
    for task, tv in summary["tasks"].items():
        for name, m in tv["models"].items():
            agg = m["aggregate"]
            last = -1
            rows.append([task, name, m["checkpoints"][last], _f(agg["slope_mean"])[last],
                         _f(agg["slope_std"])[last], _f(agg["r2_mean"])[last],
                         float(np.nanmean(_f(m["per_seed"]["train_loss"])[last])), tv["baseline"],
                         m["wall_time_s"]])
    return Table(["task", "model", "iteration", "slope mean", "slope std", "mean R2",
                  "train loss", "baseline", "wall s"], rows,
                 title="S1: fitted power at the last checkpoint")


def s2_figures(summary: dict[str, Any]) -> list[ReportFigure]:
    figs = []
    compat = summary["config"]["compat"]
    for task, tv in summary["tasks"].items():
        models = tv["models"]
        names = list(models)
        lags = finite(models[names[0]]["lags"])
        ckpts = models[names[0]]["checkpoints"]
        for stat, label, logy in (("ai", "anisotropy index sigma_1/sigma_10", True),
                                  ("ce", "energy concentration CE_10", False)):
            fig, axes = new_figure(ncols=len(ckpts), width=4.0)
            data: dict[str, Any] = {}
            for ci, (ax, c) in enumerate(zip(axes[0], ckpts, strict=False)):
                for i, name in enumerate(names):
                    agg = models[name]["aggregate"]["propagation"]
                    med = _f(agg[f"{stat}_median"])[ci]
                    lo, hi = _f(agg[f"{stat}_q25"])[ci], _f(agg[f"{stat}_q75"])[ci]
                    ax.plot(lags, med, "o-", color=color_for(i), label=name)
                    ax.fill_between(lags, lo, hi, color=color_for(i), alpha=0.2)
                    data.setdefault(name, {})[str(c)] = med.tolist()
                if logy:
                    ax.set_yscale("log")
                ax.set_xlabel("lag")
                ax.set_ylabel(label)
                ax.set_title(f"iteration {c}")
                ax.legend(fontsize=7)
            figs.append(ReportFigure(
                f"s2_{task}_prop_{stat}", f"S2 {task}: propagation {label} against lag",
                f"Median (line) and IQR (band) over seeds of the {label} of the Jacobian product "
                "over a window of the given lag (median over random windows of the probe batch), "
                "one panel per checkpoint. Higher means gradient flow through that lag is "
                "concentrated in fewer state directions (direction-dependent effective learning "
                f"rate). plain = Elman + Adam, scalar/multi = gated + SGD; compat: {compat}.",
                data, render(fig),
            ))
        fig, axes = new_figure(ncols=2, width=4.6)
        data = {}
        for ax, stat, label in ((axes[0, 0], "ai", "gradient-covariance AI"),
                                (axes[0, 1], "ce", "gradient-covariance CE_10")):
            width = 0.8 / max(len(names), 1)
            x = np.arange(len(ckpts))
            for i, name in enumerate(names):
                agg = models[name]["aggregate"]["grad_cov"]
                med = _f(agg[f"{stat}_median"])
                lo, hi = _f(agg[f"{stat}_q25"]), _f(agg[f"{stat}_q75"])
                ax.bar(x + i * width, med, width, yerr=[med - lo, hi - med], capsize=3,
                       color=color_for(i), label=name)
                data.setdefault(name, {})[stat] = med.tolist()
            ax.set_xticks(x + width * (len(names) - 1) / 2)
            ax.set_xticklabels([str(c) for c in ckpts])
            ax.set_xlabel("iteration")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        figs.append(ReportFigure(
            f"s2_{task}_gradcov", f"S2 {task}: anisotropy of the updates",
            "Median (bar) and IQR (whiskers) over seeds of the anisotropy index and the "
            "10-direction energy concentration of 256 normalised per-sequence gradients, per "
            "checkpoint and model. Higher means parameter updates concentrate in a "
            "low-dimensional subspace (Adam's side of the comparison: plain + Adam).",
            data, render(fig),
        ))
    return figs


def s2_table(summary: dict[str, Any]) -> Table:
    rows = []
    for task, tv in summary["tasks"].items():
        for name, m in tv["models"].items():
            p, g = m["aggregate"]["propagation"], m["aggregate"]["grad_cov"]
            rows.append([
                task, name, m["optimizer"], m["n_params"], m["checkpoints"][-1],
                float(np.nanmedian(_f(p["ai_median"])[-1])),
                float(np.nanmedian(_f(p["ce_median"])[-1])),
                _f(g["ai_median"])[-1], _f(g["ce_median"])[-1],
                float(np.nanmean(_f(m["final_train_loss"]))), tv["baseline"], m["wall_time_s"],
            ])
    return Table(["task", "model", "optimizer", "params", "iteration", "prop AI (median over "
                  "lags)", "prop CE", "grad-cov AI", "grad-cov CE", "final loss", "baseline",
                  "wall s"], rows, title="S2: anisotropy at the last checkpoint")
