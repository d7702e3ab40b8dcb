"""Wall time of `gatezoo reproduce all --seeds N` against the authors' release.

The release's cost, measured on this 2-core machine class: 123 s per seed for S1 (adding, three
models, 600 steps) and 123 s per task per seed for S2 (1200 iterations), about 4.3 hours for the
paper's 20 seeds (appendix time not counted). This script runs the reproduction as a subprocess
(the same command a user types), times it, and prints the ratio against that reference scaled to
the same number of seeds. `--experiment` times one part only (`appendix`, `s1`, `s2`).

Usage: python benchmarks/reproduce.py [--seeds 20] [--experiment all] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--experiment", default="all", choices=("appendix", "s1", "s2", "all"))
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="gatezoo-reproduce-")
    cmd = [sys.executable, "-m", "gatezoo", "reproduce", args.experiment, "--seeds",
           str(args.seeds), "--out", out]
    print("running:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - start
    print(f"gatezoo reproduce {args.experiment} --seeds {args.seeds}: {wall:.1f} s (exit {rc})")
    ref = release_seconds(args.experiment, args.seeds)
    if ref is not None:
        print(f"authors' release, same seeds: {ref:.0f} s ({ref / 3600:.2f} h); "
              f"speed-up {ref / wall:.1f}x (goal: whole 20-seed run < 300 s, >= 50x)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
