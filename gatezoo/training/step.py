"""The train state and the compiled train step: K steps per host round-trip, seeds vmapped.

One update of one seed, at step ``i`` (the number of updates done so far):

.. math::
    (x, y) = \\mathrm{sample}(\\mathrm{fold\\_in}(k_s, i)), \\quad
    L, G = \\mathrm{value\\_and\\_grad}(\\theta \\mapsto \\ell(f_\\theta(x), y)), \\quad
    \\theta \\leftarrow \\theta + \\mathrm{opt.update}(G).

The data key is a function of ``(seed, step)`` only, never of how the run was cut into host
calls, so a resumed run replays exactly the batches an uninterrupted one sees.

``make_chunk`` compiles ``lax.scan`` over K such steps. The step index is shared by all seeds and
is *not* vmapped, so ``lax.cond(i % every == 0, ...)`` of the instruments and the
``i < n_active`` guard (the last round-trip may be shorter than K without a second compile) stay
real conditionals instead of both-branch selects. Per step the scan returns, stacked ``(K, S)``:
``loss``, ``lr``, ``grad_norm``, the instrument metrics (NaN where not tracked), and a
``finite`` flag (loss and every gradient entry finite).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gatezoo.instruments.protocol import Instrument, ModelFns, StepContext
from gatezoo.training.optimizers import learning_rate_in_force
from gatezoo.training.sharding import constrain_batch

__all__ = ["TrainState", "StepFns", "data_keys", "make_step_fns"]

# XLA options for programs that run once or rarely (init, evaluation, probe batch): skipping
# LLVM's backend optimisations cuts their compile time several-fold on CPU; the hot K-step
# chunk keeps the default level.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

# fold_in tags deriving the independent key streams of one seed from its root key.
_TRAIN, _PROBE, _EVAL = 0, 1, 2


class TrainState(NamedTuple):
    """Everything that changes during training; leaves (except ``step``) are stacked over seeds.

    Attributes:
      step: updates done so far (int32 scalar, shared by the seeds).
      params: model parameters, leaves ``(S, ...)``.
      opt_state: optimizer state, leaves ``(S, ...)``.
      keys: per-seed root keys ``(S, 2)`` uint32 (constant; batches use ``fold_in(key, step)``).
      instruments: one state per attached instrument, leaves ``(S, ...)``.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    keys: jax.Array
    instruments: tuple


def data_keys(seed: int) -> jax.Array:
    """The root key of a seed's data streams (train batches, probe batch, eval batches)."""
    return jax.random.fold_in(jax.random.PRNGKey(int(seed)), 0x6A7E)


class StepFns(NamedTuple):
    """Compiled functions of a run.

    Attributes:
      init: ``init(params_stacked, keys) -> TrainState`` (step 0).
      chunk: ``chunk(state, probe, data, n_active) -> (state, outputs)``, jitted; runs
        ``min(n_active, K)`` updates and returns per-step outputs stacked ``(K, S)``.
      evaluate: ``evaluate(params, keys, data) -> {metric: (S,)}``, jitted; mean over the
        held-out batches. (``data`` is ``task.data``, passed as an argument so dataset arrays are
        not baked into the program as constants.)
      probe: ``probe(keys, data) -> (probe_xs, probe_ys)`` stacked over seeds, or None.
    """

    init: Callable[..., TrainState]
    chunk: Callable[..., tuple[TrainState, dict]]
    evaluate: Callable[..., dict]
    probe: Callable[..., Any] | None


