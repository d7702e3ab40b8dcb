"""The compiled train loop: learning on the adding task, the instrument hook, metric lines,
divergence, one trace per run."""

import dataclasses
import functools
import io
import json
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gatezoo.instruments.protocol import Instrument
from gatezoo.tasks import make_task
from gatezoo.training import Checkpoints, TrainConfig, TrainingDiverged, make_optimizer, train
from gatezoo.training.loop import attach_run, init_params
from gatezoo.training.sinks import Progress, TensorBoardSink
from gatezoo.training.step import data_keys, make_step_fns


def small(**changes):
    base = dict(cell="gru", task="adding", seq_len=10, hidden=8, batch_size=8, steps=12,
                seeds=(0, 1), learning_rate=1e-2, steps_per_call=5, eval_every=6,
                eval_batches=2, checkpoint_every=4, devices=1)
    base.update(changes)
    return TrainConfig(**base)


def adjoint_check(every: int = 2) -> Instrument:
    """Reports the adjoints dL/dh_T, dL/dh_{T-1} next to an independent computation.

    Reference: for the last-step MSE readout, dL/dh_T = grad of mean((h_T W_o + b_o - y)^2)
    with respect to h_T alone; one step back, dL/dh_{T-1} = J_T^T dL/dh_T with J_T from a
    jax.vjp of the cell step. The state counts the tracked calls (checkpointed with the run).
    """

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(ctx, count):
        h, adj = ctx.carries, ctx.adjoints  # (T, B, H) each for a GRU
        w_o, b_o = ctx.params["W_o"][...], ctx.params["b_o"][...]
        ref_last = jax.grad(lambda h_t: jnp.mean((h_t @ w_o + b_o - ctx.ys) ** 2))(h[-1])
        cell = ctx.fns.cell_params(ctx.params)
        _, vjp = jax.vjp(lambda c: ctx.fns.step(cell, c, ctx.xs[:, -1])[0], h[-2])
        ref_prev = vjp(ref_last)[0]
        metrics = {
            "err_last": jnp.max(jnp.abs(adj[-1] - ref_last)),
            "err_prev": jnp.max(jnp.abs(adj[-2] - ref_prev)),
            "norm_last": jnp.linalg.norm(ref_last),
            "count": (count + 1).astype(jnp.float32),
        }
        return metrics, count + 1

    return Instrument("adjcheck", init, update, every=every, needs_adjoints=True)


# -- learning really happens -------------------------------------------------------------------

LEARN = dict(task="adding", seq_len=50, hidden=32, batch_size=64, steps=500, seeds=(0, 1, 2),
             optimizer="adam", learning_rate=3e-2, steps_per_call=100, eval_every=500,
             eval_batches=4, devices=1)


@pytest.fixture(scope="module")
def learned():
    return {
        cell: train(TrainConfig(cell=cell, **LEARN), progress=False)
        for cell in ("gru", "lstm", "elman")
    }


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_cells_learn_the_adding_task(learned, cell):
    baseline = make_task("adding", seq_len=50).baseline
    assert baseline == pytest.approx(1 / 6, rel=1e-3)
    evals = learned[cell].final_eval["loss"]
    assert evals.shape == (3,)
    # every seed far below the 0.167 baseline (held-out batches)
    assert np.all(evals < 0.3 * baseline), evals


@pytest.mark.slow
def test_elman_stays_on_the_plateau(learned):
    baseline = make_task("adding", seq_len=50).baseline
    evals = learned["elman"].final_eval["loss"]
    assert np.all(evals > 0.75 * baseline), evals


# -- one shared small run: the instrument hook, metric lines, checkpoints, one trace ----------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    config = small(seeds=(3, 7))  # 12 steps, K = 5, eval every 6: round trips of 5, 1, 5, 1
    return train(config, run_dir, instruments=[adjoint_check(every=2)], progress=False)


