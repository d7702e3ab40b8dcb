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

Write errors: a file of the run that cannot be written (a full disk, a read-only folder, a
quota) stops the run at once with one :class:`OSError` naming the file and the cause; the newest
finalised checkpoint is untouched, so ``resume=True`` once there is space again ends where an
uninterrupted run does. A run folder that is a file or cannot be written is refused before
anything is built.

Divergence: a NaN or Inf in a loss or gradient raises :class:`TrainingDiverged` naming the first
bad step and seed; the diverged state is never saved, so the newest checkpoint is the last good
one. ``KeyboardInterrupt`` saves the state of the last completed round trip first.

Precision: a ``float64`` run switches ``jax_enable_x64`` on for its own duration only
(``jax.enable_x64``, a thread-local scope); afterwards the setting is what it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
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
from gatezoo.metric_schema import metric_name
from gatezoo.training.checkpoints import Checkpoints
from gatezoo.training.config import RESUMABLE_CHANGES, RunResult, TrainConfig
from gatezoo.training.optimizers import make_optimizer
from gatezoo.training.run_model import build_model
from gatezoo.training.sharding import (
    initialize_distributed,
    is_writer,
    place_state,
    replicate,
    run_mesh,
    shards_seeds,
)
from gatezoo.training.sinks import (
    JsonlSink,
    Progress,
    TensorBoardSink,
    clean_line,
    replace_file,
    truncate_jsonl,
    write_failure,
)
from gatezoo.training.step import FAST_COMPILE, StepFns, TrainState, data_keys, make_step_fns
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


def init_model_state(config: TrainConfig, task: Any, model: ModelBuilder | None = None) -> Any:
    """Every seed's model state other than its parameters (RNG streams of ``nnx.Dropout``,
    ``nnx.BatchNorm`` statistics, counters), leaves stacked over the slots; ``None`` when the
    model has none (every SequenceModel of the zoo)."""
    build = _builder(config, task, model)

    def one(seed):
        return nnx.as_pure(nnx.state(build(seed), nnx.Not(nnx.Param)))

    seeds = jnp.asarray(config.slot_seeds(), jnp.int32)
    if not jax.tree_util.tree_leaves(jax.eval_shape(jax.vmap(one), seeds)):
        return None
    return jax.jit(jax.vmap(one), compiler_options=FAST_COMPILE)(seeds)


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
    checked on a random probe) split by :func:`gatezoo.instruments.network_fns` under the task's
    loss, with ``given`` instruments plus those named in ``config.instruments`` attached
    (:func:`gatezoo.instruments.attach_fns`)."""
    built = _builder(config, task, model)(config.seeds[0])
    example = jax.eval_shape(lambda k: task.sample(k, 2, split="train"), jax.random.key(0))
    net, _ = network_fns(built, task, example=example)
    return attach_fns(
        net, list(config.instruments), instruments=given, every=dict(config.every) or None,
        compat=config.compat, self_check=bool(config.self_check),
    )


def _check_resume_config(stored: TrainConfig, config: TrainConfig, run_dir: Path) -> None:
    a, b = stored.to_dict(), config.to_dict()
    # folders written before the task's length was recorded hold seq_len null: the task's own
    changed = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES
                     and not (k == "seq_len" and a[k] is None))
    if changed:
        raise ValueError(
            f"cannot resume {str(run_dir)!r} with a different {', '.join(changed)} "
            f"(only {', '.join(RESUMABLE_CHANGES)} may change)"
        )


def _task_length(task: Any) -> tuple[int | None, str]:
    """The ``seq_len`` a config means for the task object ``task`` (None if it has none), and
    what that number is when it is not the task's length."""
    options = dict(getattr(task, "options", None) or ())
    if getattr(task, "name", None) == "copy" and "delay" in options:
        # make_task("copy", T) is a copy task of delay T, running T + 20 steps
        return int(options["delay"]), " (copy's delay T; it runs T + 20 steps)"
    length = getattr(task, "seq_len", None)
    return (None if length is None else int(length)), ""


