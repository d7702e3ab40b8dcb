"""Findings of a compare report: short sentences computed from the numbers.

Each finding is ``{"text", "value", "figure"}``: a sentence, the number(s) it states and the name
of the figure that shows them (the page links to it). Nothing here is written in advance: a
finding whose numbers are missing from the runs is left out, and a claim of docs/theory.md §7 that
the run tested and that did not hold is stated as such.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gatezoo.metric_schema import metric_name
from gatezoo.report.compare_plots import variant
from gatezoo.report.runfiles import RunMetrics

__all__ = ["compare_findings", "R2_HIGH", "BELOW_BASELINE"]

#: R^2 of a predictor's power fit that counts as "tracks the error signal by lag"
R2_HIGH = 0.8
#: a run "learned something" when its held-out loss ends below this fraction of the baseline
BELOW_BASELINE = 0.9


def _f(text: str, value: Any, figure: str) -> dict[str, Any]:
    return {"text": text, "value": value, "figure": figure}


def _last_mean(m: RunMetrics, name: str) -> float | None:
    st, v = m.seed_mean(name)
    return float(v[-1]) if st.size and np.isfinite(v[-1]) else None


def _outcome(records: list[dict]) -> list[dict]:
    out = []
    ratios = [r["eval_over_baseline"] for r in records if r.get("eval_over_baseline") is not None]
    if ratios:
        below = sum(1 for x in ratios if x < BELOW_BASELINE)
        out.append(_f(f"{below} of {len(ratios)} finished runs end with a held-out loss below "
                      f"{BELOW_BASELINE}x the trivial baseline (best "
                      f"{min(ratios):.2f}x, worst {max(ratios):.2f}x).",
                      {"below": below, "runs": len(ratios), "best": min(ratios),
                       "worst": max(ratios)}, "loss_curves"))
    reached = [r for r in records if r.get("steps_to_target") is not None]
    if reached:
        first = min(reached, key=lambda r: (r["seconds_to_target"] or np.inf,
                                            r["steps_to_target"]))
        sec = first["seconds_to_target"]
        out.append(_f(
            f"{first['cell']} x {first['optimizer']} reached the held-out target "
            f"{first['target']:.3g} first: step {first['steps_to_target']}"
            + (f", {sec:.2f} s of training for its seeds" if sec is not None else "")
            + f"; its whole tuning ({first['trials']} trials) took {first['wall_time_s']:.0f} s "
            f"(lr {first['learning_rate']:.3g}). {len(reached)} of {len(records)} finished runs "
            "reached the target.",
            {"run": first["run"], "steps": first["steps_to_target"], "seconds": sec,
             "tuning_wall_s": first["wall_time_s"], "reached": len(reached)}, "loss_curves"))
    elif records and records[0].get("target") is not None:
        out.append(_f(f"No run reached the held-out target {records[0]['target']:.3g}.",
                      {"reached": 0}, "loss_curves"))
    edge = [r["run"] for r in records if r.get("tuning", {}).get("searched")
            and r["tuning"].get("chosen") in (0, len(r["tuning"]["rates"]) - 1)]
    if edge:
        out.append(_f(f"The chosen rate lies at the end of its search range for {len(edge)} "
                      f"run(s) ({', '.join(edge)}): a wider range might do better there.",
                      {"at_edge": edge}, "tuning_curves"))
    return out


_FITS = (("frozen", "gate-frozen transport"), ("weighted", "adjoint-weighted retention"),
         ("retention", "neuron mean of prod(1-alpha)"))
_SHARES = (("diagonal", "diagonal retention"), ("mixing", "recurrent mixing"),
           ("gate", "gate part B"))


def _transport_of(m: RunMetrics) -> dict[str, float | None]:
    keys = [f"{t}_{q}" for t, _ in _FITS for q in ("s", "r2")] + ["candidate_s", "candidate_r2"]
    keys += [f"{t}_{q}" for t, _ in _SHARES for q in ("share", "gain")]
    return {k: _last_mean(m, metric_name("transport", None, k)) for k in keys}


def _lag_text(var: str, fit: dict) -> str:
    fits = ", ".join(f"{label} R^2 {fit[f'{t}_r2']:.2f} (power {fit[f'{t}_s']:.2f})"
                     for t, label in _FITS if fit[f"{t}_r2"] is not None)
    text = f"{var}: {fits}"
    if all(fit[f"{t}_{q}"] is not None for t, _ in _SHARES for q in ("share", "gain")):
        total = sum(fit[f"{t}_gain"] for t, _ in _SHARES)
        text += (f"; its log-gain, {total:+.3f} per lag of the window, is " + ", ".join(
            f"{label} {fit[f'{t}_gain']:+.3f} ({100 * fit[f'{t}_share']:.0f} %)"
            for t, label in _SHARES))
    return text


def _lag_fit(cr) -> list[dict]:
    """The error signal by lag against the theory's predictors: a claim fails only when the
    theory's own prediction (the gate-frozen transport) does."""
    out, failed, mean_only = [], {}, {}
    for cell in cr.cells:
        parts, value = [], {}
        for e, m, _ in cr.runs.values():
            if e["cell"] != cell:
                continue
            fit = _transport_of(m)
            if all(fit[f"{t}_r2"] is None for t, _ in _FITS):
                continue
            parts.append(_lag_text(variant(e), fit))
            value[variant(e)] = fit
            frozen, mean = fit["frozen_r2"], fit["retention_r2"]
            if frozen is not None and frozen < R2_HIGH:
                gate = fit["gate_gain"]
                failed.setdefault(cell, []).append(variant(e) + (
                    f", gate part B {gate:+.3f} per lag" if gate is not None else ""))
            elif frozen is not None and mean is not None and mean < R2_HIGH:
                mean_only.setdefault(cell, []).append(variant(e))
        if parts:
            out.append(_f(f"{cell}: the error signal by lag against the theory's predictors, "
                          "each fitted as a power law: " + "; ".join(parts) + ".",
                          value, "effective_lr_by_lag"))
    if mean_only:
        where = "; ".join(f"{c} ({', '.join(v)})" for c, v in mean_only.items())
        out.append(_f(
            f"For {where} the gate-frozen transport tracks the error signal (R^2 >= {R2_HIGH}) "
            "while the neuron mean of prod(1-alpha) does not. The mean weighs every neuron "
            "alike and leaves out the recurrent mixing (the attribution above): once training "
            "makes the gates heterogeneous it follows the many fast neurons, not the few slow "
            "ones that carry the signal. The theory predicts the transport, not the mean.",
            {"mean_fails_transport_holds": mean_only, "r2_threshold": R2_HIGH},
            "effective_lr_by_lag"))
    if failed:
        where = "; ".join(f"{c} ({', '.join(v)})" for c, v in failed.items())
        out.append(_f(f"The theory's zeroth-order prediction (the gate-frozen transport "
                      f"lambda_T^T A_T...A_T-l+1 tracks the error signal by lag, R^2 >= "
                      f"{R2_HIGH}) did not hold in this run for: {where}; there the first-order "
                      "gate path B, which the prediction leaves out, shapes the signal.",
                      {"failed": failed, "r2_threshold": R2_HIGH}, "effective_lr_by_lag"))
    return out


