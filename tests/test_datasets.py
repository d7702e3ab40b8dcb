"""Dataset tasks: MNIST through a mocked tfds.data_source, the project's own digits builder
prepared into a temporary folder, and the error for a dataset that is not prepared."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gatezoo.tasks import DatasetNotPrepared, make_task
from gatezoo.tasks.datasets import pixel_permutation


@pytest.fixture(scope="module")
def mnist_tasks():
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        return make_task("smnist"), make_task("psmnist", permutation_seed=3)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.mark.slow
def test_importing_the_tasks_does_not_import_tensorflow():
    code = "import gatezoo.tasks, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_smnist_shapes_labels_and_jit(mnist_tasks):
    smnist, _ = mnist_tasks
    assert (smnist.seq_len, smnist.input_dim, smnist.output_dim) == (784, 1, 10)
    assert (smnist.readout, smnist.loss_kind) == ("last", "xent")
    x, y = jax.jit(smnist.sample, static_argnums=(1, 2))(jax.random.key(0), 8, "train")
    assert x.shape == (8, 784, 1) and x.dtype == jnp.float32 and y.shape == (8,)
    assert y.dtype == jnp.int32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # Each drawn sequence is one stored image, rescaled by 1/255, with its own label.
    images, labels = (np.asarray(a) for a in smnist.data["train"])
    rows = [np.flatnonzero((images == np.asarray(xi * 255).round()).all(axis=(1, 2)))
            for xi in x]
    for r, label in zip(rows, np.asarray(y), strict=True):
        assert len(r) >= 1 and labels[r[0]] == label
    # Baseline: the entropy of the training label frequencies.
    freq = np.bincount(labels, minlength=10) / labels.size
    entropy = -sum(p * np.log(p) for p in freq if p > 0)
    assert smnist.baseline == pytest.approx(entropy)


def test_psmnist_is_smnist_with_a_fixed_permutation(mnist_tasks):
    smnist, psmnist = mnist_tasks
    perm = pixel_permutation(3, 784)
    assert np.array_equal(np.sort(perm), np.arange(784))
    assert not np.array_equal(perm, np.arange(784))
    assert np.array_equal(perm, pixel_permutation(3, 784))
    assert not np.array_equal(perm, pixel_permutation(4, 784))
    for split in ("train", "test"):
        plain = np.asarray(smnist.data[split][0])
        np.testing.assert_array_equal(np.asarray(psmnist.data[split][0]), plain[:, perm])
    x, y = psmnist.sample(jax.random.key(5), 4)
    x0, y0 = smnist.sample(jax.random.key(5), 4)
    np.testing.assert_array_equal(x, x0[:, perm])
    np.testing.assert_array_equal(y, y0)
    assert psmnist.option("permutation_seed") == 3


def test_an_unprepared_dataset_raises_one_clear_line(tmp_path):
    with pytest.raises(DatasetNotPrepared) as err:
        make_task("smnist", data_dir=str(tmp_path))
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    assert "tfds build mnist --file_format=array_record" in message and str(tmp_path) in message


@pytest.mark.slow
def test_digits_builder_prepares_offline_and_matches_sklearn(digits_dir):
    from sklearn.datasets import load_digits

    task = make_task("digits", data_dir=str(digits_dir))
    assert (task.seq_len, task.input_dim, task.output_dim) == (64, 1, 10)
    assert (digits_dir / "sklearn_digits" / "1.0.0").is_dir()
    ref = load_digits()
    train_x, train_y = (np.asarray(a) for a in task.data["train"])
    test_x, test_y = (np.asarray(a) for a in task.data["test"])
    np.testing.assert_array_equal(train_x[..., 0], ref.images[:-360].reshape(-1, 64))
    np.testing.assert_array_equal(train_y, ref.target[:-360])
    np.testing.assert_array_equal(test_x[..., 0], ref.images[-360:].reshape(-1, 64))
    np.testing.assert_array_equal(test_y, ref.target[-360:])
    x, y = jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(1), 6, "test")
    assert x.shape == (6, 64, 1) and x.dtype == jnp.float32 and float(x.max()) <= 1.0
    # The arrays may also travel as a jit argument instead of captured constants.
    sample_from = jax.jit(task.sample_from, static_argnums=(2, 3))
    passed = sample_from(task.data, jax.random.key(1), 6, "test")
    np.testing.assert_array_equal(passed[0], x)
    np.testing.assert_array_equal(passed[1], y)


def test_digits_rows_layout_and_options(digits_dir):
    task = make_task("digits", data_dir=str(digits_dir), layout="rows")  # reuses the files
    assert (task.seq_len, task.input_dim) == (8, 8)
    x, _ = task.sample(jax.random.key(0), 3)
    assert x.shape == (3, 8, 8)
    with pytest.raises(ValueError, match="layout must be one of"):
        make_task("digits", data_dir=str(digits_dir), layout="columns")
    with pytest.raises(ValueError, match="fixed seq_len 64"):
        make_task("digits", 80, data_dir=str(digits_dir))
