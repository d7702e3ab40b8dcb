"""``train``: the host loop around the compiled K-step chunks.

Per host round-trip the loop runs ``n <= K`` compiled steps for every seed at once, writes their
metric lines, updates the progress line, and at the right steps evaluates on held-out batches
and saves a checkpoint. Round trips are cut at evaluation and checkpoint steps, so these happen
at exact multiples of ``eval_every`` / ``checkpoint_every`` (and at the last step), with the
same compiled program throughout (one trace per run).

Resume: the state (step, parameters, optimizer and instrument states, keys) is restored from
the newest checkpoint that reads back (a damaged newer one is skipped with a note); batches are
a function of ``(seed, step)`` and the compiled step does not depend on how steps are grouped
into round trips, so on CPU a resumed run ends bit for bit where an uninterrupted one does.
Metric lines at or after the restored step are dropped from ``metrics.jsonl`` and written
again.

Divergence: a NaN or Inf in a loss or gradient raises :class:`TrainingDiverged` naming the first
bad step and seed; the diverged state is never saved, so the newest checkpoint is the last good
one. ``KeyboardInterrupt`` saves the state of the last completed round trip first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatezoo.instruments.attach import Attached, attach_fns
from gatezoo.instruments.model_fns import network_fns
from gatezoo.instruments.protocol import Instrument
from gatezoo.training.checkpoints import Checkpoints
from gatezoo.training.config import RESUMABLE_CHANGES, RunResult, TrainConfig
from gatezoo.training.model_fns import build_model
from gatezoo.training.optimizers import make_optimizer
from gatezoo.training.sharding import (
    initialize_distributed,
    is_writer,
    place_state,
    replicate,
    run_mesh,
)
from gatezoo.training.sinks import JsonlSink, Progress, TensorBoardSink, clean_line, truncate_jsonl
from gatezoo.training.step import FAST_COMPILE, data_keys, make_step_fns
from gatezoo.training.trials import set_slot_learning_rates

__all__ = ["train", "TrainingDiverged", "load_task", "init_params", "attach_run"]


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN or Inf; the message names the step and the seed."""


def load_task(config: TrainConfig) -> Any:
    """The task of ``config`` (``gatezoo.tasks.make_task``)."""
    from gatezoo.tasks import make_task

    return make_task(config.task, config.seq_len, **dict(config.task_options))


ModelBuilder = Callable[[nnx.Rngs], nnx.Module]


def _builder(config: TrainConfig, task: Any, model: ModelBuilder | None):
    """``seed -> model``: the config's SequenceModel, or the user's ``model(rngs)``."""
    if model is None:
        return lambda seed: build_model(config, task, seed=seed)
    if not callable(model) or isinstance(model, nnx.Module):
        raise TypeError(
            "model must be a function rngs -> nnx.Module (so every seed gets its own "
            f"initialisation), got {type(model).__name__}"
        )
    # ``seed`` may be traced (vmapped initialisation of many seeds at once).
    return lambda seed: model(nnx.Rngs(jax.random.key(seed)))


def init_params(config: TrainConfig, task: Any, model: ModelBuilder | None = None) -> Any:
    """Every seed's parameters at once, leaves stacked over the slots
    (``config.slot_seeds()``: the seeds, once per learning-rate trial).

    They equal, seed by seed, what ``build_model(config, task, seed)`` (or ``model(rngs)``)
    gives eagerly (the initialisers are vmapped and jitted: one compile instead of one per seed).
    """
    build = _builder(config, task, model)

    def one(seed):
        return nnx.state(build(seed), nnx.Param)

    return jax.jit(jax.vmap(one), compiler_options=FAST_COMPILE)(
        jnp.asarray(config.slot_seeds(), jnp.int32)
    )


def attach_run(
    config: TrainConfig, task: Any, given: Sequence[Instrument] = (),
    model: ModelBuilder | None = None,
) -> Attached:
    """The model of ``config`` (or ``model(rngs)``; first seed, concrete, so its gate protocol is
    checked on a random probe) split by :func:`gatezoo.network_fns` under the task's loss, with
    ``given`` instruments plus those named in ``config.instruments`` attached
    (:func:`gatezoo.attach_fns`)."""
    built = _builder(config, task, model)(config.seeds[0])
    example = jax.eval_shape(lambda k: task.sample(k, 2, split="train"), jax.random.key(0))
    net, _ = network_fns(built, task, example=example)
    return attach_fns(
        net, list(config.instruments), instruments=given, every=dict(config.every) or None,
        compat=config.compat, self_check=bool(config.self_check),
    )


