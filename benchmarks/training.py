"""Training throughput: vmapped seeds vs one seed, and the compiled K-step loop vs a Python loop.

Prints, in one run, at the paper's sizes (hidden 64, T = 80, batch 64, adding task, Adam):

1. steps/s of one seed and of S = 8 and 32 seeds vmapped in the same compiled step, and the
   per-seed throughput ratio ``S * steps_per_sec(S) / steps_per_sec(1)`` (goal: >= 8 at S = 32);
2. the compiled loop (``lax.scan`` over K steps per host round trip) against a Python loop of
   single jitted steps that reads the loss back every step (what a hand-written loop does).

Usage:
  python benchmarks/training.py [--cell gru] [--seeds 1,8,32] [--k 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from gatezoo.tasks import make_task
from gatezoo.training import TrainConfig, make_optimizer
from gatezoo.training.loop import attach_run, init_params
from gatezoo.training.step import data_keys, make_step_fns


def build(config: TrainConfig, steps_per_call: int):
    """The compiled step functions and initial state of ``config`` (no run folder)."""
    task = make_task(config.task, config.seq_len)
    params = init_params(config, task)
    attached = attach_run(config, task)
    opt = make_optimizer(config.optimizer, config.learning_rate)
    step_fns = make_step_fns(attached, task, opt, batch_size=config.batch_size,
                             steps_per_call=steps_per_call, seed_batch=config.seed_batch)
    keys = jnp.stack([data_keys(s) for s in config.seeds])
    return step_fns, step_fns.init(params, keys), task


def compiled_rate(config: TrainConfig, k: int, repeats: int) -> tuple[float, float]:
    """(steps/s, compile+first-call seconds) of the K-step chunk, all seeds together."""
    step_fns, state, task = build(config, k)
    n = jnp.int32(k)
    t0 = time.perf_counter()
    state, out = step_fns.chunk(state, None, task.data, n)
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, out = step_fns.chunk(state, None, task.data, n)
        np.asarray(out["loss"])  # the host reads the K losses, as the trainer does
        best = min(best, time.perf_counter() - t0)
    return k / best, first


def python_loop_rate(config: TrainConfig, steps: int, repeats: int) -> float:
    """steps/s of a Python loop calling a jitted single step and reading the loss each step."""
    step_fns, state, task = build(config, 1)
    one = jnp.int32(1)
    state, out = step_fns.chunk(state, None, task.data, one)
    float(out["loss"][0, 0])
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, out = step_fns.chunk(state, None, task.data, one)
            float(out["loss"][0, 0])
        best = min(best, time.perf_counter() - t0)
    return steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="gru")
    parser.add_argument("--seeds", default="1,8,32")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=80)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=50, help="steps per compiled round trip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed-batch", default="all,1",
                        help="seed grouping(s) to time: 'all' (one vmap) or k (lax.map groups)")
    args = parser.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or '?'}"
          f", {os.cpu_count()} cores), load average {os.getloadavg()[0]:.2f}")
    print(f"cell {args.cell}, hidden {args.hidden}, T {args.seq_len}, batch {args.batch}, "
          f"adam, K = {args.k} steps per round trip, best of {args.repeats}")

    def config(seeds, seed_batch=None):
        return TrainConfig(cell=args.cell, task="adding", seq_len=args.seq_len,
                           hidden=args.hidden, batch_size=args.batch, seeds=tuple(range(seeds)),
                           learning_rate=1e-3, devices=1, seed_batch=seed_batch)

    print("\n1. seeds side by side in one compiled step; per-seed ratio = S * rate(S) / rate(1)")
    print(f"{'seeds':>6} {'grouping':>12} {'steps/s':>10} {'seed-steps/s':>13} "
          f"{'per-seed ratio':>15} {'compile s':>10}")
    base, _ = compiled_rate(config(1), args.k, args.repeats)
    print(f"{1:>6} {'-':>12} {base:>10.1f} {base:>13.1f} {1.0:>14.2f}x {'':>10}")
    for s in [int(x) for x in args.seeds.split(",") if int(x) > 1]:
        for grouping in args.seed_batch.split(","):
            # a single group of all S seeds is one plain vmap
            seed_batch = s if grouping == "all" else int(grouping)
            label = "vmap all" if grouping == "all" else f"map of {seed_batch}"
            rate, first = compiled_rate(config(s, seed_batch), args.k, args.repeats)
            print(f"{s:>6} {label:>12} {rate:>10.1f} {s * rate:>13.1f} "
                  f"{s * rate / base:>14.2f}x {first:>10.2f}")

    print("\n2. compiled K-step loop vs a Python loop of single jitted steps (1 seed)")
    fast, _ = compiled_rate(config(1), args.k, args.repeats)
    slow = python_loop_rate(config(1), args.k, args.repeats)
    print(f"   lax.scan K={args.k}: {fast:.1f} steps/s; python loop: {slow:.1f} steps/s; "
          f"ratio {fast / slow:.2f}x")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
