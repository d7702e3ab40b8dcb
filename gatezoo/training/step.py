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

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gatezoo.instruments.attach import Attached
from gatezoo.instruments.optimizer import learning_rate_in_force
from gatezoo.training.sharding import constrain_batch, gather_slots, shards_seeds

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
    attached: Attached,
    task: Any,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    steps_per_call: int,
    eval_batches: int = 4,
    probe_batch_size: int = 16,
    fixed_batch: bool = False,
    mesh: Any = None,
    unroll: int = 1,
    seed_batch: int | None = None,
    wrap: Callable[[Callable], Callable] = lambda f: f,
) -> StepFns:
    """Builds the jitted init / K-step chunk / evaluation of a run.

    Args:
      attached: the model's loss and instruments (:func:`gatezoo.attach`); each step is one
        call of ``attached.update``, the entry point a user's own loop calls too.
      task: the task (``sample``, ``loss``, ``metrics``).
      optimizer: an optax transformation.
      batch_size: training batch per seed (also the evaluation batch).
      steps_per_call: K, the scan length per host round-trip.
      fixed_batch: reuse the step-0 batch at every step.
      mesh: a ``("batch",)`` mesh to shard batches over, a ``("seeds",)`` mesh to shard the
        slots over (:mod:`gatezoo.training.sharding`), or None.
      unroll: ``lax.scan`` unroll of the K-step loop.
      seed_batch: ``None`` picks 1 on CPU and all seeds on GPU/TPU; ``k`` vmaps groups of
        ``k`` seeds and runs the groups one after another inside the compiled step
        (``lax.map``), which keeps each group's backward-pass residuals in cache on CPUs
        (see benchmarks/README.md). The seed axis is generic: any per-slot state (e.g. a
        per-slot learning rate in an injected optimizer state) rides on it.
      wrap: applied to the pure chunk and evaluation functions before ``jax.jit`` (tests pass
        ``functools.partial(chex.assert_max_traces, n=1)`` to prove one trace per run).
    """
    K = int(steps_per_call)
    forward = attached.net.forward

    def sample(data, key, batch, split):
        if hasattr(task, "sample_from"):  # dataset arrays as a jit argument, not a constant
            return task.sample_from(data, key, batch, split)
        return task.sample(key, batch, split=split)

    def one_step(params, opt_state, key, inst_states, probe, data, step):
        data_key = jax.random.fold_in(key, _TRAIN)
        data_key = jax.random.fold_in(data_key, 0 if fixed_batch else step)
        xs, ys = constrain_batch(sample(data, data_key, batch_size, "train"), mesh)
        out = attached.update(
            params, inst_states, xs, ys, step=step, optimizer=optimizer, opt_state=opt_state,
            probe=probe,
        )
        new_params = optax.apply_updates(params, out.updates)
        finite = jnp.isfinite(out.loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(out.grads)])
        )
        lr = learning_rate_in_force(out.opt_state)
        # a non-finite step leaves the slot as it was: a diverging learning-rate trial must not
        # spread NaN into instruments (a run without trials stops at that step anyway)
        new_params, new_opt_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), (new_params, out.opt_state),
            (params, opt_state),
        )
        metrics = {
            "loss": out.loss,
            "lr": jnp.asarray(jnp.nan, out.loss.dtype) if lr is None else lr,
            "grad_norm": optax.tree.norm(out.grads),
            **out.metrics,
        }
        return new_params, new_opt_state, out.state, metrics, finite

    vmapped = jax.vmap(one_step, in_axes=(0, 0, 0, 0, 0, None, None))

    def seeds_step(params, opt_state, keys, inst_states, probe, data, step):
        group = None if shards_seeds(mesh) else seed_batch  # GSPMD splits one vmap over slots
        if group is None and jax.default_backend() == "cpu" and not shards_seeds(mesh):
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

        state, out = jax.lax.scan(body, state, jnp.arange(K), unroll=unroll)
        return state, gather_slots(out, mesh)

    def init(params, keys):
        opt_state = jax.vmap(optimizer.init)(params)
        inst_states = jax.vmap(attached.init)(params)
        return TrainState(jnp.zeros((), jnp.int32), params, opt_state, keys, inst_states)

    def evaluate_one(params, key, data):
        eval_key = jax.random.fold_in(key, _EVAL)

        def one_batch(j):
            xs, ys = constrain_batch(
                sample(data, jax.random.fold_in(eval_key, j), batch_size, "test"), mesh
            )
            pred = forward(params, xs)
            out = {"loss": task.loss(pred, ys)}
            out.update(task.metrics(pred, ys))
            return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}

        per_batch = jax.lax.map(one_batch, jnp.arange(eval_batches))
        return {k: jnp.mean(v) for k, v in per_batch.items()}

    def evaluate(params, keys, data):
        return gather_slots(jax.vmap(evaluate_one, in_axes=(0, 0, None))(params, keys, data), mesh)

    def probe_one(key, data):
        return sample(data, jax.random.fold_in(key, _PROBE), probe_batch_size, "train")

    return StepFns(
        init=jax.jit(init, compiler_options=FAST_COMPILE),
        chunk=jax.jit(wrap(chunk)),
        evaluate=jax.jit(wrap(evaluate), compiler_options=FAST_COMPILE),
        probe=jax.jit(jax.vmap(probe_one, in_axes=(0, None)), compiler_options=FAST_COMPILE)
        if attached.instruments else None,
    )
