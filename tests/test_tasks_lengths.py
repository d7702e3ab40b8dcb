"""Per-example sequence lengths: the Padded protocol, masked losses and metrics, the
variable-length adding task, and TFDS datasets with a variable-length sequence feature."""

import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import gatezoo.tasks
from gatezoo.tasks import TASKS, Padded, Task, make_task
from gatezoo.tasks.builders.sklearn_digits_points import digit_points
from gatezoo.tasks.datasets import digits_points, pad_sequences, sequence_classification
from gatezoo.tasks.synthetic import synthetic_task

T, MIN_LEN, LARGE = 20, 6, 8192

# Batches of key(7), size 3, split "train" as drawn before lengths existed (sum of x, sum of x
# times a fixed 0..6 weight pattern, sum of y): fixed-length tasks must keep drawing them. The
# tasks of every module this change touched; ar2 and narma (dynamics.py, untouched, slow to
# compile) draw through the same synthetic_task sampler.
FINGERPRINTS = {
    "adding": (20, 90.7944, 257.3131, 2.8806),
    "recall": (18, 89.0532, 259.026, 5.6631),
    "sinmix": (16, 1.6515, -8.5219, -1.1422),
    "short": (12, 58.3934, 165.6408, 9.6681),
    "movingavg": (12, 19.2501, 51.7192, 1.6135),
    "delaysum": (40, 65.1561, 185.3581, 2.0633),
    "copy": (5, 75.0, 219.0, 134.0),
    "selective-copy": (32, 96.0, 290.0, 365.0),
    "mqar": (24, 72.0, 237.0, 180.0),
}


@pytest.fixture(scope="module")
def padded_adding():
    return make_task("adding", T, min_len=MIN_LEN)


@pytest.fixture(scope="module")
def large(padded_adding):
    draw = jax.jit(padded_adding.sample, static_argnums=(1, 2))
    x, ys = draw(jax.random.key(3), LARGE, "test")
    return np.asarray(x, np.float64), np.asarray(ys.target, np.float64), np.asarray(ys.lengths)


def last_step_model(xs, seq_lengths=None):
    """Stand-in for a model with readout 'last': channel 0 at each sequence's last valid step."""
    index = xs.shape[1] - 1 if seq_lengths is None else seq_lengths - 1
    steps = jnp.broadcast_to(jnp.asarray(index), xs.shape[:1])
    return jnp.take_along_axis(xs[..., :1], steps[:, None, None], axis=1)[:, 0]


# -- the protocol ------------------------------------------------------------------------------


def test_padded_is_exported_and_fixed_tasks_stay_fixed():
    assert "Padded" in gatezoo.tasks.__all__ and Padded._fields == ("target", "lengths")
    assert not make_task("adding", T).variable_length
    assert make_task("adding", T) == make_task("adding", T, min_len=None)
    assert make_task("adding", T).options == (("channels", 4),)


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_fixed_length_tasks_draw_the_same_batches_as_before(name):
    seq_len, x_sum, xw_sum, y_sum = FINGERPRINTS[name]
    task = make_task(name, seq_len)
    x, y = jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(7), 3, "train")
    assert not isinstance(y, Padded) and not task.variable_length
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    weights = np.arange(x.size).reshape(x.shape) % 7
    got = (x.sum(), (x * weights).sum(), y.sum())
    np.testing.assert_allclose(got, (x_sum, xw_sum, y_sum), rtol=1e-5, atol=2e-4)


def test_predict_passes_lengths_only_for_padded_targets(padded_adding):
    calls = []

    def model(xs, **kwargs):
        calls.append(sorted(kwargs))
        return last_step_model(xs, **kwargs)

    x = jnp.asarray(np.random.default_rng(0).uniform(size=(5, T, 4)), jnp.float32)
    lengths = np.array([T, 3, 9, 1, 14], np.int32)
    pred = padded_adding.predict(model, x, Padded(jnp.zeros((5, 1)), jnp.asarray(lengths)))
    np.testing.assert_array_equal(pred, np.asarray(x)[np.arange(5), lengths - 1, :1])
    fixed = make_task("adding", T)
    np.testing.assert_array_equal(fixed.predict(model, x, jnp.zeros((5, 1))), x[:, -1, :1])
    assert calls == [["seq_lengths"], []]


