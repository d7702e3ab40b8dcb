"""bfloat16 end to end: ``dtype="bfloat16"`` trains with the defaults, stays within a stated
tolerance of the same run in float32, keeps the optimizer's statistics and hyperparameters in
float32, measures in float32, and resumes bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gatezoo as gz
from gatezoo.metric_schema import metric_name
from gatezoo.training import sinks as sinks_module

# the float32 and bfloat16 runs' final eval losses agree to this relative tolerance (measured:
# within 4 % on every combination below)
EVAL_RTOL = 0.10

BASE = dict(cell="gru", hidden=8, task="adding", seq_len=10, steps=120, batch_size=32,
            eval_every=1000, checkpoint_every=1000, seeds=(0, 1))


def leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def run(dtype: str, **overrides) -> gz.RunResult:
    return gz.train(gz.TrainConfig(**{**BASE, "dtype": dtype, **overrides}), progress=False)


def eval_loss(result) -> np.ndarray:
    return np.asarray(result.final_eval["loss"], dtype=np.float64)


def assert_close_to_float32(init: str, optimizer: str, learning_rate: float) -> None:
    kwargs = dict(init=init, optimizer=optimizer, learning_rate=learning_rate)
    f32, bf16 = run("float32", **kwargs), run("bfloat16", **kwargs)
    assert not np.any(np.asarray(bf16.diverged) >= 0)
    assert np.all(np.isfinite(eval_loss(bf16)))
    np.testing.assert_allclose(eval_loss(bf16), eval_loss(f32), rtol=EVAL_RTOL)
    # trained, not just finite: the loss fell below the first step's
    first = [ln["loss"] for ln in bf16.history if ln["split"] == "train" and ln["step"] == 0]
    assert len(first) == 2 and np.all(np.asarray(bf16.final_loss) < np.asarray(first))


def test_bfloat16_trains_with_the_defaults_and_keeps_float32_statistics():
    f32 = run("float32", steps=120)
    bf16 = run("bfloat16", steps=120)
    assert {x.dtype for x in leaves(bf16.params)} == {jnp.dtype(jnp.bfloat16)}
    floats = [x for x in leaves(bf16.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    # Adam's moments and the master copy: never bf16 (b2 = 0.999 would round to 1.0)
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    np.testing.assert_allclose(eval_loss(bf16), eval_loss(f32), rtol=EVAL_RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("init", ["flax", "torch"])
@pytest.mark.parametrize(("optimizer", "learning_rate"), [("adam", 1e-2), ("sgd", 0.1)])
def test_bfloat16_matches_float32_across_inits_and_optimizers(init, optimizer, learning_rate):
    assert_close_to_float32(init, optimizer, learning_rate)


def instrument_lines(result, step: int) -> dict:
    (line,) = [ln for ln in result.history
               if ln["split"] == "train" and ln["step"] == step and ln["seed"] == 0]
    return {k: v for k, v in line.items() if "/" in k and isinstance(v, float)}


@pytest.mark.slow
def test_the_economy_instruments_measure_bf16_runs_like_float32_ones():
    kwargs = dict(steps=5, instruments=("economy",), steps_per_call=5)
    f32, bf16 = run("float32", **kwargs), run("bfloat16", **kwargs)
    a, b = instrument_lines(f32, 0), instrument_lines(bf16, 0)
    assert len(a) > 20 and a.keys() == b.keys()
    assert all(np.isfinite(v) for v in b.values()), [k for k, v in b.items() if not np.isfinite(v)]
    # the gradient-transport metrics of the same (bf16-rounded) initial weights
    for key in (metric_name("transport", None, "frozen_s"),
                metric_name("optimizer", None, "grad_norm")):
        np.testing.assert_allclose(b[key], a[key], rtol=0.05)


def assert_bitwise(a, b) -> None:
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


@pytest.mark.slow
def test_an_interrupted_bf16_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    config = gz.TrainConfig(**{**BASE, "dtype": "bfloat16", "steps": 12, "steps_per_call": 2,
                               "checkpoint_every": 4, "eval_every": 6})
    uninterrupted = gz.train(config, tmp_path / "whole", progress=False)
    original = sinks_module.Progress.update

    def interrupt_at_6(self, step, *args, **kwargs):
        original(self, step, *args, **kwargs)
        if step == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(sinks_module.Progress, "update", interrupt_at_6)
    with pytest.raises(KeyboardInterrupt):
        gz.train(config, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    resumed = gz.train(config, tmp_path / "cut", resume=True, progress=False)
    assert min(ln["step"] for ln in resumed.history if ln["split"] == "train") == 6
    assert {x.dtype for x in leaves(resumed.params)} == {jnp.dtype(jnp.bfloat16)}
    assert_bitwise(resumed.params, uninterrupted.params)
    assert_bitwise(resumed.opt_state, uninterrupted.opt_state)
