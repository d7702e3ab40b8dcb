"""Instrument overhead as ratios to the uninstrumented train step measured in the same run.

For each size (the paper's hidden 64 with T = 80 and 120, batch 64; and hidden 128, T = 1000) and
cell, it times a compiled ``lax.scan`` of ``K`` train steps (SGD, MSE on the last step):

* ``base``: ``value_and_grad`` + optimizer update (no instruments);
* ``economy``: the ``economy`` preset every step (adjoints from the same backward pass);
* ``expansion``: the first-order correction ``G0, G1`` every step;
* ``econ+exp``: both;
* ``transport``: the ``transport`` instrument alone (its reverse scan of frozen and full
  vector-Jacobian products is the part of ``economy`` beyond the training pass);
* with ``--generic``, ``expansion`` once more through the generic per-step linearisation of
  ``split_step`` (``LayerFns.first_order_streams`` removed): what a user's cell gets, and the
  built-in cells' cost before their closed-form streams;
* the probe instruments (``sensitivity`` with its default 16 end times, and ``max_lag=64`` at
  T = 1000; ``anisotropy``; ``truncation``) once each on a probe batch of 16, in seconds per
  probe (compilation excluded).

Usage::

    python benchmarks/instruments.py                 # all sizes, vector + gru cells
    python benchmarks/instruments.py --sizes 64x80 --cells vector --steps 20
    python benchmarks/instruments.py --cells vector,scalar,gru,lstm --sizes 64x80 --no-probes \
        --generic

Each ratio is printed in wall time and in process CPU time (the steadier one on a shared machine:
XLA:CPU runs these steps on one thread).

Goals: economy <= 1.3x (issue 4) and expansion <= 2.6x in CPU time for every gated cell at
64 x 80 (issue 9; its FLOP floor is counted in benchmarks/README.md). For comparison, Cockpit's
cheapest preset costs 1.5x tracked every step and its full preset 21x.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import gatezoo as gz
from gatezoo.instruments import StepContext, make_instruments
from gatezoo.instruments.registry import INSTRUMENTS

SIZES = {"64x80": (64, 80, 64), "64x120": (64, 120, 64), "128x1000": (128, 1000, 64)}


def build(cell_name: str, hidden: int, d_in: int = 4):
    cell = gz.make_cell(cell_name, d_in, hidden, rngs=nnx.Rngs(0), init=gz.models.InitSpec("torch"))
    model = gz.SequenceModel(cell, 1, rngs=nnx.Rngs(1))
    return gz.instruments.model_fns(model, lambda m, xs, ys: jnp.mean((m(xs) - ys) ** 2))


def make_run(fns, params, instruments, opt, steps: int):
    """Jitted ``run(params, opt_state, xs, ys, probe) -> (params, metrics)``: ``steps`` steps."""
    needs_adj = any(i.needs_adjoints for i in instruments)

    def one(carry, i):
        p, s, inst_states, xs, ys, probe = carry
        if instruments:
            _, carries0 = jax.eval_shape(lambda: fns.loss(p, xs, ys))
            offsets = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), carries0)

            def f(p_, off):
                return fns.loss(p_, xs, ys, offsets=off if needs_adj else None)

            (loss, carries), (grads, adj) = jax.value_and_grad(f, (0, 1), has_aux=True)(
                p, offsets
            )
        else:
            loss, grads = jax.value_and_grad(lambda p_: fns.loss(p_, xs, ys)[0])(p)
        updates, s_new = opt.update(grads, s, p)
        p_new = optax.apply_updates(p, updates)
        metrics = {"loss": loss}
        new_states = []
        for inst, st in zip(instruments, inst_states, strict=False):
            ctx = StepContext(i, p, grads, loss, xs, ys, carries, adj, updates, s_new,
                              probe[0], probe[1], fns)
            m, st = inst.update(ctx, st)
            metrics.update({gz.metric_name(inst.name, None, k): v for k, v in m.items()})
            new_states.append(st)
        return (p_new, s_new, tuple(new_states), xs, ys, probe), metrics

    @jax.jit
    def run(p, s, xs, ys, probe):
        states = tuple(inst.init(p) for inst in instruments)
        carry = (p, s, states, xs, ys, probe)
        carry, metrics = jax.lax.scan(one, carry, jnp.arange(steps))
        return carry[0], metrics

    return run


def timeit(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def interleaved(fns: dict, args: tuple, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best-of-``repeats`` wall time and process CPU time per function, the functions alternating
    in every round so that a change of machine load hits all of them alike. (XLA:CPU runs these
    steps on one thread, so CPU time is the steadier figure when other processes share the
    cores.)"""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))  # compile + warm
    best = {k: float("inf") for k in fns}
    cpu = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args))
            best[k] = min(best[k], time.perf_counter() - t)
            cpu[k] = min(cpu[k], time.process_time() - c)
    return best, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(SIZES),
                        help="comma-separated HIDDENxT (batch 64), e.g. 64x80,64x4096")
    parser.add_argument("--cells", default="vector,gru")
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-probes", action="store_true")
    parser.add_argument("--generic", action="store_true",
                        help="also time expansion through the generic per-step path (CPU time)")
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()} "
          f"cores={os.cpu_count()} jax={jax.__version__} backend={jax.default_backend()} "
          f"load={os.getloadavg()[0]:.2f} date={time.strftime('%Y-%m-%d %H:%M')}")
    print("ratios to the uninstrumented step of the same run: wall time, then process CPU time")
    header = (f"{'cell':7} {'size':9} {'base ms':>8} {'economy':>8} {'expansion':>9} "
              f"{'econ+exp':>8} {'cpu econ':>8} {'cpu exp':>8} {'cpu e+e':>8} {'cpu transp':>10}")
    if args.generic:
        header += f" {'cpu generic':>11}"
    if not args.no_probes:
        header += f" {'sens s':>8} {'aniso s':>8} {'trunc s':>8}"
    print(header)
    for size in args.sizes.split(","):
        hidden, T, batch = SIZES.get(size) or (*map(int, size.split("x")), 64)
        for cell_name in args.cells.split(","):
            fns, params = build(cell_name, hidden)
            opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2)
            key = jax.random.key(0)
            xs = jax.random.uniform(key, (batch, T, 4))
            ys = jnp.sum(xs[:, :, :1], axis=(1, 2))[:, None] / T
            probe = (xs[:16], ys[:16])
            s0 = opt.init(params)
            runs = {}
            for label, names in (("base", []), ("economy", ["economy"]),
                                 ("expansion", ["expansion"]),
                                 ("econ+exp", ["economy", "expansion"]),
                                 ("transport", ["transport"])):
                insts = make_instruments(names, fns) if names else []
                runs[label] = make_run(fns, params, insts, opt, args.steps)
            if args.generic:  # the same instrument without the cell's closed-form streams
                gen = fns._replace(first_order_streams=None)
                runs["generic"] = make_run(gen, params, make_instruments(["expansion"], gen), opt,
                                           args.steps)
            times, cpu = interleaved(runs, (params, s0, xs, ys, probe), args.repeats)
            base, cbase = times["base"], cpu["base"]
            line = (f"{cell_name:7} {size:9} {1e3 * base / args.steps:8.2f} "
                    f"{times['economy'] / base:7.2f}x {times['expansion'] / base:8.2f}x "
                    f"{times['econ+exp'] / base:7.2f}x {cpu['economy'] / cbase:7.2f}x "
                    f"{cpu['expansion'] / cbase:7.2f}x {cpu['econ+exp'] / cbase:7.2f}x "
                    f"{cpu['transport'] / cbase:9.2f}x")
            if args.generic:
                line += f" {cpu['generic'] / cbase:10.2f}x"
            if not args.no_probes:
                for name in ("sensitivity", "anisotropy", "truncation"):
                    kw = {"max_lag": 64} if (name == "sensitivity" and T > 200) else {}
                    inst = INSTRUMENTS[name].factory(fns, every=1, **kw).instrument()
                    ctx = StepContext(jnp.int32(0), params, params, jnp.float32(0), xs, ys,
                                      None, None, None, s0, probe[0], probe[1], None)

                    @jax.jit
                    def probe_once(c, inst=inst):
                        return inst.update(c._replace(fns=fns), ())[0]

                    line += f" {timeit(probe_once, ctx, repeats=1):8.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