def _all_readout_task(loss_kind: str, output_dim: int, metric_fn=None) -> Task:
    """A readout-'all' task whose sampler is never used: the tests feed loss/metrics directly."""
    return synthetic_task(
        lambda key, batch_size: None, name=f"toy-{loss_kind}", description="toy",
        input_dim=1, output_dim=output_dim, seq_len=7, baseline=2.0, baseline_note="toy",
        options={}, readout="all", loss_kind=loss_kind, metric_fn=metric_fn,
        variable_length=True,
    )


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_masked_all_loss_and_metrics_equal_a_loop_over_valid_steps():
    rng = np.random.default_rng(0)
    lengths = np.array([7, 1, 4, 3, 6], np.int32)
    B, steps = len(lengths), 7
    task = _all_readout_task("mse", 3)
    pred, target = rng.normal(size=(B, steps, 3)), rng.normal(size=(B, steps, 3))
    terms = [np.mean((pred[b, t] - target[b, t]) ** 2) for b in range(B)
             for t in range(lengths[b])]
    ys = Padded(jnp.asarray(target, jnp.float32), jnp.asarray(lengths))
    loss = task.loss(jnp.asarray(pred, jnp.float32), ys)
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)
    # Padded steps contribute nothing, whatever the model emits there.
    junk = np.where(np.arange(steps)[None, :, None] < lengths[:, None, None], pred, 1e30)
    assert float(task.loss(jnp.asarray(junk, jnp.float32), ys)) == pytest.approx(float(loss))
    grad = jax.grad(lambda p: task.loss(p, ys))(jnp.asarray(junk, jnp.float32))
    assert np.all(np.isfinite(grad)) and not np.asarray(grad)[1, 1:].any()

    task = _all_readout_task("xent", 4)
    logits, labels = rng.normal(size=(B, steps, 4)), rng.integers(0, 4, (B, steps))
    logp = _log_softmax(logits)
    xent = [-logp[b, t, labels[b, t]] for b in range(B) for t in range(lengths[b])]
    hits = [logits[b, t].argmax() == labels[b, t] for b in range(B) for t in range(lengths[b])]
    ys = Padded(jnp.asarray(labels, jnp.int32), jnp.asarray(lengths))
    metrics = task.metrics(jnp.asarray(logits, jnp.float32), ys)
    assert float(task.loss(jnp.asarray(logits, jnp.float32), ys)) == pytest.approx(
        np.mean(xent), rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(hits))
    assert float(metrics["baseline_ratio"]) == pytest.approx(np.mean(xent) / 2.0, rel=1e-5)


def test_full_lengths_reproduce_the_fixed_length_scores():
    task = make_task("copy", 5)
    _, y = jax.jit(task.sample, static_argnums=1)(jax.random.key(2), 4)
    logits = jnp.asarray(np.random.default_rng(5).normal(size=(4, task.seq_len, 9)), jnp.float32)
    full = Padded(y, jnp.full((4,), task.seq_len, jnp.int32))
    assert float(task.loss(logits, full)) == pytest.approx(float(task.loss(logits, y)), rel=1e-6)
    # copy's own metric reads whole sequences, so it refuses a Padded instead of misreading it.
    with pytest.raises(ValueError, match="fixed-length and its metric_fn") as err:
        task.metrics(logits, full)
    assert "\n" not in str(err.value)


def test_a_variable_length_metric_fn_receives_the_padded_targets():
    seen = []

    def metric_fn(pred, ys):
        seen.append(type(ys))
        return {"mean_length": jnp.mean(ys.lengths.astype(jnp.float32))}

    task = _all_readout_task("mse", 1, metric_fn)
    ys = Padded(jnp.zeros((2, 7, 1)), jnp.array([2, 6], jnp.int32))
    assert float(task.metrics(jnp.zeros((2, 7, 1)), ys)["mean_length"]) == 4.0
    assert seen == [Padded]