def _config_for_task(config: TrainConfig, task: Any) -> TrainConfig:
    """``config`` as it runs on the task object ``task``: ``seq_len=None`` becomes the task's
    length (so ``config.json`` records what ran); another length is refused."""
    length, note = _task_length(task)
    if length is None or config.seq_len == length:
        return config
    if config.seq_len is None:
        return dataclasses.replace(config, seq_len=length)
    name = getattr(task, "name", type(task).__name__)
    raise ValueError(
        f"config.seq_len is {config.seq_len} but the task given ({name!r}) has seq_len "
        f"{length}{note}; set seq_len={length} or None in the config, or build the task with "
        f"seq_len={config.seq_len}"
    )


def _probe_writable(folder: Path, path: Path, where: str = "") -> None:
    """Creates and removes a file in ``folder``, refusing the run folder ``path`` if that
    fails: permission bits do not tell (root writes through them; a read-only mount or a
    quota does not show in them)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".gatezoo-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(
            f"run folder {str(path)!r} cannot be written{where}: "
            f"{err.strerror or type(err).__name__}"
        ) from err


def _check_folder(path: Path) -> None:
    """Refuses a run folder that is a file, or that (or the folder it would be made in)
    cannot be written, naming it."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"run folder {str(path)!r} is an existing file, not a folder")
    folder = path.absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent  # the nearest existing folder: where mkdir will create it
    if not folder.is_dir():
        raise ValueError(f"run folder {str(path)!r} cannot be made: {str(folder)!r} is a file")
    made_in = "" if folder == path.absolute() else f" (its parent {str(folder)!r} is not writable)"
    _probe_writable(folder, path, made_in)
    if (path / "checkpoints").is_dir():
        _probe_writable(path / "checkpoints", path, " (its checkpoints folder is not writable)")


def _run_folder(config: TrainConfig, run_dir: str | Path | None, resume: bool) -> Path | None:
    """The run folder, checked before anything is built: a folder that can be written (not a
    file, not read-only), a resume keeps the stored config's fixed fields, a fresh start does
    not overwrite checkpoints."""
    path = Path(run_dir) if run_dir is not None else None
    if path is None and resume:
        raise ValueError("resume needs a run folder")
    if path is not None:
        _check_folder(path)
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
    return path


def _compiled_run(
    config: TrainConfig, task: Any, optimizer: Any, instruments: Sequence[Instrument],
    model: ModelBuilder | None,
) -> tuple[StepFns, TrainState, jax.Array, Any]:
    """The run's compiled functions, its step-0 state (on the devices), the slots' data keys
    and the task's arrays (``task.data``, replicated)."""
    mesh = run_mesh(config.devices, config.shard, batch_size=config.batch_size,
                    slots=len(config.slot_seeds()))
    attached = attach_run(config, task, instruments, model)
    params = init_params(config, task, model)
    model_state = init_model_state(config, task, model)
    step_fns = make_step_fns(
        attached, task, optimizer, batch_size=config.batch_size,
        steps_per_call=config.steps_per_call, eval_batches=config.eval_batches,
        probe_batch_size=config.probe_batch_size, fixed_batch=config.fixed_batch, mesh=mesh,
        seed_batch=config.seed_batch,
    )
    keys = jnp.stack([data_keys(s) for s in config.slot_seeds()])
    data = replicate(getattr(task, "data", None), mesh)
    state = step_fns.init(params, keys, model_state)
    if config.lr_trials:
        rates = [r for r in config.lr_trials for _ in config.seeds]
        state = state._replace(opt_state=set_slot_learning_rates(state.opt_state, rates))
    state = place_state(state, mesh)
    if shards_seeds(mesh) and jax.default_backend() == "cpu":
        # shapes only: nothing runs, the chunk is traced, not compiled
        probe = None if step_fns.probe is None else jax.eval_shape(step_fns.probe, state.keys, data)
        if _calls_host(jax.make_jaxpr(step_fns.chunk)(state, probe, data, jnp.int32(1)).jaxpr):
            # each device's host callback waits for the other: the run would stop forever
            raise ValueError(
                "shard='seeds' over several CPU devices cannot run instruments that take "
                "spectra on the host (gatezoo.linalg); use shard='batch', one device, or "
                "instruments without spectra")
    return step_fns, state, state.keys, data  # the keys placed like the slots they key


