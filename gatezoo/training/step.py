"""The train state and the compiled train step: K steps per host round-trip, seeds side by side.

One update of one seed (slot), at step ``i`` (the number of updates done so far):

.. math::
    (x, y) = \\mathrm{batch}(k_s, i), \\quad
    L, G = \\mathrm{value\\_and\\_grad}(\\theta \\mapsto \\ell(f_\\theta(x), y)), \\quad
    \\theta \\leftarrow \\theta + \\mathrm{opt.update}(G).

By default ``batch(k_s, i) = sample(fold_in(fold_in(k_s, 0), i))``: the data key is a function
of ``(seed, step)`` only, never of how the run was cut into host calls, so a resumed run
replays exactly the batches an uninterrupted one sees. A caller with other batch rules (the
reproductions' constant key, input jitter) passes its own ``batch``.

``make_step_fns`` compiles ``lax.scan`` over K such steps. The step index is shared by all seeds
and is *not* vmapped, so ``lax.cond(i % every == 0, ...)`` of the instruments and the
``i < n_active`` guard (the last round-trip may be shorter than K without a second compile) stay
real conditionals instead of both-branch selects. Per step the scan returns, stacked ``(K, S)``:
``loss``, ``lr``, ``grad_norm``, the instrument metrics (NaN where not tracked), and a
``finite`` flag (loss and every gradient entry finite). A bfloat16 model's outputs are float32
(evaluation metrics are float32 for every run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from gatezoo.instruments.attach import Attached
from gatezoo.instruments.optimizer import learning_rate_in_force
from gatezoo.metric_schema import metric_name
from gatezoo.models.init import widened
from gatezoo.streams import data_keys, stream_tag
from gatezoo.training.seeds import over_seeds
from gatezoo.training.sharding import constrain_batch, gather_slots, shards_seeds

__all__ = ["TrainState", "StepFns", "BatchFn", "data_keys", "make_step_fns"]

# XLA options for programs that run once or rarely (init, evaluation, probe batch): skipping
# LLVM's backend optimisations cuts their compile time (benchmarks/README.md, training); the
# hot K-step chunk keeps the default level.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

# fold_in tags deriving the independent key streams of one seed from its root key
_TRAIN, _PROBE, _EVAL = (stream_tag(name) for name in ("train", "probe", "eval"))

BatchFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, jax.Array]]
"""``batch(key, step, data) -> (xs, ys)``: one slot's training batch of update ``step``, from the
slot's entry of :attr:`TrainState.keys` and the task's arrays ``data`` (``task.data``, a jit
argument; None for synthetic tasks). Traced inside the compiled step: ``step`` is an int32
scalar, ``key`` one slot's slice."""