def _gate_correction(cr) -> list[dict]:
    parts, value, broken, zero = [], {}, [], []
    for cell in cr.cells:
        vals = []
        for e, m, _ in cr.runs.values():
            if e["cell"] == cell:
                _, r = m.seed_mean(metric_name("expansion", None, "g1_over_g0"))
                vals.extend(r[np.isfinite(r)].tolist())
        if not vals:
            continue
        v = np.asarray(vals)
        med, lo, hi = float(np.median(v)), float(v.min()), float(v.max())
        value[cell] = {"median": med, "min": lo, "max": hi}
        if hi == 0.0:  # a constant gate has no gate-induced Jacobian part: B = 0 (§7.2)
            zero.append(cell)
            continue
        parts.append(f"{cell} {med:.3g} ({lo:.3g} to {hi:.3g})")
        if not (lo > 0 and hi < 1):
            broken.append(cell)
    out = []
    if parts or zero:
        head = ("||G1||/||G0|| over training, median (range) over all optimizers: "
                + ", ".join(parts) + ". ") if parts else ""
        tail = (f"{', '.join(zero)}: exactly 0: no gate of theirs reads the state (B = 0; "
                "theory §7.2 for a constant gate), so their gates act on learning entirely at "
                "zeroth order, through the lag-dependent rate prod(1 - alpha)."
                if zero else "")
        out.append(_f((head + tail).strip(), value, "gate_correction"))
    if broken:
        out.append(_f(f"theory §7.12 ('corrections are small': 0 < ||G1||/||G0|| < 1 "
                      f"throughout) did not hold for {', '.join(broken)}.",
                      {c: value[c] for c in broken}, "gate_correction"))
    return out


