"""Speed of one train step of gatezoo's GRU and LSTM beside Flax's own cells and PyTorch's, and of
the input-gated linear cells' associative scan beside their sequential scan.

One train step is: forward over a sequence ``(batch, T, in)``, a linear readout of the last
step, the MSE loss against fixed targets ``(batch, 1)``, the backward pass, and an Adam update.
The same step is built for

* gatezoo: ``gz.SequenceModel(gz.GRU | gz.LSTM, 1)`` (input projection hoisted out of the scan);
* Flax: ``nnx.RNN(nnx.GRUCell | nnx.OptimizedLSTMCell)`` and an ``nnx.Linear`` readout;
* PyTorch (only when ``torch`` is importable): ``nn.GRU | nn.LSTM`` and ``nn.Linear``, with
  ``torch.set_num_threads(2)``.

JAX steps are pure functions of ``(params, opt_state)`` under ``jax.jit`` (Adam from Optax), so
no NNX graph traversal runs per step. Timing: each implementation is compiled and warmed up,
then the implementations are timed round-robin (the order rotates each round, which spreads
drift in machine load over all of them); each round times a block of consecutive steps, ended by
``block_until_ready``, and the reported time is the median over rounds of time per step. Ratios
are gatezoo's median over the other's median from the same run.

Second table (the scans): for ``mingru``, ``rglru`` and ``s6`` (and any cell given with
``--scan-cells``), the same train step with ``scan="associative"`` (``jax.lax.associative_scan``,
the default on accelerators) and ``scan="sequential"`` (``lax.scan``, the default on a CPU), and
Flax's ``nnx.GRUCell`` in ``nnx.RNN`` as a reference, at ``T = 1024`` and ``4096``; ratios
associative/sequential and associative/flax-gru from the same round-robin timing.

Usage::

    python benchmarks/cells.py                 # batch 32, in 8, hidden 128, T = 100 and 1000
    python benchmarks/cells.py --quick         # a smoke run in well under a minute
    python benchmarks/cells.py --lengths 100 --rounds 21 --cells lstm
    python benchmarks/cells.py --scans-only    # only the scan table, T = 1024 and 4096
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/cells.py --devices 2

``--devices N`` splits the JAX steps' batch over N devices as ``gatezoo train`` does
(``gatezoo.training.sharding``): on a CPU, N host devices, each running its half of the
recurrence on its own core, which XLA:CPU otherwise runs on one.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gatezoo as gz
from gatezoo.training.sharding import batch_mesh, replicate

try:  # torch is an optional comparison, never a gatezoo dependency
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

CELLS = ("gru", "lstm")
SCAN_CELLS = ("mingru", "rglru", "s6")


class FlaxModel(nnx.Module):
    """Flax's own cell in ``nnx.RNN`` with a linear readout of the last step."""

    def __init__(self, cell: nnx.Module, hidden: int, *, rngs: nnx.Rngs):
        self.rnn = nnx.RNN(cell)
        self.readout = nnx.Linear(hidden, 1, rngs=rngs)
        self.lstm = isinstance(cell, nnx.OptimizedLSTMCell)

    def __call__(self, xs: jax.Array) -> jax.Array:
        # The zero carry that the cell's initialize_carry would build; passing it keeps the
        # RNN's carry RNG stream untouched, so the step is a pure function of the parameters.
        h0 = jnp.zeros((xs.shape[0], self.readout.in_features), xs.dtype)
        carry = (h0, h0) if self.lstm else h0
        return self.readout(self.rnn(xs, initial_carry=carry)[:, -1])


def gatezoo_model(cell: str, d: int, h: int) -> nnx.Module:
    cls = {"gru": gz.GRU, "lstm": gz.LSTM}[cell]
    return gz.SequenceModel(cls(d, h, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))


def flax_model(cell: str, d: int, h: int) -> nnx.Module:
    cls = {"gru": nnx.GRUCell, "lstm": nnx.OptimizedLSTMCell}[cell]
    return FlaxModel(cls(d, h, rngs=nnx.Rngs(0)), h, rngs=nnx.Rngs(1))


def scan_model(cell: str, d: int, h: int, scan: str, d_state: int) -> nnx.Module:
    options = {"d_state": d_state} if cell == "s6" else {}
    built = gz.make_cell(cell, d, h, rngs=nnx.Rngs(0), scan=scan, **options)
    return gz.SequenceModel(built, 1, rngs=nnx.Rngs(1))


