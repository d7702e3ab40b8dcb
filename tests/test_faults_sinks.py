"""Nothing hangs and nothing lies: write errors of every sink (metrics.jsonl, TensorBoard events,
orbax checkpoints) stop a run at once with one OSError and leave checkpoints that resume bit for
bit; run folders that cannot be written are refused before anything is built; a resume with
another model is a mismatch, not damage; config.json records the sequence length that ran.

A full disk is made with RLIMIT_FSIZE in a subprocess (what ``ulimit -f`` does from the shell),
with SIGXFSZ ignored so that a write past the limit raises EFBIG instead of killing the process.
"""

import errno
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatezoo as gz
from gatezoo.metric_schema import metric_name
from gatezoo.training import CheckpointError, CheckpointMismatch, Checkpoints
from gatezoo.training import loop as loop_module
from gatezoo.training import sinks as sinks_module
from gatezoo.training.sinks import JsonlSink, TensorBoardSink, replace_file, truncate_jsonl

HINT = "the run stopped (free space or make the folder writable, then resume)"

# two seeds so the event file grows fast; a checkpoint every 10 steps (2 round trips)
FILL = dict(cell="gru", task="adding", seq_len=8, hidden=4, batch_size=4, steps=60,
            seeds=(0, 1), learning_rate=1e-2, steps_per_call=5, eval_every=20,
            eval_batches=1, checkpoint_every=10, devices=1)

FILL_SCRIPT = textwrap.dedent(
    """
    import faulthandler, json, os, resource, signal, sys, time
    from pathlib import Path
    import gatezoo as gz
    from gatezoo.training import Checkpoints, sinks

    args = json.loads(sys.argv[1])
    run = Path(args["run_dir"])
    faulthandler.dump_traceback_later(240, exit=True)  # a hang shows every thread's stack
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG
    last = {}

    def timed(cls, name):
        original = getattr(cls, name)

        def call(self, *a, **k):
            last.update(t=time.monotonic(), what=f"{cls.__name__}.{name}")
            return original(self, *a, **k)

        setattr(cls, name, call)

    for cls, name in ((sinks.JsonlSink, "write"), (sinks.TensorBoardSink, "write"),
                      (Checkpoints, "save")):
        timed(cls, name)
    if not args["tensorboard"]:
        sinks.TensorBoardSink.available = staticmethod(lambda: False)
    timed_save = Checkpoints.save

    def size(pattern):
        return max((p.stat().st_size for p in run.glob(pattern) if p.is_file()), default=0)

    def save(self, step, state):
        saved = timed_save(self, step, state)
        if step == args["full_after"]:  # the disk fills up now
            sizes = dict(jsonl=size("metrics.jsonl"), events=size("events/*"),
                         ckpt=size(f"checkpoints/{step}/**/*"))
            limit = eval(args["limit"], {}, sizes)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            print(json.dumps(dict(sizes, limit=limit)), flush=True)
        return saved

    Checkpoints.save = save
    try:
        gz.train(gz.TrainConfig(**args["config"]), run, progress=False)
    except OSError as err:
        print(json.dumps(dict(error=str(err), errno=err.errno, what=last["what"],
                              after_s=time.monotonic() - last["t"])))
        sys.exit(3)
    print(json.dumps(dict(error=None)))
    """
)


def fill_disk(run_dir: Path, tensorboard: bool, limit: str, full_after: int = 10) -> dict:
    """Runs ``FILL`` in a subprocess whose file size limit drops to ``limit`` (an expression of
    the sizes ``jsonl``, ``events``, ``ckpt``) once checkpoint ``full_after`` is saved."""
    args = dict(run_dir=str(run_dir), tensorboard=tensorboard, limit=limit,
                full_after=full_after, config=FILL)
    proc = subprocess.run([sys.executable, "-c", FILL_SCRIPT, json.dumps(args)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-4000:]
    sizes, out = (json.loads(t) for t in proc.stdout.strip().splitlines()[-2:])
    return {**out, "sizes": sizes, "stderr": proc.stderr}


def without_rate(lines):
    out = [{k: v for k, v in line.items() if k != "steps_per_sec"} for line in lines]
    return sorted(out, key=lambda ln: (ln["step"], ln["split"], ln["seed"]))


def assert_params_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted():
    return gz.train(gz.TrainConfig(**FILL), progress=False)


def resume_after_space_is_freed(run_dir: Path, newest: int, uninterrupted, capfd) -> None:
    """The newest finalised checkpoint restores (nothing called damaged), the resumed run
    ends bit for bit where the uninterrupted one does and metrics.jsonl holds what it did."""
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("damaged")]
    ckpt = Checkpoints(run_dir / "checkpoints")
    assert ckpt.latest_step() == newest
    ckpt.close()
    resumed = gz.train(gz.TrainConfig(**FILL), run_dir, resume=True, progress=False)
    assert "damaged" not in capfd.readouterr().err
    assert min(ln["step"] for ln in resumed.history if ln["split"] == "train") == newest
    assert_params_equal(resumed.params, uninterrupted.params)
    assert_params_equal(resumed.opt_state, uninterrupted.opt_state)
    lines = [json.loads(t) for t in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert without_rate(lines) == without_rate(uninterrupted.history)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if "tmp" in p.name]


