r"""Verdicts on the claims of theory §7 that a reproduction tests, computed from its summary.

Each claim comes back as a flat record: the claim's number and statement, what was measured (a
number), its spread over seeds, a verdict (``reproduced``, ``not reproduced`` or
``inconclusive``), the rule that gave the verdict, and a note where the conventions of the
authors' code (``compat="paper-code"``) change the number. The report puts these records at the
top of the page and into ``summary.json``.

Rules (stated with each record):

* claim 9 (appendix): small-ε slope of the truncation error within 2 ± 0.05 for every gate.
* claim 12 (appendix): the median ratio ``r_j = ||B_j|| / ||A_j||`` below 1 for every gate.
* claim 14 (S1): for the gated models, the profile decreases with lag (Spearman ρ of the
  seed-mean profile against lag ≤ -0.8 at the last checkpoint) and the gate-product fit holds
  (mean ``R^2`` ≥ 0.8 at every checkpoint). Paper-code runs add the release's own statistics
  for the leaky cell (slope ≈ 2.5, ``R^2`` ≈ 0.96, docs/theory.md §2.3 item 5).
* claim 15 (S2): MultiGate + SGD's anisotropy ≥ Plain + Adam's: an exact two-sided sign test
  over (task, seed, checkpoint, lag) at level 0.05; the majority direction decides.

Example:
  >>> sign_test(9, 10) < 0.05
  True
  >>> verdict_of_sign_test(0.9, 0.01)
  'reproduced'
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gatezoo.experiments.stats import as_array

__all__ = [
    "VERDICTS",
    "sign_test",
    "verdict_of_sign_test",
    "appendix_claims",
    "s1_claims",
    "s2_claims",
    "claims_of",
]

VERDICTS = ("reproduced", "not reproduced", "inconclusive")
_LEVEL = 0.05
_RELEASE_LEAKY = {"slope": 2.5, "r2": 0.96}  # docs/theory.md §2.3 item 5, the release's statistics


def sign_test(successes: int, n: int) -> float:
    """Exact two-sided binomial sign test of ``successes`` out of ``n`` against ``p = 1/2``."""
    if n <= 0:
        return float("nan")
    k = min(successes, n - successes)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))


def verdict_of_sign_test(fraction: float, p_value: float) -> str:
    """``reproduced`` / ``not reproduced`` when the sign test rejects at 0.05, else
    ``inconclusive``."""
    if not np.isfinite(p_value) or p_value >= _LEVEL:
        return "inconclusive"
    return "reproduced" if fraction > 0.5 else "not reproduced"


def _record(claim: int, statement: str, measured: str, spread: str, verdict: str, rule: str,
            part: str, compat: str, note: str = "") -> dict[str, Any]:
    return {"claim": claim, "part": part, "statement": statement, "measured": measured,
            "spread": spread, "verdict": verdict, "rule": rule, "compat": compat, "note": note}


def appendix_claims(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Claims 9 and 12 from an ``appendix.json`` document."""
    compat = doc["config"].get("compat", "exact")
    gates = doc["gates"]
    slopes = {g: (v["aggregate"]["slope_mean"], v["aggregate"]["slope_std"])
              for g, v in gates.items()}
    ok9 = all(abs(m - 2.0) <= 0.05 for m, _ in slopes.values())
    ratios = {g: (v["aggregate"]["r_median_of_medians"], v["aggregate"]["r_p90_median"])
              for g, v in gates.items()}
    ok12 = all(m < 1.0 for m, _ in ratios.values())
    note12 = ("paper-code builds B from the post-update state, B_code = (I - Γ) B_exact "
              "(claim 13), so its ratios are smaller than the exact ones" if compat ==
              "paper-code" else "")
    return [
        _record(9, "second-order truncation: E(ε) has log-log slope 2.00 ± 0.05",
                "; ".join(f"{g} {m:.4f}" for g, (m, _) in slopes.items()),
                "; ".join(f"{g} ± {s:.4f} (std over kept seeds)" for g, (_, s) in slopes.items()),
                "reproduced" if ok9 else "not reproduced",
                "slope mean within 2 ± 0.05 for every gate", "appendix", compat),
        _record(12, "corrections are small: median r_j = ||B_j||/||A_j|| < 1",
                "; ".join(f"{g} {m:.3g}" for g, (m, _) in ratios.items()),
                "; ".join(f"{g} p90 {p:.3g}" for g, (_, p) in ratios.items()),
                "reproduced" if ok12 else "not reproduced",
                "median over seeds of the per-seed median r_j below 1 for every gate",
                "appendix", compat, note12),
    ]


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx = np.argsort(np.argsort(x[ok])).astype(float)
    ry = np.argsort(np.argsort(y[ok])).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def _s1_model(m: dict[str, Any]) -> dict[str, float]:
    agg = m["aggregate"]
    profile = as_array(agg["profile_mean"])[-1]
    lags = as_array(m["lags"])
    r2 = as_array(agg["r2_mean"])
    slope = as_array(agg["slope_mean"])
    return {"rho": _spearman(lags, profile), "r2_min": float(np.nanmin(r2)),
            "r2_last": float(r2[-1]), "slope_last": float(slope[-1]),
            "slope_std_last": float(as_array(agg["slope_std"])[-1]),
            "slope_range": float(np.nanmax(slope) - np.nanmin(slope))}


