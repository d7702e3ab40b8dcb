"""Checkpoints: exact resume (bit for bit on CPU), a process killed during a save, interrupts."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gatezoo.instruments.protocol import Instrument
from gatezoo.training import CheckpointError, Checkpoints, TrainConfig, train
from gatezoo.training import sinks as sinks_module
from gatezoo.training.checkpoints import named_tree


def loss_sum(every: int = 3) -> Instrument:
    """A stateful instrument: the running sum of the training loss on tracked steps."""

    def update(ctx, total):
        total = total + ctx.loss
        return {"total": total}, total

    return Instrument("losssum", lambda p: jnp.zeros((), jnp.float32), update, every=every)


CONFIG = dict(cell="gru", task="adding", seq_len=10, hidden=8, batch_size=8, steps=12,
              seeds=(0, 1), learning_rate=1e-2, steps_per_call=5, eval_every=6,
              eval_batches=2, checkpoint_every=5, devices=1)


def assert_states_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bit for bit


def read_lines(run_dir):
    lines = [json.loads(t) for t in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("steps_per_sec", None)
    return sorted(lines, key=lambda ln: (ln["step"], ln["split"], ln["seed"]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    return train(TrainConfig(**CONFIG), run_dir, instruments=[loss_sum()], progress=False)


@pytest.mark.slow
def test_interrupted_then_resumed_run_is_bit_identical(tmp_path, monkeypatch, uninterrupted):
    run_dir = tmp_path / "run"
    original = sinks_module.Progress.update

    def interrupt_at_6(self, step, *args, **kwargs):
        original(self, step, *args, **kwargs)
        if step == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(sinks_module.Progress, "update", interrupt_at_6)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**CONFIG), run_dir, instruments=[loss_sum()], progress=False)
    monkeypatch.undo()
    # step 5 was a regular checkpoint; step 6 was saved on the interrupt
    assert Checkpoints(run_dir / "checkpoints").all_steps() == [5, 6]

    # resume with another round-trip length: grouping steps differently changes nothing
    resumed = train(TrainConfig(**{**CONFIG, "steps_per_call": 3}), run_dir, resume=True,
                    instruments=[loss_sum()], progress=False)
    assert int(resumed.state.step) == 12
    assert min(ln["step"] for ln in resumed.history if ln["split"] == "train") == 6
    assert_states_equal(resumed.state, uninterrupted.state)
    assert read_lines(run_dir) == read_lines(uninterrupted.run_dir)


KILLER = textwrap.dedent(
    """
    import os, re, signal, sys
    import orbax.checkpoint as ocp
    from gatezoo.training import TrainConfig, train

    original = ocp.StandardCheckpointHandler.finalize

    def finalize(self, directory):
        # CheckpointHandler.finalize runs once a step's files are written into its temporary
        # folder, before the manager renames it: die there while saving step 8
        if re.search(r"[/\\\\]8[.]", str(directory)):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, directory)

    ocp.StandardCheckpointHandler.finalize = finalize
    config = TrainConfig(**{config})
    train(config, sys.argv[1], progress=False)
    """
)


@pytest.mark.slow
def test_process_killed_during_save_restarts_from_previous_checkpoint(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    config = {**CONFIG, "checkpoint_every": 4}
    script = tmp_path / "killer.py"
    script.write_text(KILLER.replace("{config}", repr(config)))
    proc = subprocess.run([sys.executable, str(script), str(run_dir)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "4" in names and "8" not in names
    assert any(n.startswith("8.") and "tmp" in n for n in names), names  # the partial save
    assert Checkpoints(run_dir / "checkpoints").latest_step() == 4
    # restart: from step 4, never from the half-written 8, and the unfinished tmp is removed
    resumed = train(TrainConfig(**config), run_dir, resume=True, progress=False)
    assert min(ln["step"] for ln in resumed.history if ln["split"] == "train") == 4
    assert not any("tmp" in p.name for p in (run_dir / "checkpoints").iterdir())
    assert_states_equal(resumed.params, uninterrupted.params)
    assert_states_equal(resumed.opt_state, uninterrupted.opt_state)


@pytest.mark.slow
def test_resume_guards(uninterrupted):
    with pytest.raises(ValueError, match="already holds checkpoints; resume it"):
        train(TrainConfig(**CONFIG), uninterrupted.run_dir, progress=False)
    with pytest.raises(ValueError, match="with a different learning_rate"):
        train(TrainConfig(**{**CONFIG, "learning_rate": 0.5}), uninterrupted.run_dir,
              resume=True, progress=False)
    # nothing left to do: the restored final state comes back unchanged
    again = train(TrainConfig(**CONFIG), uninterrupted.run_dir, resume=True,
                  instruments=[loss_sum()], progress=False)
    assert_states_equal(again.state, uninterrupted.state)


def test_checkpoints_round_trip_any_state(tmp_path):
    ckpt = Checkpoints(tmp_path / "c", keep=2)
    state = {"a": (jnp.arange(3.0), jnp.int32(7)), "b": [jnp.ones((2, 2), jnp.bfloat16)]}
    for step in (1, 2, 3):
        assert ckpt.save(step, jax.tree_util.tree_map(lambda x: x * step, state))
    assert not ckpt.save(3, state)  # an existing step is never overwritten
    assert ckpt.all_steps() == [2, 3]
    back = ckpt.restore(3, like=state)
    assert_states_equal(back, jax.tree_util.tree_map(lambda x: x * 3, state))
    ckpt.close()


def test_checkpoint_reads_by_parameter_name_with_plain_orbax(uninterrupted):
    step = Checkpoints(uninterrupted.run_dir / "checkpoints").latest_step()
    raw = ocp.StandardCheckpointer().restore(
        uninterrupted.run_dir / "checkpoints" / str(step) / "default"
    )
    state = uninterrupted.state
    assert int(raw["step"]) == int(state.step) == 12
    for name in ("W", "U", "b_z"):
        np.testing.assert_array_equal(raw["params"]["cell"][name],
                                      np.asarray(state.params["cell"][name][...]))
    np.testing.assert_array_equal(raw["keys"], np.asarray(state.keys))
    assert set(raw["params"]) == {"cell", "W_o", "b_o"}


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys,
                                                                  uninterrupted):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted.run_dir, run_dir)
    assert Checkpoints(run_dir / "checkpoints").all_steps() == [5, 10, 12]
    for f in (run_dir / "checkpoints" / "12").rglob("*"):  # what a crash or full disk leaves
        if f.is_file():
            f.unlink()
    resumed = train(TrainConfig(**CONFIG), run_dir, resume=True, instruments=[loss_sum()],
                    progress=False)
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint: checkpoint step 12" in err
    assert "resuming from checkpoint step 10" in err
    assert min(ln["step"] for ln in resumed.history if ln["split"] == "train") == 10
    assert_states_equal(resumed.state, uninterrupted.state)
    assert read_lines(run_dir) == read_lines(uninterrupted.run_dir)
    # the damaged step is kept aside for inspection; step 12 was written afresh
    assert (run_dir / "checkpoints" / "damaged-12").is_dir()
    assert Checkpoints(run_dir / "checkpoints").all_steps() == [5, 10, 12]


def test_no_restorable_checkpoint_is_one_error_naming_each_step(tmp_path):
    state = {"w": jnp.arange(3.0)}
    ckpt = Checkpoints(tmp_path / "c")
    ckpt.save(1, state)
    shutil.rmtree(tmp_path / "c" / "1" / "default")
    with pytest.raises(CheckpointError, match=r"no checkpoint restores \(checkpoint step 1 "):
        ckpt.restore_latest(like=state)
    assert ckpt.all_steps() == [1]  # nothing moved when nothing restores
    assert Checkpoints(tmp_path / "empty").restore_latest(like=state) is None


def test_numbered_leaf_checkpoints_of_gatezoo_0_1_still_restore(tmp_path):
    state = {"a": (jnp.arange(3.0), jnp.int32(7)), "b": [jnp.ones((2, 2), jnp.bfloat16)]}
    leaves = jax.tree_util.tree_leaves(state)
    # written as gatezoo 0.1 did: the flat leaves under zero-padded indices, with plain orbax
    with ocp.CheckpointManager(tmp_path / "c") as manager:
        manager.save(4, args=ocp.args.StandardSave({f"{i:05d}": x for i, x in enumerate(leaves)}))
    ckpt = Checkpoints(tmp_path / "c")
    step, back = ckpt.restore_latest(like=state)
    assert step == 4
    assert_states_equal(back, state)
    with pytest.raises(CheckpointError, match="numbered leaves, the format of gatezoo 0.1"):
        ckpt.restore(4, like={"a": jnp.zeros(5)})


def test_a_bare_array_is_a_state(tmp_path):
    assert list(named_tree(jnp.ones(2))) == ["value"]
    ckpt = Checkpoints(tmp_path / "c")
    ckpt.save(1, jnp.arange(4.0))
    assert_states_equal(ckpt.restore(1, like=jnp.zeros(4)), jnp.arange(4.0))
