"""The follow-up's multi-lag regression task against a brute-force loop over steps and lags."""

import jax
import numpy as np
import pytest

import gatezoo as gz
from gatezoo.tasks.multilag import PAPER_COEFFS, PAPER_LAGS, multilag_baseline


def brute_force_target(x, u, lags, coeffs):
    B, T, _ = x.shape
    y = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            for lag, c in zip(lags, coeffs, strict=True):
                if t >= lag:
                    y[b, t] += c * float(np.dot(u, x[b, t - lag]))
    return y


def direction(task):
    """Recovers u from a noiseless one-lag copy of the task: y_t = u.x_{t-1}."""
    probe = gz.make_task("multilag", task.seq_len, dim=task.input_dim, lags="1", coeffs="1",
                         noise=0.0, direction_seed=task.option("direction_seed"))
    x, y = probe.sample(jax.random.key(7), 64)
    x, y = np.asarray(x[:, :-1]).reshape(-1, task.input_dim), np.asarray(y[:, 1:, 0]).ravel()
    return np.linalg.lstsq(x, y, rcond=None)[0]


def test_the_target_is_the_lagged_projection_step_by_step():
    task = gz.make_task("multilag", 14, dim=3, lags="2,5,9", coeffs="0.6,0.3,0.2", noise=0.0)
    u = direction(task)
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-5)
    x, y = task.sample(jax.random.key(0), 3)
    assert y.shape == (3, 14, 1) and task.readout == "all" and task.loss_kind == "mse"
    np.testing.assert_allclose(np.asarray(y[..., 0]),
                               brute_force_target(np.asarray(x), u, (2, 5, 9), (.6, .3, .2)),
                               atol=1e-5)


def test_the_direction_is_shared_by_the_splits_and_set_by_its_seed():
    task = gz.make_task("multilag", 10, dim=4, lags="1,3", coeffs="1,0.5", noise=0.0)
    other = gz.make_task("multilag", 10, dim=4, lags="1,3", coeffs="1,0.5", noise=0.0,
                         direction_seed=1)
    u, u_other = direction(task), direction(other)
    x, y = task.sample(jax.random.key(3), 2, split="test")
    np.testing.assert_allclose(np.asarray(y[..., 0]),
                               brute_force_target(np.asarray(x), u, (1, 3), (1, .5)), atol=1e-5)
    assert abs(float(np.dot(u, u_other))) < 0.99


def test_the_baseline_is_the_mse_of_predicting_zero():
    task = gz.make_task("multilag", 40, dim=4, lags="3,10,30", coeffs="0.6,0.4,0.2", noise=0.4)
    _, y = task.sample(jax.random.key(1), 4000)
    empirical = float(np.mean(np.asarray(y) ** 2))
    assert task.baseline == pytest.approx(empirical, rel=0.02)
    assert task.baseline == pytest.approx(
        multilag_baseline(40, (3, 10, 30), (0.6, 0.4, 0.2), 0.4))


def test_the_defaults_are_the_follow_ups_paper_setting():
    task = gz.make_task("multilag")
    assert (task.seq_len, task.input_dim) == (1536, 16)
    assert task.option("lags") == ",".join(map(str, PAPER_LAGS)) == "64,128,256,384,512,768"
    assert task.option("coeffs") == ",".join(map(str, PAPER_COEFFS))
    assert task.option("noise") == 0.4


@pytest.mark.parametrize(("options", "message"), [
    (dict(lags="2,5", coeffs="0.6"), "2 lags but 1 coeffs"),
    (dict(lags="0"), "each lag must be >= 1"),
    (dict(lags="a,b"), "lags must be a list of ints"),
    (dict(seq_len=5, lags="5", coeffs="1"), "seq_len must be >= 6 .the longest lag is 5"),
    (dict(noise=-1.0), "noise must be a finite number >= 0"),
    (dict(dim=0), "dim must be >= 1"),
])
def test_bad_options_are_one_line_naming_the_option(options, message):
    seq_len = options.pop("seq_len", 12)
    with pytest.raises(ValueError, match=message):
        gz.make_task("multilag", seq_len, **{"lags": "2", "coeffs": "1", **options})


def test_a_model_learns_the_short_lags_in_a_few_steps():
    result = gz.train(gz.TrainConfig(cell="gru", hidden=16, task="multilag", seq_len=12,
                                     task_options={"dim": 4, "lags": "1,2", "coeffs": "0.6,0.5",
                                                   "noise": 0.1},
                                     steps=150, batch_size=32, learning_rate=1e-2,
                                     eval_every=150, seeds=(0,)), progress=False)
    baseline = gz.make_task("multilag", 12, dim=4, lags="1,2", coeffs="0.6,0.5",
                            noise=0.1).baseline
    assert float(result.final_eval["loss"][0]) < 0.5 * baseline