@pytest.mark.parametrize(
    "pred_shape, target, lengths, match",
    [
        ((4, 1), jnp.zeros((4, 1)), jnp.ones((4, 1), jnp.int32),
         r"lengths as integers of shape \(4,\)"),
        ((4, 1), jnp.zeros((4, 1)), jnp.ones((4,), jnp.float32), "lengths as integers"),
        ((4, 20, 1), jnp.zeros((4, 1)), jnp.ones((4,), jnp.int32), r"expects pred \(4, 1\)"),
    ],
)
def test_padded_shape_errors_are_one_line(padded_adding, pred_shape, target, lengths, match):
    with pytest.raises(ValueError, match=match) as err:
        padded_adding.loss(jnp.zeros(pred_shape), Padded(target, lengths))
    assert "\n" not in str(err.value)


# -- the variable-length adding task -----------------------------------------------------------


def test_adding_lengths_cover_the_range_and_inputs_are_zero_past_them(padded_adding, large):
    x, _, lengths = large
    assert padded_adding.variable_length and padded_adding.option("min_len") == MIN_LEN
    assert lengths.dtype == np.int32 and lengths.shape == (LARGE,)
    assert lengths.min() == MIN_LEN and lengths.max() == T  # uniform draws reach both ends
    past = np.arange(T)[None, :] >= lengths[:, None]
    assert not x[past].any()
    assert np.all(x[~past][:, :-1] > 0)  # U(0, 1) content everywhere in the valid part


def test_adding_markers_and_targets_match_a_numpy_recomputation(large):
    x, y, lengths = large
    for b in range(512):
        L = lengths[b]
        marks = np.flatnonzero(x[b, :, -1])
        assert len(marks) == 2 and marks[0] < L // 2 <= marks[1] < L, (b, L, marks)
        assert y[b, 0] == pytest.approx(x[b, marks, 0].sum(), rel=1e-6)
    # Both markers reach every position their own length allows.
    first = np.argmax(x[..., -1], axis=1)
    assert set(first[lengths == T]) == set(range(T // 2))
    second = T - 1 - np.argmax(x[:, ::-1, -1], axis=1)
    assert set(second[lengths == MIN_LEN]) == set(range(MIN_LEN // 2, MIN_LEN))


def test_adding_baseline_is_the_mean_predictor_loss(padded_adding, large):
    _, y, lengths = large
    ys = Padded(jnp.asarray(y, jnp.float32), jnp.asarray(lengths))
    loss = padded_adding.loss(jnp.ones((LARGE, 1)), ys)
    assert padded_adding.baseline == pytest.approx(1 / 6)
    assert float(loss) == pytest.approx(padded_adding.baseline, rel=0.05)
    assert np.mean(y) == pytest.approx(1.0, abs=0.02)


@pytest.mark.slow
def test_adding_sample_jits_once_and_vmaps(padded_adding):
    def step(key):  # sample, predict and score: one padded training step's forward pass
        x, ys = padded_adding.sample(key, 6)
        return x, ys, padded_adding.loss(padded_adding.predict(last_step_model, x, ys), ys)

    chex.clear_trace_counter()
    jitted = jax.jit(chex.assert_max_traces(step, n=1))
    x, ys, loss = jitted(jax.random.key(0))
    assert isinstance(ys, Padded) and x.shape == (6, T, 4) and ys.target.shape == (6, 1)
    assert np.isfinite(float(loss))
    chex.assert_trees_all_equal((x, ys, loss), jitted(jax.random.key(0)))  # no retrace
    keys = jax.random.split(jax.random.key(1), 3)
    batched = jax.jit(jax.vmap(step))(keys)
    for i in range(3):
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], batched), jitted(keys[i]))


def test_adding_lists_min_len_as_an_option():
    assert "min_len" in TASKS["adding"].options and "min_len" in TASKS["adding"].description
    assert make_task("adding", T, min_len=T).option("min_len") == T


@pytest.mark.parametrize(
    "min_len, match",
    [(1, "min_len must be >= 2"), (0, "min_len must be >= 2"), (T + 1, f"min_len must be <= {T}"),
     (2.5, "min_len must be an integer"), ("six", "min_len must be an integer")],
)
def test_bad_min_len_is_one_line(min_len, match):
    with pytest.raises(ValueError, match=match) as err:
        make_task("adding", T, min_len=min_len)
    assert "\n" not in str(err.value)


# -- TFDS datasets with a variable-length sequence feature -------------------------------------


@pytest.fixture(scope="module")
def points_task(tmp_path_factory):
    return digits_points(data_dir=str(tmp_path_factory.mktemp("tfds")))


@pytest.mark.slow
def test_digits_points_pads_each_sequence_and_yields_lengths(points_task):
    from sklearn.datasets import load_digits

    ref = load_digits()
    task = points_task
    assert task.variable_length and (task.readout, task.loss_kind) == ("last", "xent")
    assert (task.input_dim, task.output_dim) == (3, 10)
    xs, labels, lengths = (np.asarray(a) for a in task.data["train"])
    want = [digit_points(image) for image in ref.images[:-360]]
    assert task.seq_len == max(len(w) for w in map(digit_points, ref.images)) == xs.shape[1]
    np.testing.assert_array_equal(lengths, [len(w) for w in want])
    assert lengths.min() < lengths.max()  # genuinely variable
    for b in range(0, len(want), 7):
        np.testing.assert_array_equal(xs[b, : lengths[b]], want[b])
        assert not xs[b, lengths[b]:].any()
    np.testing.assert_array_equal(labels, ref.target[:-360])
    np.testing.assert_array_equal(np.asarray(task.data["test"][1]), ref.target[-360:])
    assert "tensorflow" not in sys.modules


def test_digits_points_sample_jits_and_scores_at_the_last_valid_step(points_task):
    task = points_task
    x, ys = jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(0), 16, "test")
    assert isinstance(ys, Padded) and ys.target.dtype == jnp.int32
    assert x.shape == (16, task.seq_len, 3) and ys.lengths.shape == (16,)
    stored_x, stored_y, stored_len = (np.asarray(a) for a in task.data["test"])
    for xb, yb, lb in zip(np.asarray(x), np.asarray(ys.target), np.asarray(ys.lengths),
                          strict=True):
        row = np.flatnonzero((stored_x == xb).all(axis=(1, 2)))[0]
        assert (stored_y[row], stored_len[row]) == (yb, lb)
    logits = task.predict(lambda xs, seq_lengths: jnp.zeros((xs.shape[0], 10)), x, ys)
    assert float(task.metrics(logits, ys)["baseline_ratio"]) == pytest.approx(
        np.log(10) / task.baseline, rel=1e-5)


