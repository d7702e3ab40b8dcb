"""Wall time of `gatezoo reproduce all --seeds N`, its operation count and the machine's bound.

The script runs the reproduction as a subprocess (the same command a user types) and times it;
the authors' release, measured on this 2-core machine class, takes 123 s per seed for S1 (adding,
three models, 600 steps) and 123 s per task per seed for S2 (1200 iterations), about 4.3 hours
for the paper's 20 seeds. Then it reads the run folder: every part records its wall time, its
training time and the operations of its compiled training steps and probes
(:func:`gatezoo.flops.count_flops`, counted from the jaxprs the run executed). It measures this
machine's GEMM rate with one large `jnp.matmul` per precision (float32, float64) and prints, part
by part (appendix, S1, each S2 task): wall, training and probe seconds, GFLOP, the bound (every
counted operation at the GEMM rate of its precision), wall over bound, and GFLOP/s achieved.

Usage: python benchmarks/reproduce.py [--seeds 20] [--experiment all] [--out DIR]
       python benchmarks/reproduce.py --from DIR    (the table of a finished run)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RELEASE_S1_PER_SEED = 123.0  # seconds, adding task, three models, 600 steps
RELEASE_S2_PER_TASK_SEED = 123.0  # seconds per task per seed, 1200 iterations
S2_TASKS = 5


def release_seconds(experiment: str, seeds: int) -> float | None:
    """The authors' release's time for the same work (None where it was not measured)."""
    if experiment == "all":
        return seeds * (RELEASE_S1_PER_SEED + S2_TASKS * RELEASE_S2_PER_TASK_SEED)
    if experiment == "s1":
        return seeds * RELEASE_S1_PER_SEED
    if experiment == "s2":
        return seeds * S2_TASKS * RELEASE_S2_PER_TASK_SEED
    return None


def gemm_rates(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of one jitted ``(n, n) @ (n, n)`` per precision, best of ``repeats``."""
    import jax
    import jax.numpy as jnp

    rates = {}
    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            a = jax.random.normal(jax.random.key(0), (n, n), dtype)
            mm = jax.jit(jnp.matmul)
            mm(a, a).block_until_ready()
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                mm(a, a).block_until_ready()
                best = min(best, time.perf_counter() - t0)
            rates[dtype] = 2.0 * n**3 / best
    return rates


def bound_seconds(flops: dict[str, float], rates: dict[str, float]) -> float:
    """Seconds if every counted operation ran at the GEMM rate: matmuls at their precision's,
    decompositions and elementwise work at the float32 one (so the figure stays a lower
    bound)."""
    fast = flops["matmul32"] + flops["decomposition"] + flops["elementwise"]
    return fast / rates["float32"] + flops["matmul64"] / rates["float64"]


_KEYS = ("matmul32", "matmul64", "decomposition", "elementwise")


def _add(a: dict[str, float] | None, b: dict[str, float] | None) -> dict[str, float] | None:
    if a is None or b is None:
        return None
    return {k: a[k] + b[k] for k in _KEYS}


def parts(run_dir: Path) -> list[dict]:
    """One row per part of a run folder: the appendix, S1 and every S2 task (models summed)."""
    rows = []
    zero = dict.fromkeys(_KEYS, 0.0)
    app = run_dir / "appendix.json"
    if app.exists():
        gates = json.loads(app.read_text())["gates"].values()
        row = {"part": "appendix", "wall": 0.0, "train": 0.0, "train_flops": zero,
               "probe_flops": zero}
        for g in gates:
            row["wall"] += g["wall_time_s"]
            row["probe_flops"] = _add(row["probe_flops"], g.get("flops"))
        rows.append(row)
    for experiment in ("s1", "s2"):
        path = run_dir / f"{experiment}.json"
        if not path.exists():
            continue
        for task, entry in json.loads(path.read_text())["tasks"].items():
            row = {"part": f"{experiment} {task}", "wall": 0.0, "train": 0.0,
                   "train_flops": zero, "probe_flops": zero}
            for model in entry["models"].values():
                row["wall"] += model["wall_time_s"]
                row["train"] += model.get("train_time_s", float("nan"))
                flops = model.get("flops", {})
                row["train_flops"] = _add(row["train_flops"], flops.get("train"))
                row["probe_flops"] = _add(row["probe_flops"], flops.get("probe"))
            rows.append(row)
    return rows


def table(rows: list[dict], rates: dict[str, float]) -> str:
    """The per-part markdown table, with a total row."""

    def g(flops):
        return "-" if flops is None else f"{sum(flops.values()) / 1e9:,.0f}"

    def rate(flops, seconds):
        return "-" if flops is None or not seconds > 0 else (
            f"{sum(flops.values()) / seconds / 1e9:.1f}")

    total = {"part": "**total**", "wall": sum(r["wall"] for r in rows),
             "train": sum(r["train"] for r in rows), "train_flops": dict.fromkeys(_KEYS, 0.0),
             "probe_flops": dict.fromkeys(_KEYS, 0.0)}
    for r in rows:
        total["train_flops"] = _add(total["train_flops"], r["train_flops"])
        total["probe_flops"] = _add(total["probe_flops"], r["probe_flops"])
    lines = ["| part | wall s | training s | probes s | training GFLOP | probe GFLOP | "
             "bound s | wall / bound | training GFLOP/s | probes GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in [*rows, total]:
        probe_s = r["wall"] - r["train"]
        both = _add(r["train_flops"], r["probe_flops"])
        bound = None if both is None else bound_seconds(both, rates)
        bound_s = "-" if bound is None else f"{bound:.3g}"
        ratio = "-" if not bound else f"{r['wall'] / bound:.1f}x"
        lines.append(
            f"| {r['part']} | {r['wall']:.0f} | {r['train']:.0f} | {probe_s:.0f} | "
            f"{g(r['train_flops'])} | {g(r['probe_flops'])} | {bound_s} | {ratio} | "
            f"{rate(r['train_flops'], r['train'])} | {rate(r['probe_flops'], probe_s)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--experiment", default="all", choices=("appendix", "s1", "s2", "all"))
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--from", dest="from_dir", default=None,
                        help="only print the table of this finished run folder")
    args = parser.parse_args()
    rc = 0
    if args.from_dir is None:
        out = args.out or tempfile.mkdtemp(prefix="gatezoo-reproduce-")
        cmd = [sys.executable, "-m", "gatezoo", "reproduce", args.experiment, "--seeds",
               str(args.seeds), "--out", out]
        print("running:", " ".join(cmd), flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd)
        wall = time.perf_counter() - start
        print(f"gatezoo reproduce {args.experiment} --seeds {args.seeds}: {wall:.1f} s "
              f"(exit {rc})")
        ref = release_seconds(args.experiment, args.seeds)
        if ref is not None:
            print(f"authors' release, same seeds: {ref:.0f} s ({ref / 3600:.2f} h); "
                  f"speed-up {ref / wall:.1f}x (goal: whole 20-seed run < 300 s, >= 50x)")
    rates = gemm_rates()
    print(f"GEMM rate (2048 x 2048 jnp.matmul): float32 {rates['float32'] / 1e9:.1f} GFLOP/s, "
          f"float64 {rates['float64'] / 1e9:.1f} GFLOP/s")
    print(table(parts(Path(args.from_dir or out)), rates))
    return rc


if __name__ == "__main__":
    sys.exit(main())