def jax_runner(
    model: nnx.Module, xs: np.ndarray, ys: np.ndarray, lr: float, mesh: Mesh | None = None
) -> Callable:
    """``run(n)``: n jitted train steps on fixed data, blocking on the last; with a ``mesh``
    (gatezoo's batch mesh) the batch is split over its devices, the state replicated, as
    ``gatezoo train`` does on several devices."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(lr)
    opt_state = replicate(tx.init(params), mesh)
    params = replicate(params, mesh)

    def loss_fn(p, x, y):
        pred = nnx.merge(graphdef, p, rest)(x)
        return jnp.mean((pred - y) ** 2)

    @jax.jit
    def step(p, s, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    if mesh is None:
        x, y = jnp.asarray(xs), jnp.asarray(ys)
    else:
        split = NamedSharding(mesh, PartitionSpec("batch"))
        x, y = jax.device_put(xs, split), jax.device_put(ys, split)
    state = [params, opt_state]

    def run(n: int) -> float:
        loss = None
        for _ in range(n):
            state[0], state[1], loss = step(state[0], state[1], x, y)
            if mesh is not None:
                # One step in flight, as in gatezoo's trainer: with several steps queued, the
                # gradient all-reduces of XLA:CPU's host devices can deadlock (README.md).
                jax.block_until_ready(loss)
        return float(jax.block_until_ready(loss))

    return run


def torch_runner(cell: str, h: int, xs: np.ndarray, ys: np.ndarray, lr: float) -> Callable:
    """``run(n)``: n PyTorch train steps on fixed data (eager CPU execution is synchronous)."""
    d = xs.shape[-1]
    torch.manual_seed(0)
    rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](d, h, batch_first=True)
    readout = torch.nn.Linear(h, 1)
    params = list(rnn.parameters()) + list(readout.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)

    def run(n: int) -> float:
        loss = None
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            out, _ = rnn(x)
            loss = torch.nn.functional.mse_loss(readout(out[:, -1]), y)
            loss.backward()
            opt.step()
        return loss.item()

    return run


def time_rounds(
    runners: dict[str, Callable], rounds: int, block_s: float, pause_s: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and process-CPU seconds per step of each runner, timed round-robin.

    CPU time (all threads of this process) is the steadier figure when other processes load
    the machine; wall time is what a user waits for.
    """
    steps = {}
    for name, run in runners.items():
        run(2)  # compile and warm up (allocators, caches, thread pools)
        t0 = time.perf_counter()
        run(1)
        one = time.perf_counter() - t0
        steps[name] = max(1, math.ceil(block_s / max(one, 1e-6)))
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            time.sleep(pause_s)  # lets spinning worker threads of the previous runner go idle
            n = steps[name]
            t0, c0 = time.perf_counter(), time.process_time()
            runners[name](n)
            wall[name].append((time.perf_counter() - t0) / n)
            cpu[name].append((time.process_time() - c0) / n)
    med = statistics.median
    return {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not on every platform
        pass
    return platform.processor() or "unknown"


def scan_table(args: argparse.Namespace, lr: float, mesh: Mesh | None) -> None:
    """The associative scan against the sequential one and Flax's GRU, one row per (cell, T)."""
    print(f"# scans: batch {args.batch}, in {args.features}, hidden {args.scan_hidden}, "
          f"s6 d_state {args.d_state}; time per train step (fwd+bwd+Adam)")
    print("| cell | T | associative ms | sequential ms | flax-gru ms | assoc/seq | "
          "assoc/flax-gru | CPU-time assoc/seq |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    h, d = args.scan_hidden, args.features
    for T in args.scan_lengths:
        xs = rng.standard_normal((args.batch, T, d)).astype(np.float32)
        ys = rng.standard_normal((args.batch, 1)).astype(np.float32)
        flax_gru = jax_runner(flax_model("gru", d, h), xs, ys, lr, mesh)
        for cell in args.scan_cells:
            runners = {
                scan: jax_runner(scan_model(cell, d, h, scan, args.d_state), xs, ys, lr, mesh)
                for scan in gz.models.SCANS
            }
            runners["flax-gru"] = flax_gru
            wall, cpu = time_rounds(runners, args.rounds, args.block, pause_s=0.02)
            ms = [f"{1e3 * wall[k]:.2f}" for k in ("associative", "sequential", "flax-gru")]
            ratios = [wall["associative"] / wall["sequential"],
                      wall["associative"] / wall["flax-gru"],
                      cpu["associative"] / cpu["sequential"]]
            cols = [cell, str(T), *ms, *(f"{r:.2f}" for r in ratios)]
            print("| " + " | ".join(cols) + " |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--features", type=int, default=8, help="input features")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000], help="T values")
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (median taken)")
    parser.add_argument("--block", type=float, default=0.3, help="seconds per timed block")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--devices", type=int, default=1,
                        help="split the JAX steps' batch over this many devices (on a CPU: "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=N); default 1")
    parser.add_argument("--quick", action="store_true",
                        help="T = 20 and 100 (scans: 64 and 256, hidden 16), 3 short rounds")
    parser.add_argument("--scan-cells", nargs="+", choices=sorted(gz.models.CELLS),
                        default=list(SCAN_CELLS), help="cells of the scan table")
    parser.add_argument("--scan-lengths", type=int, nargs="+", default=[1024, 4096],
                        help="T values of the scan table")
    parser.add_argument("--scan-hidden", type=int, default=64, help="hidden of the scan table")
    parser.add_argument("--d-state", type=int, default=8, help="s6 states per channel")
    table = parser.add_mutually_exclusive_group()
    table.add_argument("--scans-only", action="store_true", help="only the scan table")
    table.add_argument("--no-scans", action="store_true", help="skip the scan table")
    args = parser.parse_args(argv)
    for name in ("batch", "features", "hidden", "rounds", "threads", "scan_hidden", "d_state",
                 "devices"):
        if getattr(args, name) < 1:
            flag = name.replace("_", "-")
            raise SystemExit(f"--{flag} must be >= 1, got {getattr(args, name)}")
    if any(t < 1 for t in args.lengths + args.scan_lengths):
        raise SystemExit(f"--lengths/--scan-lengths must be >= 1, got "
                         f"{args.lengths} / {args.scan_lengths}")
    no_scan = [c for c in args.scan_cells if "scan" not in gz.models.CELLS[c].options]
    if no_scan:
        raise SystemExit(f"--scan-cells takes cells with a scan option; not {', '.join(no_scan)}")
    if args.devices > jax.device_count():
        raise SystemExit(
            f"--devices {args.devices}: only {jax.device_count()} JAX device(s); on a CPU start "
            f"with XLA_FLAGS=--xla_force_host_platform_device_count={args.devices}")
    if args.batch % args.devices:
        raise SystemExit(f"--batch {args.batch} does not divide over --devices {args.devices}")
    mesh = batch_mesh(args.devices)
    if args.quick:
        args.lengths, args.rounds, args.block = [20, 100], 3, 0.05
        args.scan_lengths, args.scan_hidden = [64, 256], 16
    use_torch = torch is not None and not args.no_torch
    if use_torch:
        torch.set_num_threads(args.threads)
    lr = 1e-3

    versions = f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"
    versions += f", torch {torch.__version__} ({args.threads} threads)" if use_torch else ""
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_name()}, "
          f"{os.cpu_count()} CPUs, {jax.devices()[0].platform}, JAX batch split over "
          f"{args.devices} device(s)")
    print(f"# {versions}")
    print(f"# batch {args.batch}, in {args.features}, hidden {args.hidden}, "
          f"rounds {args.rounds}, block {args.block}s; time per train step (fwd+bwd+Adam)")
    print(f"# load average before: {load_average()}")
    if not args.scans_only:
        print("| cell | T | gatezoo ms | flax ms | torch ms | gatezoo/flax | gatezoo/torch | "
              "CPU-time gatezoo/flax | CPU-time gatezoo/torch |")
        print("|---|---|---|---|---|---|---|---|---|")
        rng = np.random.default_rng(0)
        for T in args.lengths:
            xs = rng.standard_normal((args.batch, T, args.features)).astype(np.float32)
            ys = rng.standard_normal((args.batch, 1)).astype(np.float32)
            for cell in args.cells:
                d, h = args.features, args.hidden
                runners = {
                    "gatezoo": jax_runner(gatezoo_model(cell, d, h), xs, ys, lr, mesh),
                    "flax": jax_runner(flax_model(cell, d, h), xs, ys, lr, mesh),
                }
                if use_torch:
                    runners["torch"] = torch_runner(cell, args.hidden, xs, ys, lr)
                wall, cpu = time_rounds(runners, args.rounds, args.block, pause_s=0.02)
                ms = {k: f"{1e3 * v:.2f}" for k, v in wall.items()}
                cols = [cell, str(T), ms["gatezoo"], ms["flax"], ms.get("torch", "-")]
                for med in (wall, cpu):
                    cols.append(f"{med['gatezoo'] / med['flax']:.2f}")
                    cols.append(f"{med['gatezoo'] / med['torch']:.2f}" if use_torch else "-")
                print("| " + " | ".join(cols) + " |", flush=True)
    if not args.no_scans:
        scan_table(args, lr, mesh)
    print(f"# load average after: {load_average()}")


if __name__ == "__main__":
    main()