class TrainState(NamedTuple):
    """Everything that changes during training; leaves (except ``step``) are stacked over seeds.

    Attributes:
      step: updates done so far (int32 scalar, shared by the seeds).
      params: model parameters, leaves ``(S, ...)``.
      opt_state: optimizer state, leaves ``(S, ...)``.
      keys: what each slot's batches are drawn from, leading axis ``S`` (constant): the root
        keys ``(S, 2)`` uint32 of :func:`data_keys` for the default batches, or whatever a
        caller's own ``batch`` function reads (e.g. the seeds themselves).
      instruments: one state per attached instrument, leaves ``(S, ...)``.
      model_state: the model's state other than its parameters (``nnx.Dropout`` RNG streams,
        ``nnx.BatchNorm`` statistics, counters), leaves ``(S, ...)``, updated by every step as
        in an ``nnx.jit`` loop; ``None`` for a model without any (the zoo's).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    keys: Any
    instruments: tuple
    model_state: Any = None


class StepFns(NamedTuple):
    """Compiled functions of a run.

    Attributes:
      init: ``init(params_stacked, keys, model_state=None) -> TrainState`` (step 0).
      chunk: ``chunk(state, probe, data, n_active) -> (state, outputs)``, jitted; runs
        ``min(n_active, K)`` updates and returns per-step outputs stacked ``(K, S)``.
      evaluate: ``evaluate(params, keys, data, model_state=None) -> {metric: (S,)}``, jitted;
        mean over the held-out batches, the model in evaluation mode (``model.eval()``).
        (``data`` is ``task.data``, passed as an argument so dataset arrays are not baked into
        the program as constants.)
      probe: ``probe(keys, data) -> (probe_xs, probe_ys)`` stacked over seeds, or None.
    """

    init: Callable[..., TrainState]
    chunk: Callable[..., tuple[TrainState, dict]]
    evaluate: Callable[..., dict]
    probe: Callable[..., Any] | None


def _sample(task: Any, data: Any, key: jax.Array, batch_size: int, split: str):
    if hasattr(task, "sample_from"):  # dataset arrays as a jit argument, not a constant
        return task.sample_from(data, key, batch_size, split)
    return task.sample(key, batch_size, split=split)


def _task_batches(task: Any, batch_size: int, fixed_batch: bool) -> BatchFn:
    """The default batches: the task's sample keyed by ``(slot key, step)`` (step 0's batch at
    every step with ``fixed_batch``)."""

    def batch(key, step, data):
        data_key = jax.random.fold_in(jax.random.fold_in(key, _TRAIN), 0 if fixed_batch else step)
        return _sample(task, data, data_key, batch_size, "train")

    return batch


def _slot_step(
    attached: Attached, optimizer: optax.GradientTransformation, batch: BatchFn, mesh: Any,
    skip_nonfinite: bool,
) -> Callable:
    """One update of one slot: ``(params, opt_state, key, inst_states, model_state, probe, data,
    step) -> (params, opt_state, inst_states, model_state, metrics, finite)``."""

    def one_step(params, opt_state, key, inst_states, model_state, probe, data, step):
        xs, ys = constrain_batch(batch(key, step, data), mesh)
        out = attached.update(
            params, inst_states, xs, ys, step=step, optimizer=optimizer, opt_state=opt_state,
            probe=probe, model_state=model_state,
        )
        new_params, new_opt_state = optax.apply_updates(params, out.updates), out.opt_state
        new_model_state = out.model_state
        finite = jnp.isfinite(out.loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(out.grads)])
        )
        if skip_nonfinite:
            # a non-finite step leaves the slot as it was: a diverging learning-rate trial must
            # not spread NaN into instruments (a run without trials stops at that step anyway)
            new_params, new_opt_state, new_model_state = jax.tree_util.tree_map(
                lambda new, old: jnp.where(finite, new, old),
                (new_params, new_opt_state, new_model_state), (params, opt_state, model_state),
            )
        lr = learning_rate_in_force(out.opt_state)
        # a bfloat16 run writes float32 numbers: its norm summed in float32, not rounded to 3
        # digits (float32 and float64 runs are untouched)
        loss = widened(out.loss)
        own = {"loss": loss, "lr": jnp.asarray(jnp.nan, loss.dtype) if lr is None else lr,
               "grad_norm": optax.tree.norm(widened(out.grads))}
        metrics = {**{metric_name("train", None, k): v for k, v in own.items()},
                   **widened(out.metrics)}
        return new_params, new_opt_state, out.state, new_model_state, metrics, finite

    return one_step


def _scan_chunk(run_one: Callable, steps_per_call: int, unroll: int, mesh: Any) -> Callable:
    """``chunk(state, probe, data, n_active)``: ``lax.scan`` of ``run_one`` over K steps, the
    steps from ``n_active`` on skipped (outputs NaN, ``finite`` True, state unchanged); the
    outputs are gathered onto every device when the slots are split over a mesh."""

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

        state, out = jax.lax.scan(body, state, jnp.arange(int(steps_per_call)), unroll=unroll)
        return state, gather_slots(out, mesh)

    return chunk


def _evaluation(
    attached: Attached, task: Any, batch_size: int, eval_batches: int, mesh: Any
) -> Callable:
    """``evaluate(params, keys, data) -> {metric: (S,)}``: the task's loss and metrics, mean over
    ``eval_batches`` held-out batches per slot (keyed by the slot's evaluation stream)."""
    net = attached.net

    def evaluate_one(params, model_state, key, data):
        predict = (net if model_state is None else net.bind(model_state)).predict
        eval_key = jax.random.fold_in(key, _EVAL)

        def one_batch(j):
            xs, ys = constrain_batch(
                _sample(task, data, jax.random.fold_in(eval_key, j), batch_size, "test"), mesh
            )
            pred = predict(params, xs, ys)
            out = {"loss": task.loss(pred, ys), **task.metrics(pred, ys)}
            return {metric_name("eval", None, k): jnp.asarray(v, jnp.float32)
                    for k, v in out.items()}

        per_batch = jax.lax.map(one_batch, jnp.arange(eval_batches))
        return {k: jnp.mean(v) for k, v in per_batch.items()}

    def evaluate(params, keys, data, model_state=None):
        return gather_slots(
            jax.vmap(evaluate_one, in_axes=(0, 0, 0, None))(params, model_state, keys, data), mesh)

    return evaluate


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
    batch: BatchFn | None = None,
    skip_nonfinite: bool = True,
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
      fixed_batch: reuse the step-0 batch at every step (default batches only).
      mesh: a ``("batch",)`` mesh to shard batches over, a ``("seeds",)`` mesh to shard the
        slots over (:mod:`gatezoo.training.sharding`; each device runs its own slots through
        ``over_seeds``), or None.
      unroll: ``lax.scan`` unroll of the K-step loop.
      seed_batch: seeds per ``jax.vmap`` inside the compiled step
        (:func:`gatezoo.training.seeds.over_seeds`; ``None``: 1 on CPU, all on GPU/TPU). The
        seed axis is generic: any per-slot state (e.g. a per-slot learning rate in an injected
        optimizer state) rides on it.
      batch: where each step's training batch comes from (:data:`BatchFn`); ``None`` draws
        ``batch_size`` task samples keyed by the slot's root key and the step.
      skip_nonfinite: a step with a non-finite loss or gradient leaves its slot's parameters
        and optimizer state as they were (``finite`` is False in the outputs either way);
        ``False`` applies it, as a plain optimizer loop does.
      wrap: applied to the pure chunk and evaluation functions before ``jax.jit`` (tests pass
        ``functools.partial(chex.assert_max_traces, n=1)`` to prove one trace per run).
    """
    batch = _task_batches(task, batch_size, fixed_batch) if batch is None else batch
    one_step = _slot_step(attached, optimizer, batch, mesh, skip_nonfinite)

    def all_slots(per_slot, data, step_index):
        return over_seeds(lambda a: one_step(*a, data, step_index), per_slot, seed_batch)

    # Under a seed mesh every device runs its own slots as one device runs all of them (in
    # turn on a CPU, one vmap on an accelerator); nothing crosses devices.
    run_slots = jax.shard_map(
        all_slots, mesh=mesh, in_specs=(PartitionSpec("seeds"), PartitionSpec(), PartitionSpec()),
        out_specs=PartitionSpec("seeds"), check_vma=False,
    ) if shards_seeds(mesh) else all_slots

    def run_one(state: TrainState, probe, data):
        per_slot = (state.params, state.opt_state, state.keys, state.instruments,
                    state.model_state, probe)
        params, opt_state, inst_states, model_state, metrics, finite = run_slots(
            per_slot, data, state.step)
        new = TrainState(state.step + 1, params, opt_state, state.keys, inst_states, model_state)
        return new, dict(metrics, finite=finite)

    def init(params, keys, model_state=None):
        opt_state = jax.vmap(optimizer.init)(params)
        inst_states = jax.vmap(attached.init)(params)
        return TrainState(jnp.zeros((), jnp.int32), params, opt_state, keys, inst_states,
                          model_state)

    def probe_one(key, data):
        return _sample(task, data, jax.random.fold_in(key, _PROBE), probe_batch_size, "train")

    return StepFns(
        init=jax.jit(init, compiler_options=FAST_COMPILE),
        chunk=jax.jit(wrap(_scan_chunk(run_one, steps_per_call, unroll, mesh))),
        evaluate=jax.jit(wrap(_evaluation(attached, task, batch_size, eval_batches, mesh)),
                         compiler_options=FAST_COMPILE),
        probe=jax.jit(jax.vmap(probe_one, in_axes=(0, None)), compiler_options=FAST_COMPILE)
        if attached.instruments else None,
    )