def s1_claims(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Claim 14 per task (and the release's leaky statistics in paper-code mode)."""
    compat = doc["config"].get("compat", "exact")
    out = []
    for task, tv in doc["tasks"].items():
        stats = {name: _s1_model(m) for name, m in tv["models"].items()}
        gated = {n: s for n, s in stats.items() if n in ("scalar", "vector")}
        if gated:
            ok = all(s["rho"] <= -0.8 and s["r2_min"] >= 0.8 for s in gated.values())
            out.append(_record(
                14, f"{task}: the lag profile of gated models decreases with lag and the "
                "gate-product predictor tracks it (finite s, high R²); s changes in training",
                "; ".join(f"{n}: ρ {s['rho']:.2f}, min R² {s['r2_min']:.3f}, "
                          f"s {s['slope_last']:.2f}, s range over checkpoints "
                          f"{s['slope_range']:.2f}" for n, s in gated.items()),
                "; ".join(f"{n}: s ± {s['slope_std_last']:.2f} (std over seeds, last checkpoint)"
                          for n, s in gated.items()),
                "reproduced" if ok else "not reproduced",
                "Spearman ρ(lag, mean profile) ≤ -0.8 at the last checkpoint and mean R² ≥ 0.8 "
                "at every checkpoint, for every gated model", "s1", compat))
        if compat == "paper-code" and "leaky" in stats:
            s = stats["leaky"]
            ok = (abs(s["slope_last"] - _RELEASE_LEAKY["slope"]) <= 0.25
                  and abs(s["r2_last"] - _RELEASE_LEAKY["r2"]) <= 0.02)
            out.append(_record(
                14, f"{task}: the release's leaky statistics (slope ≈ 2.5, R² ≈ 0.96)",
                f"leaky s {s['slope_last']:.2f}, R² {s['r2_last']:.3f}",
                f"s ± {s['slope_std_last']:.2f} (std over seeds)",
                "reproduced" if ok else "not reproduced",
                "|s - 2.5| ≤ 0.25 and |R² - 0.96| ≤ 0.02 at the last checkpoint", "s1", compat,
                "paper-code emulates the release's power iteration (fresh Gaussian start, "
                "1e-12 floor in float32): long-lag pairs of the leaky cell collapse and leave "
                "the fit; exact mode keeps them (R² ≈ 0.998)"))
    return out


def _s2_pairs(doc: dict[str, Any], kind: str, stat: str):
    """Per-seed signs of multi >= plain, pooled over tasks, checkpoints (and lags)."""
    wins, n, per_seed = 0, 0, []
    for tv in doc["tasks"].values():
        models = tv["models"]
        if "multi" not in models or "plain" not in models:
            continue
        a = as_array(models["multi"]["per_seed"][kind][stat])
        b = as_array(models["plain"]["per_seed"][kind][stat])
        ok = np.isfinite(a) & np.isfinite(b)
        ge = (a >= b) & ok
        wins += int(ge.sum())
        n += int(ok.sum())
        seed_axis = 1  # (checkpoint, seed[, lag])
        per_seed.append(ge.sum(axis=tuple(i for i in range(ge.ndim) if i != seed_axis))
                        / np.maximum(ok.sum(axis=tuple(i for i in range(ok.ndim)
                                                       if i != seed_axis)), 1))
    return wins, n, (np.concatenate(per_seed) if per_seed else np.array([]))


def s2_claims(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Claim 15: multi + SGD vs plain + Adam, on propagation and on update anisotropy."""
    compat = doc["config"].get("compat", "exact")
    out = []
    for kind, label in (("propagation", "Jacobian-product"), ("grad_cov", "gradient-covariance")):
        for stat in ("ai", "ce"):
            wins, n, per_seed = _s2_pairs(doc, kind, stat)
            if n == 0:
                continue
            frac, p = wins / n, sign_test(wins, n)
            q25, med, q75 = (np.percentile(per_seed, [25, 50, 75]) if per_seed.size
                             else (np.nan,) * 3)
            out.append(_record(
                15, f"MultiGate+SGD {label} {stat.upper()} ≥ Plain+Adam's"
                + (" (at most lags and tasks)" if kind == "propagation" else " (at least partly)"),
                f"{frac:.2f} of {n} comparisons (sign test p = {p:.2g})",
                f"per-seed fraction median {med:.2f}, IQR {q25:.2f}-{q75:.2f}",
                verdict_of_sign_test(frac, p),
                "exact two-sided sign test at 0.05 over tasks, seeds, checkpoints"
                + (" and lags" if kind == "propagation" else ""), "s2", compat,
                "paper-code adds the release's 1e-12 floors to AI and CE (theory §2.3 "
                "item 6): at long lags of the plain cell CE collapses and AI is capped"
                if compat == "paper-code" else ""))
    return out


def claims_of(part: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The claim records of one reproduction part (``appendix``, ``s1`` or ``s2``)."""
    return {"appendix": appendix_claims, "s1": s1_claims, "s2": s2_claims}[part](doc)