# -- a full disk, sink by sink (subprocesses; each resumed here) ------------------------------


@pytest.mark.slow
def test_full_disk_under_the_event_file_stops_the_run_instead_of_hanging(tmp_path, capfd,
                                                                        uninterrupted):
    # `ulimit -f 14` (14 KiB), the report's reproduction; above the largest checkpoint file
    run_dir = tmp_path / "run"
    out = fill_disk(run_dir, tensorboard=True, limit="max(14 * 1024, ckpt + 512)")
    (events,) = (run_dir / "events").iterdir()
    assert out["what"] == "TensorBoardSink.write"
    assert out["error"] == f"[Errno 27] cannot write {str(events)!r}: File too large; {HINT}"
    assert out["errno"] == errno.EFBIG and out["after_s"] < 10
    newest = Checkpoints(run_dir / "checkpoints").latest_step()
    assert newest is not None and newest > 10
    resume_after_space_is_freed(run_dir, newest, uninterrupted, capfd)


@pytest.mark.slow
def test_full_disk_under_metrics_jsonl_stops_the_run(tmp_path, capfd, uninterrupted):
    run_dir = tmp_path / "run"
    out = fill_disk(run_dir, tensorboard=False, limit="jsonl + 200")
    assert out["what"] == "JsonlSink.write"
    path = run_dir / "metrics.jsonl"
    assert out["error"] == f"[Errno 27] cannot write {str(path)!r}: File too large; {HINT}"
    assert out["errno"] == errno.EFBIG and out["after_s"] < 10
    assert path.stat().st_size == out["sizes"]["limit"]  # the last line is cut
    resume_after_space_is_freed(run_dir, 10, uninterrupted, capfd)


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, capfd, uninterrupted):
    run_dir = tmp_path / "run"
    # below the checkpoint's largest file, far above what the sinks write in 10 steps
    out = fill_disk(run_dir, tensorboard=True, limit="ckpt - 1")
    assert max(out["sizes"]["jsonl"], out["sizes"]["events"]) + 5000 < out["sizes"]["limit"]
    assert out["what"] == "Checkpoints.save"
    folder = run_dir / "checkpoints" / "20"
    assert out["error"] == (f"[Errno 27] cannot write {str(folder)!r}: checkpoint step 20: "
                            f"File too large; {HINT}")
    assert out["errno"] == errno.EFBIG and out["after_s"] < 10
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names[0] == "10" and all(n.startswith("20.") for n in names[1:]), names
    resume_after_space_is_freed(run_dir, 10, uninterrupted, capfd)


