"""Synthetic tasks: shapes, jit, keys, target definitions (numpy re-computation) and baselines."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gatezoo.tasks import TASKS, make_task, task_names
from gatezoo.tasks.dynamics import AR2_NOISE_STD, ar2_series, ar2_variance
from gatezoo.tasks.signals import sinmix_variance

SYNTHETIC = {  # name -> small seq_len used in the fast tests
    "adding": 20, "recall": 18, "sinmix": 16, "short": 12, "ar2": 16, "movingavg": 12,
    "delaysum": 40, "narma10": 24, "narma20": 30, "copy": 5, "selective-copy": 32, "mqar": 24,
}


LARGE = 8192  # one large test-split batch per task serves the target and baseline checks


@pytest.fixture(scope="module")
def small():
    return {name: make_task(name, T) for name, T in SYNTHETIC.items()}


@pytest.fixture(scope="module")
def large(small):
    cache = {}

    def get(name):
        if name not in cache:
            draw = jax.jit(small[name].sample, static_argnums=(1, 2))
            x, y = draw(jax.random.key(11), LARGE, "test")
            cache[name] = (np.asarray(x, np.float64), np.asarray(y))
        return cache[name]

    return get


def test_registry_lists_every_task_with_a_description():
    # multilag's default lags need T > 768: its own tests are in tests/test_multilag.py
    assert set(task_names()) == (set(SYNTHETIC) | {"smnist", "psmnist", "digits", "digits-points"}
                                 | {"multilag"})
    for name, entry in TASKS.items():
        assert entry.name == name and entry.description and "\n" not in entry.description


def test_unknown_names_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'.*adding"):
        make_task("nope")
    with pytest.raises(ValueError, match="takes no option window.*channels"):
        make_task("adding", window=3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, seq_len, options, match",
    [
        ("delaysum", 36, {}, "seq_len must be >= 37"),
        ("adding", -5, {}, "seq_len must be >= 2"),
        ("adding", 20, {"channels": 1}, "channels must be >= 2"),
        ("recall", 14, {}, "seq_len must be >= 15"),
        ("short", 5, {}, "seq_len must be >= 6"),
        ("short", 10, {"window": 0}, "window must be >= 1"),
        ("movingavg", 20, {"channels": 0}, "channels must be >= 1"),
        ("sinmix", 20, {"channels": 2}, "channels must be >= 3"),
        ("narma10", 10, {}, "seq_len must be >= 11"),
        ("narma20", 120, {}, "diverges"),
        ("copy", 0, {}, "the delay T"),
        ("adding", 2.5, {}, "must be an integer"),
        ("ar2", 20, {"channels": "six"}, "must be an integer"),
    ],
)
def test_bad_options_raise_one_line_value_errors(name, seq_len, options, match):
    with pytest.raises(ValueError, match=match) as err:
        make_task(name, seq_len, **options)
    assert "\n" not in str(err.value)


def test_defaults_follow_the_paper():
    expect = {  # name -> (T, input_dim) as constructed with no arguments
        "adding": (80, 4), "recall": (80, 4), "sinmix": (80, 4), "short": (80, 4),
        "ar2": (120, 6), "movingavg": (120, 6), "delaysum": (120, 6), "copy": (30, 10),
    }
    for name, (T, d) in expect.items():
        task = make_task(name)
        assert (task.seq_len, task.input_dim) == (T, d), name
    assert make_task("adding", 120, channels=6).input_dim == 6  # S2's adding


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_shapes_jit_keys_and_splits(name, small):
    task = small[name]
    chex.clear_trace_counter()  # the counter is keyed by source, shared across parameters
    sample = jax.jit(chex.assert_max_traces(task.sample, n=1), static_argnums=(1, 2))
    x, y = sample(jax.random.key(0), 5, "train")
    assert x.shape == (5, task.seq_len, task.input_dim) and x.dtype == jnp.float32
    if task.loss_kind == "mse":
        want = (5, task.output_dim) if task.readout == "last" else (5, task.seq_len, 1)
        assert y.shape == want and y.dtype == jnp.float32
    else:
        assert y.shape == ((5, task.seq_len) if task.readout == "all" else (5,))
        assert y.dtype == jnp.int32
    x2, y2 = sample(jax.random.key(0), 5, "train")  # same key, no retrace, same batch
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = sample(jax.random.key(1), 5, "train")
    assert not np.array_equal(x, x3)
    with pytest.raises(ValueError, match="split must be one of"):
        task.sample(jax.random.key(0), 5, "valid")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        task.sample(jax.random.key(0), 0)
    hash(task)  # usable as a static argument


@pytest.mark.slow
def test_splits_draw_from_different_streams(small):
    for name in ("adding", "copy"):
        task = small[name]
        draw = jax.jit(task.sample, static_argnums=(1, 2))
        x, _ = draw(jax.random.key(0), 4, "train")
        xt, _ = draw(jax.random.key(0), 4, "test")
        assert not np.array_equal(x, xt), name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["narma10", "copy"])
def test_sample_vmaps_over_keys_like_a_loop(name, small):
    # Seeds run side by side under vmap; narma's redraw loop must batch (lax.while_loop).
    task = small[name]
    keys = jax.random.split(jax.random.key(4), 3)
    xs, ys = jax.jit(jax.vmap(lambda k: task.sample(k, 4)))(keys)
    draw = jax.jit(task.sample, static_argnums=1)
    for i in range(3):
        x, y = draw(keys[i], 4)
        np.testing.assert_allclose(xs[i], x, rtol=1e-6)
        np.testing.assert_allclose(ys[i], y, rtol=1e-5)


@pytest.mark.slow
def test_adding_targets_and_markers(small, large):
    task = small["adding"]
    x, y = large("adding")
    T = task.seq_len
    marker = x[..., -1]
    assert set(np.unique(marker)) == {0.0, 1.0}
    assert np.all(marker[:, : T // 2].sum(1) == 1) and np.all(marker[:, T // 2:].sum(1) == 1)
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * marker).sum(1), rtol=1e-6)
    assert np.all((x[..., :-1] >= 0) & (x[..., :-1] < 1))
    # Both marker positions cover their halves (uniform draws reach every step).
    assert np.all(marker.sum(0) > 0)


@pytest.mark.slow
def test_recall_targets_are_five_distinct_markers_in_the_window(small, large):
    task = small["recall"]
    x, y = large("recall")
    window = max(3, task.seq_len // 3)
    marker = x[..., -1]
    assert set(np.unique(marker)) == {0.0, 1.0}
    assert np.all(marker.sum(1) == 5) and not marker[:, window:].any()
    assert np.all(marker[:, :window].sum(0) > 0)
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * marker).sum(1), rtol=1e-6)


@pytest.mark.slow
def test_short_movingavg_delaysum_targets(small, large):
    x, y = large("short")
    np.testing.assert_allclose(y[:, 0], x[:, -6:, 0].sum(axis=1), rtol=1e-6)
    assert not x[..., -1].any()  # no markers
    x, y = large("movingavg")
    np.testing.assert_allclose(y[:, 0], x[:, -8:, 0].mean(axis=1), rtol=1e-6)
    assert not x[..., 1:].any()
    task = small["delaysum"]
    x, y = large("delaysum")
    T = task.seq_len
    want = sum(0.25 * x[:, T - 1 - d, 0] for d in (4, 12, 24, 36))
    np.testing.assert_allclose(y[:, 0], want, rtol=1e-6)
    assert not x[..., 1:].any()


def test_sinmix_targets_and_channels(small, large):
    task = small["sinmix"]
    x, y = large("sinmix")
    T, n = task.seq_len, task.seq_len // 4
    s1, s2 = x[:, :, 0], x[:, :, 1]
    want = (s1[:, -n:].mean(1) - s1[:, :n].mean(1)) + (s2[:, :n].mean(1) - s2[:, -n:].mean(1))
    np.testing.assert_allclose(y[:, 0], want, rtol=1e-5, atol=1e-6)
    assert not x[..., -1].any()
    assert np.std(x[..., 2]) == pytest.approx(0.1, rel=0.1)
    # Each sinusoid is sin(2 pi f t + p) with f in [1, 7]: recover f from sin(0+p) and the
    # second difference, which for a sampled sinusoid equals -4 sin^2(w/2) times the value.
    t = np.linspace(0.0, 1.0, T)
    lag = t[1] - t[0]
    a, b, c = s1[:, 3], s1[:, 4], s1[:, 5]
    ok = np.abs(b) > 0.3
    ratio = (a[ok] + c[ok]) / (2 * b[ok])
    f = np.arccos(np.clip(ratio, -1, 1)) / (2 * np.pi * lag)
    assert f.min() > 1 - 1e-2 and f.max() < 7 + 1e-2


def _narma_numpy(u: np.ndarray, a, b, c, d, order) -> np.ndarray:
    """Brute-force loop over time: y[t + 1] from y[t], the last `order` outputs and u."""
    B, T = u.shape
    y = np.zeros((B, T + 1))
    for t in range(T):
        window = y[:, max(0, t - order + 1): t + 1].sum(axis=1)
        u_lag = u[:, t - order + 1] if t - order + 1 >= 0 else 0.0
        y[:, t + 1] = a * y[:, t] + b * y[:, t] * window + c * u_lag * u[:, t] + d
    return y[:, -1]


@pytest.mark.parametrize(
    "name, order, coeffs", [("narma10", 10, (0.3, 0.05, 1.5, 0.1)),
                            ("narma20", 20, (0.1, 0.04, 1.5, 0.2))],
)
def test_narma_targets_match_a_numpy_loop(name, order, coeffs, large):
    x, y = large(name)
    u = x[:, :, 0]
    assert u.min() >= 0 and u.max() < 0.5 and not x[..., 1:].any()
    np.testing.assert_allclose(y[:, 0], _narma_numpy(u, *coeffs, order), rtol=1e-4)


def test_ar2_recursion_matches_a_numpy_loop():
    eps = np.asarray(jax.random.normal(jax.random.key(3), (4, 30)), np.float64) * 0.05
    x = np.zeros((4, 32))
    for t in range(30):
        x[:, t + 2] = 1.6 * x[:, t + 1] - 0.7 * x[:, t] + eps[:, t]
    np.testing.assert_allclose(np.asarray(ar2_series(jnp.asarray(eps))), x[:, 2:], rtol=1e-5,
                               atol=1e-7)


def test_ar2_variance_matches_a_monte_carlo_numpy_simulation():
    rng = np.random.default_rng(0)
    eps = rng.normal(0, AR2_NOISE_STD, (40000, 60))
    x1 = x2 = np.zeros(40000)
    for t in range(60):
        x1, x2 = 1.6 * x1 - 0.7 * x2 + eps[:, t], x1
    assert ar2_variance(60) == pytest.approx(np.var(x1), rel=0.03)


def test_sinmix_variance_matches_a_monte_carlo_numpy_simulation():
    rng = np.random.default_rng(1)
    T, n, N = 40, 10, 40000
    t = np.linspace(0, 1, T)
    f = rng.uniform(1, 7, (N, 2))
    p = rng.uniform(0, 2 * np.pi, (N, 2))
    s = np.sin(2 * np.pi * f[:, None, :] * t[None, :, None] + p[:, None, :])
    d = s[:, -n:].mean(1) - s[:, :n].mean(1)
    y = d[:, 0] - d[:, 1]
    assert sinmix_variance(T) == pytest.approx(np.var(y), rel=0.03)


def test_adding_mean_predictor_scores_the_baseline(large):
    task = make_task("adding", 20)
    _, y = large("adding")
    loss = task.loss(jnp.full(y.shape, 1.0), jnp.asarray(y))  # predict the mean 1
    assert task.baseline == pytest.approx(1 / 6)
    assert float(loss) == pytest.approx(0.1667, abs=0.005)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["recall", "sinmix", "short", "ar2", "movingavg", "delaysum",
                                  "narma10", "narma20"])
def test_baselines_match_the_target_variance(name, small, large):
    task = small[name]
    _, y = large(name)
    assert np.all(np.isfinite(y))
    assert task.baseline == pytest.approx(np.var(y), rel=0.08), task.baseline_note
    assert task.baseline_note.split(":")[0] in ("analytic", "analytic (quadrature over f)",
                                                "estimated")


@pytest.mark.slow
def test_copy_structure_baseline_and_memoryless_predictor(small, large):
    task = small["copy"]
    T = task.option("delay")
    assert task.seq_len == T + 20 and task.readout == "all" and task.loss_kind == "xent"
    x, y = large("copy")
    x, y = x[:512], y[:512]
    tokens = np.argmax(x, axis=-1)
    assert np.all(x.sum(-1) == 1)  # one-hot
    symbols = tokens[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    assert np.all(tokens[:, 10:T + 9] == 0) and np.all(tokens[:, T + 9] == 9)
    assert np.all(tokens[:, T + 10:] == 0)
    y = np.asarray(y)
    assert np.all(y[:, :T + 10] == 0) and np.array_equal(y[:, T + 10:], symbols)
    assert task.baseline == pytest.approx(10 * math.log(8) / (T + 20))
    # The memoryless strategy: certain blank for T + 10 steps, then uniform over 1..8.
    logits = np.full((512, T + 20, 9), -1e4, np.float32)
    logits[:, :T + 10, 0] = 0.0
    logits[:, T + 10:, 1:] = 0.0
    assert float(task.loss(jnp.asarray(logits), jnp.asarray(y))) == pytest.approx(
        task.baseline, rel=1e-5)
    # A perfect copier: zero loss, full accuracy on the recalled steps.
    perfect = 50.0 * jax.nn.one_hot(y, 9)
    metrics = task.metrics(perfect, jnp.asarray(y))
    assert float(metrics["copy_accuracy"]) == 1.0 and float(metrics["accuracy"]) == 1.0
    assert float(metrics["baseline_ratio"]) < 1e-6


def test_loss_rejects_mismatched_shapes(small):
    task = small["adding"]
    with pytest.raises(ValueError, match=r"expects pred \(4, 1\)"):
        task.loss(jnp.zeros((4, 20, 1)), jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="integer labels"):
        small["copy"].loss(jnp.zeros((2, 25, 9)), jnp.zeros((2, 25)))