def make_step_fns(
    forward: Callable[..., Any],
    fns: ModelFns,
    task: Any,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    steps_per_call: int,
    eval_batches: int = 4,
    probe_batch_size: int = 16,
    instruments: Sequence[Instrument] = (),
    fixed_batch: bool = False,
    mesh: Any = None,
    unroll: int = 1,
    seed_batch: int | None = None,
    wrap: Callable[[Callable], Callable] = lambda f: f,
) -> StepFns:
    """Builds the jitted init / K-step chunk / evaluation of a run.

    Args:
      forward: ``forward(params, xs, eps=None, offsets=None) -> (pred, carries)`` (one seed).
      fns: the model's :class:`ModelFns` (handed to instruments).
      task: the task (``sample``, ``loss``, ``metrics``).
      optimizer: an optax transformation from :func:`make_optimizer`.
      batch_size: training batch per seed (also the evaluation batch).
      steps_per_call: K, the scan length per host round-trip.
      instruments: attached instruments; their states live in ``TrainState.instruments``.
      fixed_batch: reuse the step-0 batch at every step.
      mesh: a ``("batch",)`` mesh to shard batches over, or None.
      unroll: ``lax.scan`` unroll of the K-step loop.
      seed_batch: ``None`` picks 1 on CPU and all seeds on GPU/TPU; ``k`` vmaps groups of
        ``k`` seeds and runs the groups one after another inside the compiled step
        (``lax.map``), which keeps each group's backward-pass residuals in cache on CPUs
        (see benchmarks/README.md).
      wrap: applied to the pure chunk and evaluation functions before ``jax.jit`` (tests pass
        ``functools.partial(chex.assert_max_traces, n=1)`` to prove one trace per run).
    """
    instruments = tuple(instruments)
    need_adjoints = any(inst.needs_adjoints for inst in instruments)
    K = int(steps_per_call)

    def loss_fn(params, offsets, xs, ys):
        pred, carries = forward(params, xs, offsets=offsets)
        return task.loss(pred, ys), carries

    def sample(data, key, batch, split):
        if hasattr(task, "sample_from"):  # dataset arrays as a jit argument, not a constant
            return task.sample_from(data, key, batch, split)
        return task.sample(key, batch, split=split)

    def one_step(params, opt_state, key, inst_states, probe, data, step):
        data_key = jax.random.fold_in(key, _TRAIN)
        data_key = jax.random.fold_in(data_key, 0 if fixed_batch else step)
        xs, ys = constrain_batch(sample(data, data_key, batch_size, "train"), mesh)
        if need_adjoints:
            _, carry_shapes = jax.eval_shape(lambda p, x: forward(p, x), params, xs)
            offsets = jax.tree_util.tree_map(
                lambda s: jnp.zeros(s.shape, s.dtype), carry_shapes
            )
            (loss, carries), (grads, adjoints) = jax.value_and_grad(
                loss_fn, argnums=(0, 1), has_aux=True
            )(params, offsets, xs, ys)
        else:
            (loss, carries), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, None, xs, ys
            )
            adjoints = None
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
        )
        # a non-finite step leaves the slot as it was: a diverging learning-rate trial must not
        # spread NaN into instruments (a run without trials stops at that step anyway)
        new_params, new_opt_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), (new_params, new_opt_state),
            (params, opt_state),
        )
        metrics = {
            "loss": loss,
            "lr": learning_rate_in_force(new_opt_state),
            "grad_norm": optax.tree.norm(grads),
        }
        new_inst_states = []
        if instruments:
            probe_xs, probe_ys = probe
            ctx = StepContext(
                step=step, params=params, grads=grads, loss=loss, xs=xs, ys=ys,
                carries=carries, adjoints=adjoints, updates=updates, opt_state=new_opt_state,
                probe_xs=probe_xs, probe_ys=probe_ys, fns=fns,
            )
            for inst, s in zip(instruments, inst_states, strict=True):
                inst_metrics, s = _tracked(inst, ctx, s, step)
                for name, value in inst_metrics.items():
                    metrics[f"{inst.name}/{name}"] = value
                new_inst_states.append(s)
        return new_params, new_opt_state, tuple(new_inst_states), metrics, finite

    vmapped = jax.vmap(one_step, in_axes=(0, 0, 0, 0, 0, None, None))

    def seeds_step(params, opt_state, keys, inst_states, probe, data, step):
        group = seed_batch
        if group is None and jax.default_backend() == "cpu":
            # measured (benchmarks/README.md): on XLA:CPU, batched matmuls over a seed axis are
            # slower than running the seeds one after another inside the same program
            group = 1
        if group is None:
            return vmapped(params, opt_state, keys, inst_states, probe, data, step)
        # groups of seed_batch seeds vmapped, the groups one after another in the program
        return jax.lax.map(
            lambda a: one_step(*a, data, step), (params, opt_state, keys, inst_states, probe),
            batch_size=group,
        )

    def run_one(state: TrainState, probe, data):
        params, opt_state, inst_states, metrics, finite = seeds_step(
            state.params, state.opt_state, state.keys, state.instruments, probe, data,
            state.step,
        )
        new = TrainState(state.step + 1, params, opt_state, state.keys, inst_states)
        return new, dict(metrics, finite=finite)

    def chunk(state: TrainState, probe, data, n_active):
        out_shape = jax.eval_shape(run_one, state, probe, data)[1]

        def skip(state, probe, data):
            filler = {
                k: jnp.full(v.shape, True if v.dtype == jnp.bool_ else jnp.nan, v.dtype)
                for k, v in out_shape.items()
            }
            return state, filler

        def body(state, i):
            return jax.lax.cond(i < n_active, run_one, skip, state, probe, data)

        return jax.lax.scan(body, state, jnp.arange(K), unroll=unroll)

    def init(params, keys):
        opt_state = jax.vmap(optimizer.init)(params)
        inst_states = tuple(jax.vmap(inst.init)(params) for inst in instruments)
        return TrainState(jnp.zeros((), jnp.int32), params, opt_state, keys, inst_states)

    def evaluate_one(params, key, data):
        eval_key = jax.random.fold_in(key, _EVAL)

        def one_batch(j):
            xs, ys = constrain_batch(
                sample(data, jax.random.fold_in(eval_key, j), batch_size, "test"), mesh
            )
            pred, _ = forward(params, xs)
            out = {"loss": task.loss(pred, ys)}
            out.update(task.metrics(pred, ys))
            return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}

        per_batch = jax.lax.map(one_batch, jnp.arange(eval_batches))
        return {k: jnp.mean(v) for k, v in per_batch.items()}

    def evaluate(params, keys, data):
        return jax.vmap(evaluate_one, in_axes=(0, 0, None))(params, keys, data)

    def probe_one(key, data):
        return sample(data, jax.random.fold_in(key, _PROBE), probe_batch_size, "train")

    return StepFns(
        init=jax.jit(init, compiler_options=FAST_COMPILE),
        chunk=jax.jit(wrap(chunk)),
        evaluate=jax.jit(wrap(evaluate), compiler_options=FAST_COMPILE),
        probe=jax.jit(jax.vmap(probe_one, in_axes=(0, None)), compiler_options=FAST_COMPILE)
        if instruments else None,
    )


def _as_float(tree: dict) -> dict:
    # NaN marks "not tracked", so every metric must be floating point.
    out = {}
    for k, v in tree.items():
        v = jnp.asarray(v)
        out[k] = v if jnp.issubdtype(v.dtype, jnp.floating) else v.astype(jnp.float32)
    return out


def _tracked(inst: Instrument, ctx: StepContext, state: Any, step: jax.Array):
    """``inst.update`` when ``step % inst.every == 0``; NaN metrics and the old state otherwise.

    ``ctx`` is closed over rather than passed as a cond operand: it holds ``fns`` (functions).
    """

    def run(state):
        metrics, new_state = inst.update(ctx, state)
        return _as_float(metrics), new_state

    every = int(inst.every)
    if every <= 1:
        return run(state)
    shapes = jax.eval_shape(run, state)[0]

    def skip(state):
        return {k: jnp.full(v.shape, jnp.nan, v.dtype) for k, v in shapes.items()}, state

    return jax.lax.cond(step % every == 0, run, skip, state)