def test_digits_points_seq_len_pads_further_and_never_cuts(points_task, tmp_path_factory):
    data_dir = points_task.option("data_dir")
    longer = digits_points(40, data_dir=data_dir)
    assert longer.seq_len == 40 and longer.data["train"][0].shape[1] == 40
    np.testing.assert_array_equal(longer.data["train"][2], points_task.data["train"][2])
    with pytest.raises(ValueError, match=f"seq_len must be >= {points_task.seq_len}") as err:
        digits_points(points_task.seq_len - 1, data_dir=data_dir)
    assert "\n" not in str(err.value)


def test_mocked_variable_length_dataset_is_padded_with_its_lengths():
    with tfds.testing.mock_data(num_examples=9, policy=tfds.testing.MockPolicy.USE_CODE):
        task = sequence_classification("sklearn_digits_points", sequence_key="points")
        source = tfds.data_source("sklearn_digits_points", split="train")
        raw = [np.asarray(source[i]["points"]) for i in range(len(source))]
        labels = [int(source[i]["label"]) for i in range(len(source))]
        with pytest.raises(ValueError, match="no feature 'frames'"):
            sequence_classification("sklearn_digits_points", sequence_key="frames")
    xs, ys, lengths = (np.asarray(a) for a in task.data["train"])
    assert len(set(map(len, raw))) > 1 and task.variable_length
    np.testing.assert_array_equal(lengths, [len(r) for r in raw])
    np.testing.assert_array_equal(ys, labels)
    for x, r in zip(xs, raw, strict=True):
        np.testing.assert_array_equal(x[: len(r)], r)
        assert not x[len(r):].any()


def test_pad_sequences_rejects_empty_or_too_long_sequences():
    padded, lengths = pad_sequences([np.ones((2, 1)), np.ones((3, 1))], 4)
    assert padded.shape == (2, 4, 1) and lengths.tolist() == [2, 3]
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.4, got 0\.\.3"):
        pad_sequences([np.ones((0, 1)), np.ones((3, 1))], 4)
    with pytest.raises(ValueError, match="one feature shape"):
        pad_sequences([np.ones((2, 1)), np.ones((3, 2))], 4)
