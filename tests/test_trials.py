"""Learning-rate trials as slots beside the seeds: equal to single runs, one trace per run."""

import functools
import math

import chex
import jax
import numpy as np
import pytest

import gatezoo.training.loop as loop
from gatezoo.training import TrainConfig, make_optimizer, train
from gatezoo.training.trials import log_grid, set_slot_learning_rates


def small(**changes):
    base = dict(cell="gru", task="adding", seq_len=8, hidden=6, batch_size=8, steps=9,
                seeds=(0, 1), learning_rate=1e-2, optimizer="adam", steps_per_call=4,
                eval_every=5, eval_batches=1, devices=1)
    base.update(changes)
    return TrainConfig(**base)


def test_log_grid_is_log_uniform_with_both_ends():
    g = log_grid(1e-3, 1e-1, 5)
    assert g[0] == pytest.approx(1e-3) and g[-1] == pytest.approx(1e-1)
    steps = np.diff(np.log(g))
    assert np.allclose(steps, steps[0])
    assert log_grid(1e-2, 1.0, 1) == (pytest.approx(0.1),)
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        log_grid(1.0, 0.1, 3)
    with pytest.raises(ValueError, match="trials"):
        log_grid(0.1, 1.0, 0)


@pytest.mark.slow
def test_trial_k_equals_the_single_run_at_that_rate(monkeypatch):
    chex.clear_trace_counter()
    # every step function of the sweep may be traced once: the trials add no compile
    monkeypatch.setattr(loop, "make_step_fns", functools.partial(
        loop.make_step_fns, wrap=functools.partial(chex.assert_max_traces, n=1)))
    rates = (3e-3, 3e-2, 0.3)
    sweep = train(small(lr_trials=rates), progress=False)
    assert sweep.step_fns.chunk._cache_size() == 1
    assert np.asarray(sweep.final_loss).shape == (6,)
    lr_lines = {(ln["trial"], ln["seed"]): ln["lr"] for ln in sweep.history
                if ln["split"] == "train" and ln["step"] == 0}
    assert set(lr_lines) == {(k, s) for k in range(3) for s in (0, 1)}
    for (k, _), lr in lr_lines.items():
        assert lr == pytest.approx(rates[k], rel=1e-6)
    monkeypatch.undo()
    for k in (0, 2):
        single = train(small(learning_rate=rates[k]), progress=False)
        got = jax.tree_util.tree_map(lambda a, k=k: a[2 * k: 2 * k + 2], sweep.params)
        chex.assert_trees_all_close(got, single.params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sweep.final_eval["loss"][2 * k: 2 * k + 2],
                                   single.final_eval["loss"], rtol=1e-5)
    assert list(sweep.diverged) == [-1] * 6


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_and_the_others_continue():
    run = train(small(optimizer="sgd", lr_trials=(1e-2, 1e6), steps=6), progress=False)
    div = np.asarray(run.diverged)
    assert (div[:2] == -1).all() and (div[2:] >= 0).all()
    # the diverged slots keep their last finite parameters; the good trial trains on
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(
        run.params))
    assert np.isfinite(run.final_eval["loss"][:2]).all()


def test_trials_refuse_schedules_and_mismatched_slots():
    with pytest.raises(ValueError, match="constant schedule"):
        small(lr_trials=(0.1, 0.2), schedule="cosine")
    with pytest.raises(ValueError, match="> 0"):
        small(lr_trials=(0.1, -1.0))
    opt = make_optimizer("sgd", 0.1, schedule="cosine", steps=10)
    state = jax.vmap(opt.init)({"w": np.ones((2, 3), np.float32)})
    with pytest.raises(ValueError, match="constant rate"):
        set_slot_learning_rates(state, [0.1, 0.2])
    state = jax.vmap(make_optimizer("sgd", 0.1).init)({"w": np.ones((2, 3), np.float32)})
    with pytest.raises(ValueError, match="3 learning rates given for 2 slots"):
        set_slot_learning_rates(state, [0.1, 0.2, 0.3])
    assert math.isclose(float(set_slot_learning_rates(state, [0.1, 0.5]).hyperparams[
        "learning_rate"][1]), 0.5, rel_tol=1e-6)


def test_selection_rule_skips_diverged_trials_and_prefers_the_smaller_rate():
    from gatezoo.experiments.compare import select_trial

    # 3 trials x 2 seeds, trial-major
    assert select_trial([0.5, 0.7, 0.2, 0.2, 0.1, 0.1], [-1] * 6, 3) == 2
    assert select_trial([0.5, 0.7, 0.2, 0.2, 0.1, 0.1], [-1, -1, -1, -1, 5, -1], 3) == 1
    assert select_trial([0.3, 0.3, 0.3, 0.3], [-1] * 4, 2) == 0  # a tie: the smaller rate
    assert select_trial([0.3, np.nan, 0.1, 0.1], [-1] * 4, 2) == 1
    assert select_trial([0.3, 0.3], [1, -1], 1) is None