@pytest.mark.slow
def test_checkpoint_save_on_a_full_disk_is_one_oserror_and_older_steps_restore(tmp_path):
    script = textwrap.dedent(
        """
        import resource, signal, sys
        import jax.numpy as jnp
        from gatezoo.training import Checkpoints
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        state = {"cell": {"W": jnp.arange(4000.0)}, "step": jnp.int32(5)}
        ckpt = Checkpoints(sys.argv[1])
        ckpt.save(1, state)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
        try:
            ckpt.save(2, state)
        except OSError as err:
            print(err)
        ckpt.close()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "c" / "2"
    assert proc.stdout.strip() == (f"[Errno 27] cannot write {str(folder)!r}: checkpoint step 2: "
                                   f"File too large; {HINT}")
    ckpt = Checkpoints(tmp_path / "c")
    step, back = ckpt.restore_latest(like={"cell": {"W": jnp.zeros(4000)}, "step": jnp.int32(0)})
    assert step == 1 and float(back["cell"]["W"][-1]) == 3999.0
    ckpt.close()  # the manager has removed the unfinalised temporary folder of step 2
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["1"]


# -- the sinks themselves: writes in the caller's thread, one line per error -------------------


def test_jsonl_sink_on_a_full_device_raises_one_line_naming_the_file():
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (every write to it fails with ENOSPC)")
    sink = JsonlSink("/dev/full")
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        sink.write([{"step": 0, "seed": 0, "split": "train", "loss": 0.5}])
    assert time.monotonic() - t0 < 10
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (f"[Errno 28] cannot write '/dev/full': No space left on device; "
                               f"{HINT}")
    sink.close()  # the failed write was reported: closing says nothing more


class DyingFile:
    """An event file whose writes fail from the second on, as a disk that fills up."""

    def __init__(self, path: Path):
        self.file = path.open("xb")
        self.writes = 0
        self.failed_at: float | None = None

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes > 1:
            self.failed_at = time.monotonic()
            raise OSError(errno.EIO, "Input/output error")
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def test_a_dying_event_write_is_one_oserror_not_a_hang(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX", reason="the test extra installs tensorboardX")
    files = []

    def new_file(directory):
        path = directory / "events.out.tfevents.test"
        files.append(DyingFile(path))
        return path, files[-1]

    monkeypatch.setattr(sinks_module, "_new_event_file", new_file)
    threads = threading.active_count()
    sink = TensorBoardSink(tmp_path / "events")
    assert threading.active_count() == threads  # no writer thread that could die
    line = {"step": 1, "seed": 0, "split": "train", "loss": 0.5}
    with pytest.raises(OSError) as info:
        sink.write([line])
    assert time.monotonic() - files[0].failed_at < 10
    path = tmp_path / "events" / "events.out.tfevents.test"
    assert str(info.value) == f"[Errno 5] cannot write {str(path)!r}: Input/output error; {HINT}"
    sink.close()


def test_event_records_carry_tensorboards_checksums(tmp_path):
    pytest.importorskip("tensorboardX", reason="the test extra installs tensorboardX")
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    sink = TensorBoardSink(tmp_path / "events")
    sink.write([{"step": 3, "seed": 1, "split": "eval", "loss": 0.25,
                 metric_name("lags", None, "ratio@1"): 2.0}])
    sink.close()
    (path,) = (tmp_path / "events").iterdir()
    assert path.name.startswith("events.out.tfevents.")
    data, at, events = path.read_bytes(), 0, []
    while at < len(data):  # TFRecord: u64 length, masked crc, record, masked crc
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack_from("<I", data, at + 8)[0] == masked_crc32c(header)
        record = data[at + 12:at + 12 + length]
        assert struct.unpack_from("<I", data, at + 12 + length)[0] == masked_crc32c(record)
        events.append(Event.FromString(record))
        at += 16 + length
    assert events[0].file_version == "brain.Event:2"
    # the tags as tensorboardX's add_scalar cleans them ('@' is not allowed)
    assert [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value] == [
        (3, "eval/loss/seed1", 0.25), (3, "eval/lags/ratio_1/seed1", 2.0)]


def test_a_second_sink_of_the_same_second_never_overwrites_the_first(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX", reason="the test extra installs tensorboardX")
    monkeypatch.setattr(sinks_module.time, "time", lambda: 1700000000.5)
    for step in (1, 2):
        sink = TensorBoardSink(tmp_path / "events")
        sink.write([{"step": step, "seed": 0, "split": "train", "loss": 0.5}])
        sink.close()
    names = sorted(p.name for p in (tmp_path / "events").iterdir())
    assert len(names) == 2 and names[1] == names[0] + ".1"


def test_a_failed_rewrite_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 5}\n{"step": 9, "lo')  # a line cut by a full disk

    def full(tmp):
        tmp.write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as info:
        replace_file(path, full)
    assert str(info.value).startswith(f"[Errno 28] cannot write {str(path)!r}: ")
    assert path.read_text().endswith('"lo') and sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]
    truncate_jsonl(path, 5)
    assert path.read_text() == '{"step": 0}\n'


# -- run folders: refused before anything is built ---------------------------------------------

TINY = dict(cell="gru", task="adding", seq_len=8, hidden=4, batch_size=4, steps=2, seeds=(0,),
            steps_per_call=2, eval_every=2, eval_batches=1, devices=1)


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails a test whose run gets as far as building the model or the optimizer."""

    def built(*args, **kwargs):
        raise AssertionError("the run was built before its folder was checked")

    monkeypatch.setattr(loop_module, "make_optimizer", built)
    monkeypatch.setattr(loop_module, "_compiled_run", built)


def can_write(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def test_a_run_folder_that_is_a_file_is_refused(tmp_path, nothing_built):
    path = tmp_path / "run"
    path.write_text("not a folder")
    with pytest.raises(ValueError) as info:
        gz.train(gz.TrainConfig(**TINY), path, progress=False)
    assert str(info.value) == f"run folder {str(path)!r} is an existing file, not a folder"
    with pytest.raises(ValueError) as info:
        gz.train(gz.TrainConfig(**TINY), path / "run", progress=False)
    assert str(info.value) == (f"run folder {str(path / 'run')!r} cannot be made: "
                               f"{str(path)!r} is a file")


def test_a_read_only_run_folder_or_parent_is_refused(tmp_path, nothing_built):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if can_write(folder):
            pytest.skip("the permission bits do not stop this user (root) from writing")
        with pytest.raises(ValueError) as info:
            gz.train(gz.TrainConfig(**TINY), folder, progress=False)
        assert str(info.value) == f"run folder {str(folder)!r} cannot be written: Permission denied"
        with pytest.raises(ValueError) as info:
            gz.train(gz.TrainConfig(**TINY), folder / "a" / "run", progress=False)
        assert str(info.value) == (f"run folder {str(folder / 'a' / 'run')!r} cannot be written "
                                   f"(its parent {str(folder)!r} is not writable): "
                                   "Permission denied")
    finally:
        folder.chmod(0o755)


def test_a_read_only_file_system_is_found_by_trying(tmp_path, monkeypatch, nothing_built):
    # a read-only mount has writable permission bits: only a write attempt tells
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(loop_module.tempfile, "mkstemp", read_only)
    with pytest.raises(ValueError) as info:
        gz.train(gz.TrainConfig(**TINY), tmp_path, progress=False)
    assert str(info.value) == (f"run folder {str(tmp_path)!r} cannot be written: "
                               "Read-only file system")


# -- resuming with another model: a mismatch, never "damaged" ----------------------------------


def test_a_checkpoint_of_another_width_is_a_mismatch_not_damage(tmp_path, capsys):
    ckpt = Checkpoints(tmp_path / "c")
    state = {"params": {"cell": {"W": jnp.zeros((2, 4, 12)), "b": jnp.zeros((2, 12))}},
             "step": jnp.int32(3)}
    ckpt.save(3, state)
    ckpt.save(6, state)
    wider = {"params": {"cell": {"W": jnp.zeros((2, 4, 24)), "b": jnp.zeros((2, 24))}},
             "step": jnp.int32(0)}
    where = f"checkpoint step 6 in {str(tmp_path / 'c')!r} holds another state"
    advice = "resume with the model and config that wrote it, or train in a new run folder"
    with pytest.raises(CheckpointMismatch) as info:
        ckpt.restore_latest(like=wider)
    assert str(info.value) == (f"{where}: params/cell/W is float32[2,4,12] in the checkpoint, "
                               f"float32[2,4,24] in this run; {advice}")
    assert isinstance(info.value, CheckpointError)
    halves = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), state)
    with pytest.raises(CheckpointMismatch, match=r"params/cell/W is float32\[2,4,12\] in the "
                       r"checkpoint, bfloat16\[2,4,12\] in this run"):
        ckpt.restore_latest(like=halves)
    more = {**state, "extra": jnp.zeros(3)}
    with pytest.raises(CheckpointMismatch,
                       match=r"extra \(float32\[3\]\) is not in the checkpoint"):
        ckpt.restore_latest(like=more)
    fewer = {"params": state["params"]}
    with pytest.raises(CheckpointMismatch,
                       match="the checkpoint holds step, which the state to resume has not"):
        ckpt.restore_latest(like=fewer)
    assert "damaged" not in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["3", "6"]  # nothing moved
    assert ckpt.restore_latest(like=state)[0] == 6
    ckpt.close()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_truly_damaged_checkpoints_are_still_skipped_and_moved_aside(tmp_path, capsys, damage):
    ckpt = Checkpoints(tmp_path / "c")
    state = {"w": jnp.arange(3000.0)}
    ckpt.save(1, state)
    ckpt.save(2, jax.tree_util.tree_map(lambda x: x + 1, state))
    for f in (tmp_path / "c" / "2").rglob("*"):
        if f.is_file() and (damage == "deleted" or "/d/" in str(f)):  # deleted, or data cut
            if damage == "deleted":
                f.unlink()
            else:
                f.write_bytes(f.read_bytes()[:10])
    step, back = ckpt.restore_latest(like=state)
    assert step == 1
    np.testing.assert_array_equal(np.asarray(back["w"]), np.arange(3000.0))
    assert "skipping damaged checkpoint: checkpoint step 2" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["1", "damaged-2"]
    ckpt.close()


