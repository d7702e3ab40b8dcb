"""``train``: the host loop around the compiled K-step chunks.

Per host round-trip the loop runs ``n <= K`` compiled steps for every seed at once, writes their
metric lines, updates the progress line, and at the right steps evaluates on held-out batches
and saves a checkpoint. Round trips are cut at evaluation and checkpoint steps, so these happen
at exact multiples of ``eval_every`` / ``checkpoint_every`` (and at the last step), with the
same compiled program throughout (one trace per run).

Resume: the state (step, parameters, optimizer and instrument states, keys) is restored from
the newest complete checkpoint; batches are a function of ``(seed, step)`` and the compiled
step does not depend on how steps are grouped into round trips, so on CPU a resumed run ends
bit for bit where an uninterrupted one does. Metric lines at or after the restored step are
dropped from ``metrics.jsonl`` and written again.

Divergence: a NaN or Inf in a loss or gradient raises :class:`TrainingDiverged` naming the first
bad step and seed; the diverged state is never saved, so the newest checkpoint is the last good
one. ``KeyboardInterrupt`` saves the state of the last completed round trip first.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatezoo.instruments.protocol import Instrument
from gatezoo.training.checkpoints import Checkpoints
from gatezoo.training.config import RESUMABLE_CHANGES, RunResult, TrainConfig
from gatezoo.training.model_fns import build_model, forward_fn, model_fns
from gatezoo.training.optimizers import make_optimizer
from gatezoo.training.sharding import (
    batch_mesh,
    initialize_distributed,
    is_writer,
    replicate,
    resolve_devices,
)
from gatezoo.training.sinks import JsonlSink, Progress, TensorBoardSink, clean_line, truncate_jsonl
from gatezoo.training.step import FAST_COMPILE, data_keys, make_step_fns
from gatezoo.training.trials import set_slot_learning_rates

__all__ = ["train", "TrainingDiverged", "load_task", "init_params", "resolve_instruments"]


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN or Inf; the message names the step and the seed."""


def load_task(config: TrainConfig) -> Any:
    """The task of ``config`` (``gatezoo.tasks.make_task``)."""
    from gatezoo.tasks import make_task

    return make_task(config.task, config.seq_len, **dict(config.task_options))


def init_params(config: TrainConfig, task: Any) -> tuple[Any, Any, Any]:
    """Initialises every seed's model at once; returns ``(abstract_model, forward, params)``.

    ``params`` leaves are stacked over the slots (``config.slot_seeds()``: the seeds, once per
    learning-rate trial) and equal, seed by seed, what
    ``build_model(config, task, seed)`` gives eagerly (the initialisers are vmapped and jitted,
    one compile instead of one per seed). ``abstract_model`` has shapes only.
    """
    abstract = nnx.eval_shape(lambda: build_model(config, task, seed=0))
    forward, _ = forward_fn(abstract)

    def one(seed):
        return nnx.state(build_model(config, task, seed=seed), nnx.Param)

    params = jax.jit(jax.vmap(one), compiler_options=FAST_COMPILE)(
        jnp.asarray(config.slot_seeds(), jnp.int32)
    )
    return abstract, forward, params


def resolve_instruments(
    config: TrainConfig, fns: Any, given: Sequence[Instrument] = ()
) -> list[Instrument]:
    """``given`` instrument objects plus those named in ``config.instruments``."""
    out = list(given)
    if config.instruments:
        try:
            from gatezoo.instruments import make_instruments
        except ImportError:
            raise ValueError(
                "instruments were named (" + ", ".join(config.instruments) + ") but "
                "gatezoo.instruments.make_instruments is not available in this install"
            ) from None
        out.extend(
            make_instruments(
                list(config.instruments), fns, every=dict(config.every) or None,
                compat=config.compat,
            )
        )
    names = [inst.name for inst in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"instrument names must be unique, got {', '.join(dupes)} twice")
    for inst in out:
        if inst.needs_gates and not fns.gated:
            raise ValueError(f"instrument {inst.name!r} needs a gated cell, but the cell is not")
    return out


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

    Returns:
      A :class:`RunResult`.

    Raises:
      ValueError: bad config values, unknown names, a batch that does not divide over the
        requested devices, an unprepared dataset (``DatasetNotPrepared``).
      TrainingDiverged: NaN/Inf in a loss or gradient (nothing is saved after it).

    Example:
      >>> # from gatezoo.training import TrainConfig, train
      >>> # result = train(TrainConfig(cell="gru", task="adding", seq_len=50, steps=300,
      >>> #                            learning_rate=1e-2, seeds=(0, 1, 2)), "runs/gru-adding")
      >>> # result.final_loss  # one per seed
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
    n_devices = resolve_devices(config.devices, config.batch_size)
    mesh = batch_mesh(n_devices)
    model0, forward, params = init_params(config, task)
    fns, _ = model_fns(model0, task)
    attached = resolve_instruments(config, fns, instruments)
    step_fns = make_step_fns(
        forward, fns, task, optimizer, batch_size=config.batch_size,
        steps_per_call=config.steps_per_call, eval_batches=config.eval_batches,
        probe_batch_size=config.probe_batch_size, instruments=attached,
        fixed_batch=config.fixed_batch, mesh=mesh, seed_batch=config.seed_batch,
    )
    keys = jnp.stack([data_keys(s) for s in config.slot_seeds()])
    data = replicate(getattr(task, "data", None), mesh)
    state = step_fns.init(params, keys)
    if config.lr_trials:
        rates = [r for r in config.lr_trials for _ in config.seeds]
        state = state._replace(opt_state=set_slot_learning_rates(state.opt_state, rates))
    state = replicate(state, mesh)

    writer = path is not None and is_writer()
    ckpt = None
    sinks: list[Any] = []
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpoints(path / "checkpoints", keep=config.keep_checkpoints)
        if resume and ckpt.latest_step() is not None:
            state = ckpt.restore(ckpt.latest_step(), like=state)
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
        "config": dataclasses.asdict(config) | {"seeds": list(config.seeds)},
        "final_train_loss": [float(v) for v in np.asarray(last_loss)],
        "final_eval": {k: [float(x) for x in np.asarray(v)] for k, v in final_eval.items()},
    }
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