def _check_resume_config(stored: TrainConfig, config: TrainConfig, run_dir: Path) -> None:
    a, b = stored.to_dict(), config.to_dict()
    changed = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES)
    if changed:
        raise ValueError(
            f"cannot resume {str(run_dir)!r} with a different {', '.join(changed)} "
            f"(only {', '.join(RESUMABLE_CHANGES)} may change)"
        )


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    instruments: Sequence[Instrument] = (),
    progress: bool = True,
    task: Any = None,
    model: ModelBuilder | None = None,
) -> RunResult:
    """Trains ``config.seeds`` side by side and returns the final state and metrics.

    Args:
      config: the run (see :class:`TrainConfig`).
      run_dir: the run folder (``config.json``, ``metrics.jsonl``, ``checkpoints/``,
        ``events/``); ``None`` keeps everything in memory (no files, no checkpoints).
      resume: continue from the newest checkpoint in ``run_dir`` (a fresh start if it has
        none). Without it, a folder that already holds checkpoints is refused.
      instruments: instrument objects to attach (besides those named in ``config``).
      progress: print the progress line on stderr.
      task: a task object to train on instead of ``make_task(config.task, ...)`` (a user's own
        task following the Task contract; ``config.task`` then only names it).
      model: ``model(rngs) -> nnx.Module``, a model of your own with one or more
        :class:`gatezoo.Recurrent` layers, trained on the task's loss instead of the config's
        SequenceModel (``cell``, ``hidden`` and the init fields then do not apply; its metrics
        are named by layer path when it has several layers).

    Returns:
      A :class:`RunResult`.

    Raises:
      ValueError: bad config values, unknown names, a batch that does not divide over the
        requested devices, an unprepared dataset (``DatasetNotPrepared``).
      TrainingDiverged: NaN/Inf in a loss or gradient (nothing is saved after it).

    Example:
      >>> from gatezoo.training import TrainConfig, train
      >>> config = TrainConfig(cell="gru", task="adding", seq_len=10, hidden=8, batch_size=8,
      ...                      steps=20, learning_rate=1e-2, seeds=(0, 1), steps_per_call=10,
      ...                      eval_every=10, eval_batches=1)
      >>> result = train(config, progress=False)  # pass a folder to keep files and checkpoints
      >>> result.final_loss.shape  # one per seed
      (2,)
    """
    t_start = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    if config.dtype == "float64":
        # x64 must be on before any array of the run is built (documented in the CLI help).
        jax.config.update("jax_enable_x64", True)
    initialize_distributed()

    path = Path(run_dir) if run_dir is not None else None
    if path is None and resume:
        raise ValueError("resume needs a run folder")
    if path is not None:
        stored = path / "config.json"
        if resume and stored.exists():
            _check_resume_config(TrainConfig.from_json(stored), config, path)
        if not resume and (path / "checkpoints").is_dir() and any(
            p.name.isdigit() for p in (path / "checkpoints").iterdir()
        ):
            raise ValueError(
                f"run folder {str(path)!r} already holds checkpoints; resume it (--resume) or "
                "choose another folder"
            )

    optimizer = make_optimizer(  # first: a bad name fails before anything is built
        config.optimizer, config.learning_rate, schedule=config.schedule, steps=config.steps,
        momentum=config.momentum, warmup=config.warmup, clip=config.clip,
    )
    task = load_task(config) if task is None else task
    mesh = run_mesh(config.devices, config.shard, batch_size=config.batch_size,
                    slots=len(config.slot_seeds()))
    attached = attach_run(config, task, instruments, model)
    params = init_params(config, task, model)
    step_fns = make_step_fns(
        attached, task, optimizer, batch_size=config.batch_size,
        steps_per_call=config.steps_per_call, eval_batches=config.eval_batches,
        probe_batch_size=config.probe_batch_size, fixed_batch=config.fixed_batch, mesh=mesh,
        seed_batch=config.seed_batch,
    )
    keys = jnp.stack([data_keys(s) for s in config.slot_seeds()])
    data = replicate(getattr(task, "data", None), mesh)
    state = step_fns.init(params, keys)
    if config.lr_trials:
        rates = [r for r in config.lr_trials for _ in config.seeds]
        state = state._replace(opt_state=set_slot_learning_rates(state.opt_state, rates))
    state = place_state(state, mesh)
    keys = state.keys  # placed like the slots they key

    writer = path is not None and is_writer()
    ckpt = None
    sinks: list[Any] = []
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpoints(path / "checkpoints", keep=config.keep_checkpoints)
        found = ckpt.restore_latest(like=state) if resume else None
        if found is not None:
            state = found[1]
        if writer:
            config.to_json(path / "config.json")
            truncate_jsonl(path / "metrics.jsonl", int(state.step))
            sinks.append(JsonlSink(path / "metrics.jsonl"))
            if TensorBoardSink.available():
                sinks.append(TensorBoardSink(path / "events"))

    probe = step_fns.probe(keys, data) if step_fns.probe is not None else None
    bar = Progress(config.steps, enabled=progress)
    history: list[dict] = []
    final_eval: dict = {}
    tags = config.slot_tags()
    last_loss = np.full(len(tags), np.nan)
    # with learning-rate trials a diverging slot is a finding, not an error: the compiled step
    # keeps its last finite state and the loop records the first bad step (-1: never)
    diverged = np.full(len(tags), -1)

    def emit(lines: list[dict]) -> None:
        lines = [clean_line(line) for line in lines]
        history.extend(lines)
        for sink in sinks:
            sink.write(lines)

    def evaluate(step: int) -> None:
        nonlocal final_eval
        out = jax.device_get(step_fns.evaluate(state.params, keys, data))
        final_eval = {k: np.asarray(v) for k, v in out.items()}
        emit([
            {"step": step, **tag, "split": "eval",
             **{k: float(v[i]) for k, v in final_eval.items()}}
            for i, tag in enumerate(tags)
        ])
        bar.eval_loss = float(np.mean(final_eval["loss"]))

    def save(step: int) -> None:
        if ckpt is not None:
            ckpt.save(step, state)

    step = int(state.step)
    evaluated = -1
    rate = 0.0
    try:
        while True:
            if step % config.eval_every == 0 or step == config.steps:
                if evaluated != step:
                    evaluate(step)
                    evaluated = step
            if step >= config.steps:
                break
            n = min(
                config.steps_per_call,
                config.steps - step,
                config.eval_every - step % config.eval_every,
                config.checkpoint_every - step % config.checkpoint_every,
            )
            t0 = time.perf_counter()
            new_state, out = step_fns.chunk(state, probe, data, jnp.int32(n))
            out = {k: np.asarray(v)[:n] for k, v in jax.device_get(out).items()}
            rate = n / (time.perf_counter() - t0)
            finite = out.pop("finite")
            if config.lr_trials:
                first = np.where((~finite).any(axis=0), np.argmax(~finite, axis=0) + step, -1)
                diverged = np.where((diverged < 0) & (first >= 0), first, diverged)
                finite = np.ones_like(finite)
            bad = np.argwhere(~finite)
            good_steps = int(bad[0][0]) if len(bad) else n
            lines = [
                {"step": step + k, **tag, "split": "train", **{
                    name: out[name][k, i] for name in out
                }, "steps_per_sec": rate}
                for k in range(good_steps + (1 if len(bad) else 0))
                for i, tag in enumerate(tags)
            ]
            emit(lines)
            if len(bad):
                k, i = int(bad[0][0]), int(bad[0][1])
                kept = ckpt.latest_step() if ckpt is not None else None
                where = f"; last good checkpoint: step {kept}" if kept is not None else ""
                raise TrainingDiverged(
                    f"training diverged: non-finite loss or gradient at step {step + k} for "
                    f"seed {tags[i]['seed']} (loss {out['loss'][k, i]}){where}"
                )
            state = new_state
            step += n
            last_loss = out["loss"][n - 1]
            bar.update(step, float(np.mean(last_loss)), rate)
            if step % config.checkpoint_every == 0 or step == config.steps:
                save(step)
    except KeyboardInterrupt:
        save(int(state.step))  # the last completed round trip: nothing done is lost
        raise
    finally:
        for sink in sinks:
            sink.close()
        if ckpt is not None:
            ckpt.close()
    bar.update(step, float(np.mean(last_loss)), rate, final=True)
    if writer:
        _write_summary(path, config, final_eval, last_loss)
    return RunResult(
        params=state.params, opt_state=state.opt_state, final_loss=np.asarray(last_loss),
        final_eval=final_eval, history=history, wall_time=time.perf_counter() - t_start,
        run_dir=path, state=state, config=config, step_fns=step_fns, diverged=diverged,
    )


def _write_summary(path: Path, config: TrainConfig, final_eval: dict, last_loss: Any) -> None:
    summary = {
        "config": config.to_dict(),
        "final_train_loss": [float(v) for v in np.asarray(last_loss)],
        "final_eval": {k: [float(x) for x in np.asarray(v)] for k, v in final_eval.items()},
    }
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