class Net(nnx.Module):
    """A user's model of a given width: one vector-gated layer and a head on the last step."""

    def __init__(self, hidden: int, rngs: nnx.Rngs):
        self.rnn = gz.Recurrent(gz.VectorGate(4, hidden, rngs=rngs))  # adding: 4 inputs
        self.head = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, xs):
        return self.head(self.rnn(xs)[:, -1])


@pytest.mark.slow
def test_resuming_with_a_model_of_another_width_names_the_parameter(tmp_path, capfd):
    config = gz.TrainConfig(**{**TINY, "steps": 2, "checkpoint_every": 2})
    run_dir = tmp_path / "run"
    gz.train(config, run_dir, progress=False, model=lambda rngs: Net(4, rngs))
    with pytest.raises(CheckpointMismatch) as info:
        gz.train(config, run_dir, resume=True, progress=False, model=lambda rngs: Net(6, rngs))
    assert str(info.value) == (
        f"checkpoint step 2 in {str(run_dir / 'checkpoints')!r} holds another state: "
        "params/head/kernel is float32[1,4,1] in the checkpoint, float32[1,6,1] in this run; "
        "resume with the model and config that wrote it, or train in a new run folder")
    assert "damaged" not in capfd.readouterr().err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2"]


# -- what config.json records is what ran ------------------------------------------------------