@pytest.mark.slow
def test_instrument_gets_adjoints_of_the_same_backward_pass(tiny_run):
    train_lines = [ln for ln in tiny_run.history if ln["split"] == "train"]
    assert len(train_lines) == 12 * 2
    for line in train_lines:
        tracked = line["step"] % 2 == 0
        assert ("adjcheck/err_last" in line) == tracked  # NaN (untracked) values are omitted
        if tracked:
            assert line["adjcheck/norm_last"] > 1e-4
            assert line["adjcheck/err_last"] <= 1e-6 * max(1.0, line["adjcheck/norm_last"])
            assert line["adjcheck/err_prev"] <= 1e-6 * max(1.0, line["adjcheck/norm_last"])
            assert line["adjcheck/count"] == line["step"] // 2 + 1
    # the instrument state rides in the train state: 6 tracked steps (0, 2, ..., 10) per seed
    np.testing.assert_array_equal(np.asarray(tiny_run.state.instruments[0]), [6, 6])


def test_instrument_names_resolve_through_make_instruments_or_fail_clearly():
    try:
        from gatezoo.instruments import make_instruments  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="make_instruments is not available"):
            train(small(instruments=("gate_stats",)), progress=False)
    else:
        with pytest.raises(ValueError, match="no-such-instrument"):
            train(small(instruments=("no-such-instrument",)), progress=False)