def _calls_host(jaxpr: Any) -> bool:
    """Whether a jaxpr, or one inside it, calls back into Python (``pure_callback``)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pure_callback":
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns") and _calls_host(inner):
                    return True
    return False


def _open_outputs(
    config: TrainConfig, path: Path | None, resume: bool, state: TrainState
) -> tuple[TrainState, Checkpoints | None, list]:
    """Checkpoints and metric sinks of the run folder (none without one); with ``resume`` the
    state of the newest checkpoint that restores. Only the writer process writes files."""
    if path is None:
        return state, None, []
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_failure(path, err) from err
    ckpt = Checkpoints(path / "checkpoints", keep=config.keep_checkpoints)
    sinks: list[Any] = []
    try:
        found = ckpt.restore_latest(like=state) if resume else None
        if found is not None:
            state = found[1]
        if is_writer():
            # a config.json cut by a full disk would make the run folder unresumable
            replace_file(path / "config.json", config.to_json)
            truncate_jsonl(path / "metrics.jsonl", int(state.step))
            sinks.append(JsonlSink(path / "metrics.jsonl"))
            if TensorBoardSink.available():
                sinks.append(TensorBoardSink(path / "events"))
    except BaseException:
        _close_all([*sinks, ckpt], quiet=True)
        raise
    return state, ckpt, sinks


def _close_all(outputs: Sequence[Any], quiet: bool) -> None:
    """Closes every sink and checkpoint manager of ``outputs``, each even if another fails;
    the first error is raised unless ``quiet`` (an error is already on its way up, which a
    second one from the same full disk must not hide)."""
    first: Exception | None = None
    for out in outputs:
        try:
            out.close()
        except Exception as err:  # every output is closed before the first error is raised
            first = first or err
    if first is not None and not quiet:
        raise first


@dataclasses.dataclass
class _HostLoop:
    """The host side of a run: round trips of compiled steps, their metric lines, evaluations,
    checkpoints and the finiteness check."""

    config: TrainConfig
    step_fns: StepFns
    state: TrainState
    keys: jax.Array
    data: Any
    ckpt: Checkpoints | None
    sinks: list
    bar: Progress

    def __post_init__(self) -> None:
        fns = self.step_fns
        self.probe = fns.probe(self.keys, self.data) if fns.probe is not None else None
        self.tags = self.config.slot_tags()
        self.history: list[dict] = []
        self.final_eval: dict = {}
        self.last_loss = np.full(len(self.tags), np.nan)
        # with learning-rate trials a diverging slot is a finding, not an error: the compiled
        # step keeps its last finite state and the loop records the first bad step (-1: never)
        self.diverged = np.full(len(self.tags), -1)
        self.rate = 0.0

    def emit(self, lines: list[dict]) -> None:
        lines = [clean_line(line) for line in lines]
        self.history.extend(lines)
        for sink in self.sinks:
            sink.write(lines)

    def evaluate(self, step: int) -> None:
        out = jax.device_get(self.step_fns.evaluate(self.state.params, self.keys, self.data,
                                                           self.state.model_state))
        self.final_eval = {k: np.asarray(v) for k, v in out.items()}
        self.emit([
            {"step": step, **tag, "split": "eval",
             **{k: float(v[i]) for k, v in self.final_eval.items()}}
            for i, tag in enumerate(self.tags)
        ])
        self.bar.eval_loss = float(np.mean(self.final_eval["loss"]))

    def save(self, step: int) -> None:
        if self.ckpt is not None:
            self.ckpt.save(step, self.state)

    def run(self) -> None:
        """Steps until ``config.steps``, evaluating and saving at their steps; on
        ``KeyboardInterrupt`` the last completed round trip is saved first."""
        config = self.config
        step = int(self.state.step)
        finished = False
        try:
            while True:
                if step % config.eval_every == 0 or step == config.steps:
                    self.evaluate(step)
                if step >= config.steps:
                    break
                n = min(
                    config.steps_per_call,
                    config.steps - step,
                    config.eval_every - step % config.eval_every,
                    config.checkpoint_every - step % config.checkpoint_every,
                )
                self.round_trip(step, n)
                step += n
                if step % config.checkpoint_every == 0 or step == config.steps:
                    self.save(step)
            finished = True
        except KeyboardInterrupt:
            self.save(int(self.state.step))  # the last completed round trip: nothing is lost
            raise
        finally:
            outputs = [*self.sinks, *([self.ckpt] if self.ckpt is not None else [])]
            _close_all(outputs, quiet=not finished)
        self.bar.update(step, float(np.mean(self.last_loss)), self.rate, final=True)

    def round_trip(self, step: int, n: int) -> None:
        """Runs ``n`` compiled steps from ``step`` and writes their lines; raises
        :class:`TrainingDiverged` (after writing the lines up to the bad step) instead of
        keeping a non-finite state."""
        t0 = time.perf_counter()
        new_state, out = self.step_fns.chunk(self.state, self.probe, self.data, jnp.int32(n))
        out = {k: np.asarray(v)[:n] for k, v in jax.device_get(out).items()}
        self.rate = n / (time.perf_counter() - t0)
        bad = self._first_bad(out.pop("finite"), step)
        written = n if bad is None else bad[0] + 1
        self.emit([
            {"step": step + k, **tag, "split": "train",
             **{name: out[name][k, i] for name in out},
             metric_name("train", None, "steps_per_sec"): self.rate}
            for k in range(written)
            for i, tag in enumerate(self.tags)
        ])
        if bad is not None:
            k, i = bad
            kept = self.ckpt.latest_step() if self.ckpt is not None else None
            where = f"; last good checkpoint: step {kept}" if kept is not None else ""
            raise TrainingDiverged(
                f"training diverged: non-finite loss or gradient at step {step + k} for "
                f"seed {self.tags[i]['seed']} (loss {out['loss'][k, i]}){where}"
            )
        self.state = new_state
        self.last_loss = out["loss"][n - 1]
        self.bar.update(step + n, float(np.mean(self.last_loss)), self.rate)

    def _first_bad(self, finite: np.ndarray, step: int) -> tuple[int, int] | None:
        """``(k, slot)`` of the first non-finite step of a round trip that must stop the run;
        with learning-rate trials none does (each slot's first bad step is recorded instead)."""
        if self.config.lr_trials:
            first = np.where((~finite).any(axis=0), np.argmax(~finite, axis=0) + step, -1)
            self.diverged = np.where((self.diverged < 0) & (first >= 0), first, self.diverged)
            return None
        bad = np.argwhere(~finite)
        return (int(bad[0][0]), int(bad[0][1])) if len(bad) else None


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
    r"""Trains ``config.seeds`` side by side and returns the final state and metrics.

    Every slot (seed, or learning-rate trial x seed) takes ``config.steps`` optax updates,

    .. math::
        g_i = \nabla_\theta L(\theta_i; x_i, y_i), \quad
        (u_i, s_{i+1}) = \mathrm{update}(g_i, s_i, \theta_i), \quad \theta_{i+1} = \theta_i + u_i,

    on a fresh batch :math:`(x_i, y_i)` of the task each step (one fixed batch with
    ``fixed_batch``), while the instruments measure the gates' share in :math:`g_i`
    (docs/theory.md §3.3-§3.4, §4).

    Args:
      config: the run (see :class:`TrainConfig`); ``dtype="float64"`` runs inside
        ``jax.enable_x64(True)``, which ends when ``train`` returns.
      run_dir: the run folder (``config.json``, ``metrics.jsonl``, ``checkpoints/``,
        ``events/``); ``None`` keeps everything in memory (no files, no checkpoints).
      resume: continue from the newest checkpoint in ``run_dir`` (a fresh start if it has
        none). Without it, a folder that already holds checkpoints is refused.
      instruments: instrument objects to attach (besides those named in ``config``).
      progress: print the progress line on stderr.
      task: a task object to train on instead of ``make_task(config.task, ...)`` (a user's own
        task following the Task contract; ``config.task`` then only names it). Its length must
        be ``config.seq_len``; with ``seq_len=None`` the recorded config (``config.json``,
        ``result.config``) takes the task's.
      model: ``model(rngs) -> nnx.Module``, a model of your own with one or more
        :class:`gatezoo.Recurrent` layers, trained on the task's loss instead of the config's
        SequenceModel (``cell``, ``hidden`` and the init fields then do not apply; its metrics
        are named by layer path when it has several layers).

    Returns:
      A :class:`RunResult`.

    Raises:
      ValueError: bad config values, unknown names, a batch that does not divide over the
        requested devices, an unprepared dataset (``DatasetNotPrepared``), a ``task`` whose
        length is not ``config.seq_len``, a run folder that is a file or cannot be written
        (all before anything is built).
      CheckpointMismatch: (a ValueError) ``resume`` of checkpoints that hold another state
        (a model of another width...); they are left as they are.
      OSError: a file of the run folder could not be written (disk full, read-only, quota):
        one line naming it and the cause; the checkpoints saved before it still resume.
      TrainingDiverged: NaN/Inf in a loss or gradient (nothing is saved after it).

    Example:
      >>> from gatezoo.training import TrainConfig, train
      >>> config = TrainConfig(cell="gru", task="adding", seq_len=10, hidden=8, batch_size=8,
      ...                      steps=20, learning_rate=1e-2, seeds=(0, 1), steps_per_call=10,
      ...                      eval_every=10, eval_batches=1)
      >>> result = train(config, progress=False)  # pass a folder to keep files and checkpoints
      >>> result.final_loss.shape  # one per seed
      (2,)

    References:
      Livi, `Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks
      <https://arxiv.org/abs/2508.12121>`__, arXiv:2508.12121, 2025.

      Kingma and Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`__, ICLR 2015 (the default optimizer).
    """
    t_start = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    if task is not None:
        config = _config_for_task(config, task)  # what config.json records is what runs
    # x64 must be on before any array of the run is built; a scope, not a global flip
    x64 = jax.enable_x64(True) if config.dtype == "float64" else contextlib.nullcontext()
    with x64:
        initialize_distributed()
        path = _run_folder(config, run_dir, resume)
        optimizer = make_optimizer(  # first: a bad name fails before anything is built
            config.optimizer, config.learning_rate, schedule=config.schedule,
            steps=config.steps, momentum=config.momentum, warmup=config.warmup, clip=config.clip,
        )
        task = load_task(config) if task is None else task
        step_fns, state, keys, data = _compiled_run(config, task, optimizer, instruments, model)
        state, ckpt, sinks = _open_outputs(config, path, resume, state)
        loop = _HostLoop(config, step_fns, state, keys, data, ckpt, sinks,
                         Progress(config.steps, enabled=progress))
        loop.run()
        if path is not None and is_writer():
            _write_summary(path, config, loop.final_eval, loop.last_loss)
    return RunResult(
        params=loop.state.params, opt_state=loop.state.opt_state,
        final_loss=np.asarray(loop.last_loss), final_eval=loop.final_eval,
        history=loop.history, wall_time=time.perf_counter() - t_start, run_dir=path,
        state=loop.state, config=config, step_fns=step_fns, diverged=loop.diverged,
    )


def _write_summary(path: Path, config: TrainConfig, final_eval: dict, last_loss: Any) -> None:
    summary = {
        "config": config.to_dict(),
        "final_train_loss": [float(v) for v in np.asarray(last_loss)],
        "final_eval": {k: [float(x) for x in np.asarray(v)] for k, v in final_eval.items()},
    }
    text = json.dumps(summary, indent=2) + "\n"
    replace_file(path / "summary.json", lambda tmp: tmp.write_text(text))