def test_a_task_of_another_length_than_the_config_is_refused(nothing_built):
    task = gz.make_task("adding", 8)
    with pytest.raises(ValueError) as info:
        gz.train(gz.TrainConfig(**{**TINY, "seq_len": 20}), task=task, progress=False)
    assert str(info.value) == (
        "config.seq_len is 20 but the task given ('adding') has seq_len 8; set seq_len=8 or "
        "None in the config, or build the task with seq_len=20")
    copy = gz.make_task("copy", 5)  # copy's seq_len is its delay: 25 steps
    with pytest.raises(ValueError, match=r"has seq_len 5 \(copy's delay T; it runs T \+ 20"):
        gz.train(gz.TrainConfig(**{**TINY, "task": "copy", "seq_len": 25}), task=copy,
                 progress=False)


class Stop(Exception):
    """Raised where the run would be built and compiled."""


def test_the_config_that_runs_takes_the_tasks_length(monkeypatch):
    seen = []

    def compiled_run(config, *args, **kwargs):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(loop_module, "_compiled_run", compiled_run)
    for name, length in (("adding", 8), ("copy", 5)):
        with pytest.raises(Stop):
            gz.train(gz.TrainConfig(**{**TINY, "task": name, "seq_len": None}),
                     task=gz.make_task(name, length), progress=False)
        with pytest.raises(Stop):  # the matching length is taken as it is
            gz.train(gz.TrainConfig(**{**TINY, "task": name, "seq_len": length}),
                     task=gz.make_task(name, length), progress=False)
    assert [c.seq_len for c in seen] == [8, 8, 5, 5]


@pytest.mark.slow
def test_config_json_records_the_length_of_the_task_given(tmp_path):
    run_dir = tmp_path / "run"
    result = gz.train(gz.TrainConfig(**{**TINY, "seq_len": None}), run_dir, progress=False,
                      task=gz.make_task("adding", 8))
    assert result.config.seq_len == 8
    assert json.loads((run_dir / "config.json").read_text())["seq_len"] == 8
    assert gz.TrainConfig.from_json(run_dir / "config.json") == result.config
    # the recorded config resumes the folder with the same task object
    again = gz.train(gz.TrainConfig(**{**TINY, "seq_len": None}), run_dir, resume=True,
                     progress=False, task=gz.make_task("adding", 8))
    assert_params_equal(again.params, result.params)