@pytest.mark.slow
def test_metric_lines_cover_every_step_and_seed(tiny_run):
    run_dir = tiny_run.run_dir
    lines = [json.loads(t) for t in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == tiny_run.history
    train_keys = [(ln["step"], ln["seed"]) for ln in lines if ln["split"] == "train"]
    assert sorted(train_keys) == [(i, s) for i in range(12) for s in (3, 7)]
    eval_steps = sorted({ln["step"] for ln in lines if ln["split"] == "eval"})
    assert eval_steps == [0, 6, 12]
    first = next(ln for ln in lines if ln["split"] == "train")
    assert {"loss", "lr", "grad_norm", "steps_per_sec"} <= set(first)
    assert first["lr"] == pytest.approx(1e-2)
    assert {"loss", "baseline_ratio"} <= set(next(ln for ln in lines if ln["split"] == "eval"))
    np.testing.assert_allclose(
        tiny_run.final_loss, [ln["loss"] for ln in lines if ln["split"] == "train"][-2:],
        rtol=1e-6,
    )
    last_eval = [ln["loss"] for ln in lines if ln["split"] == "eval" and ln["step"] == 12]
    np.testing.assert_allclose(tiny_run.final_eval["loss"], last_eval, rtol=1e-6)
    # checkpoints every 4 steps and at the end, the last 3 kept
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [4, 8, 12]
    assert TrainConfig.from_json(run_dir / "config.json") == tiny_run.config
    summary = json.loads((run_dir / "summary.json").read_text())
    np.testing.assert_allclose(summary["final_train_loss"], tiny_run.final_loss, rtol=1e-6)
    if TensorBoardSink.available():
        assert any((run_dir / "events").iterdir())


def test_progress_line():
    stream = io.StringIO()
    bar = Progress(100, stream=stream)
    bar.eval_loss = 0.5
    bar.update(50, 0.25, 1234.0)
    bar.update(100, 0.125, 1000.0, final=True)
    text = stream.getvalue()
    assert "step 50/100  loss 0.25  eval 0.5  1,234 steps/s" in text
    assert text.rstrip().endswith("1,000 steps/s")
    quiet = io.StringIO()
    Progress(10, enabled=False, stream=quiet).update(1, 1.0, 1.0, final=True)
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_seeds_are_independent_runs(tiny_run):
    """Each seed of the vmapped run equals that seed run on its own (seed_batch=1 runs the
    seeds one at a time inside the compiled step): same init, same batches, same updates."""
    alone = train(small(seeds=(3, 7), seed_batch=1), instruments=[adjoint_check(every=2)],
                  progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(tiny_run.params),
                    jax.tree_util.tree_leaves(alone.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=1e-6)
    assert not np.allclose(tiny_run.final_loss[0], tiny_run.final_loss[1])


@pytest.mark.slow
def test_fixed_batch_reuses_the_step_zero_batch(tiny_run):
    fixed = train(small(seeds=(3, 7), steps=3, fixed_batch=True, optimizer="sgd",
                        learning_rate=1e-9), progress=False)

    def losses(result):
        return [ln["loss"] for ln in result.history if ln["split"] == "train" and
                ln["seed"] == 3]

    fl, rl = losses(fixed), losses(tiny_run)
    assert fl[0] == pytest.approx(rl[0], rel=1e-6)  # the same step-0 batch and init
    assert max(fl) - min(fl) < 1e-6 < max(rl[:3]) - min(rl[:3])


# -- divergence --------------------------------------------------------------------------------

@pytest.mark.slow
def test_divergence_stops_with_step_and_seed_and_keeps_last_good_checkpoint(tmp_path):
    config = small(cell="elman", optimizer="sgd", learning_rate=60.0, steps=40,
                   steps_per_call=2, checkpoint_every=2, eval_every=100, keep_checkpoints=50)
    with pytest.raises(TrainingDiverged) as info:
        train(config, tmp_path / "run", progress=False)
    message = str(info.value)
    assert "\n" not in message
    found = re.search(r"at step (\d+) for seed (\d+)", message)
    assert found, message
    bad_step = int(found.group(1))
    assert bad_step >= 2  # the config diverges after a few good steps
    ckpt = Checkpoints(tmp_path / "run" / "checkpoints")
    latest = ckpt.latest_step()
    assert latest == bad_step - bad_step % 2  # the state before the bad round trip
    assert f"last good checkpoint: step {latest}" in message
    lines = [json.loads(t) for t in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    bad = [ln for ln in lines if ln["split"] == "train" and ln["step"] == bad_step
           and ln["seed"] == int(found.group(2))]
    assert len(bad) == 1  # NaN values are omitted from lines, Inf ones are kept
    finite = [np.isfinite(bad[0].get(k, np.nan)) for k in ("loss", "grad_norm")]
    assert not all(finite)


# -- one trace per run -------------------------------------------------------------------------

@pytest.mark.slow
def test_one_trace_per_run(tiny_run):
    chex.clear_trace_counter()
    config = small(seeds=(0, 1, 2))
    task = make_task(config.task, config.seq_len)
    params = init_params(config, task)
    attached = attach_run(config, task, [adjoint_check(every=3)])
    step_fns = make_step_fns(
        attached, task, make_optimizer("adam", 1e-2), batch_size=8, steps_per_call=5,
        wrap=functools.partial(chex.assert_max_traces, n=1),
    )
    keys = jnp.stack([data_keys(s) for s in config.seeds])
    state = step_fns.init(params, keys)
    probe = step_fns.probe(keys, task.data)
    for n in (5, 3, 5, 1):  # shorter last round trips reuse the same program
        state, out = step_fns.chunk(state, probe, task.data, jnp.int32(n))
        step_fns.evaluate(state.params, keys, task.data)
        assert np.isnan(np.asarray(out["loss"])[n:]).all()
        assert np.isfinite(np.asarray(out["loss"])[:n]).all()
    assert int(state.step) == 14
    assert step_fns.chunk._cache_size() == 1
    # a whole run with round trips of 5, 1, 5, 1 steps, evaluations, checkpoints: one compile
    assert tiny_run.step_fns.chunk._cache_size() == 1
    assert tiny_run.step_fns.evaluate._cache_size() == 1


@pytest.mark.slow
def test_float64_runs_in_double_precision_inside_a_scope(tmp_path):
    before = jax.config.read("jax_enable_x64")
    config = small(steps=2, dtype="float64", checkpoint_every=2, eval_every=2)
    first = train(config, tmp_path / "run", progress=False)
    assert jax.config.read("jax_enable_x64") == before  # x64 only while the run lasted
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(first.params))
    # a float64 checkpoint restores in float64: the resumed run ends where a straight one does
    longer = dataclasses.replace(config, steps=4)
    resumed = train(longer, tmp_path / "run", resume=True, progress=False)
    straight = train(longer, progress=False)
    assert jax.config.read("jax_enable_x64") == before
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params),
                    jax.tree_util.tree_leaves(straight.params), strict=True):
        assert a.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a caller's own scope is left as it was too
    with jax.enable_x64(True):
        train(small(steps=1, eval_every=1), progress=False)
        assert jax.config.read("jax_enable_x64")


def test_bad_configs_are_one_line_value_errors():
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got -1"):
        small(steps=-1)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        train(small(task="nope"), progress=False)
    with pytest.raises(ValueError, match="unknown cell 'nope'"):
        train(small(cell="nope"), progress=False)
    with pytest.raises(ValueError, match="unknown optimizer 'nope'"):
        train(small(optimizer="nope"), progress=False)
    with pytest.raises(ValueError, match="seeds must be distinct"):
        small(seeds=(1, 1))
    with pytest.raises(ValueError, match="resume needs a run folder"):
        train(small(), resume=True, progress=False)