_ANALOGY_TEXT = (
    ("momentum", "beta_gate", "beta_optimizer",
     "Momentum runs, leak 1 - mean(alpha) beside the optimizer's beta {b:.3g}: "),
    ("sgd", "gate_step", "lr", "SGD runs, gate step lr x mean(alpha) beside the rate: "),
    ("adam", "precond_corr", None,
     "Adam runs, per-neuron correlation of the gate's and Adam's scaling: "),
)


def _analogies(cr) -> list[dict]:
    out = []
    for opt, ga, ob, head in _ANALOGY_TEXT:
        parts, value, b = [], {}, None
        for name, (e, m, _) in cr.runs.items():
            _, gv = m.seed_mean(metric_name("analogies", None, ga))
            if e["optimizer"] != opt or not gv.size:
                continue
            a = float(np.nanmean(gv))
            b = (float(np.nanmean(m.seed_mean(metric_name("analogies", None, ob))[1]))
                 if ob else None)
            parts.append(f"{e['cell']} {a:.3g}" + (f" vs {b:.3g}" if ob == "lr" else ""))
            value[name] = {ga: a, **({ob: b} if ob else {})}
        if parts:
            out.append(_f(head.format(b=b) + ", ".join(parts) + " (means over training).",
                          value, "gate_vs_optimizer"))
    return out


def _not_finished(cr) -> list[dict]:
    names = cr.not_finished
    if not names:
        return []
    return [_f(f"{len(names)} of the {len(cr.grid)} runs of the grid did not finish "
               f"({', '.join(names)}): the table marks them \"not finished\" and every finding "
               f"and figure leaves them out; {len(cr.runs)} finished.",
               {"not_finished": names, "finished": len(cr.runs), "grid": len(cr.grid)},
               "loss_curves")]


def _damaged(cr) -> list[dict]:
    names = list(cr.damaged)
    if not names:
        return []
    one = len(names) == 1
    return [_f(f"{len(names)} of the {len(cr.grid)} runs of the grid {'is' if one else 'are'} "
               f"damaged ({', '.join(names)}): {'its' if one else 'their'} files cannot be used "
               f"(the notes say why), the table marks {'it' if one else 'them'} \"damaged\" "
               f"and every finding and figure leaves {'it' if one else 'them'} out.",
               {"damaged": names, "grid": len(cr.grid)}, "loss_curves")]


def compare_findings(cr, records: list[dict]) -> list[dict[str, Any]]:
    """The findings of a compare folder, in page order. Only finished runs count: the
    records and runs of unfinished and damaged ones are left out of every finding, which
    says so. Without a readable config the findings that need the task's baseline or the
    target are left out (their records hold None there)."""
    records = [r for r in records if r.get("finished", True)]
    return (_damaged(cr) + _not_finished(cr) + _outcome(records) + _lag_fit(cr)
            + _gate_correction(cr) + _analogies(cr))
