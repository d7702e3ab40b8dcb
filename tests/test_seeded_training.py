"""The reproductions' training (``train_with_checkpoints``, on gz.train's compiled step) against
a plain Python loop of optax steps, seed by seed, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gatezoo.experiments.seeded import SeededModels, stream_key, train_with_checkpoints
from gatezoo.tasks import make_task

SEEDS, STEPS, MARKS, BATCH = (1, 2, 3), 5, (0, 2, 5), 4


def _const_key(s, i):  # docs/theory.md §6.4: one fixed batch per seed for every step
    return stream_key(s, "batches")


def _step_key(s, i):
    return jax.random.fold_in(stream_key(s, "batches"), i)


def _jitter_key(s, i):
    return jax.random.fold_in(stream_key(s, "jitter"), i)


def _by_hand(models, task, opt, batch_key, jitter):
    """Each seed alone: sample, jitter, value_and_grad, optax update, for STEPS steps."""

    @jax.jit
    def step(p, state, s, i):
        x, y = task.sample(batch_key(s, i), BATCH)
        if jitter:
            x = x + jitter * jax.random.normal(_jitter_key(s, i), x.shape, x.dtype)
        loss, g = jax.value_and_grad(lambda q: task.loss(models.predict(q, x), y))(p)
        updates, state = opt.update(g, state, p)
        return optax.apply_updates(p, updates), state, loss

    kept = {m: [] for m in MARKS}
    losses = np.zeros((STEPS, len(SEEDS)))
    for j, s in enumerate(SEEDS):
        p = jax.tree_util.tree_map(lambda a, j=j: a[j], models.params)
        state = opt.init(p)
        for i in range(STEPS + 1):
            if i in kept:
                kept[i].append(p)
            if i < STEPS:
                p, state, losses[i, j] = step(p, state, s, i)
    return kept, losses


@pytest.mark.slow
@pytest.mark.parametrize("cell, optimizer, lr, batch_key, jitter, seed_batch", [
    ("vector", "adam", 1e-2, _const_key, 1e-3, None),  # None: one seed at a time on a CPU
    ("leaky", "sgd", 0.05, _step_key, 0.0, 2),  # groups of 2 and a remainder group of 1
    ("scalar", "adam", 1e-2, _step_key, 0.0, 3),  # all seeds in one vmap
])
def test_checkpoints_and_losses_equal_a_plain_optax_loop(
    x64, cell, optimizer, lr, batch_key, jitter, seed_batch
):
    task = make_task("adding", seq_len=6)
    opts = {"alpha": 0.3} if cell == "leaky" else {}
    build = lambda: SeededModels.build(cell, task.input_dim, 4, SEEDS,  # noqa: E731
                                       dtype=jnp.float64, cell_options=opts)
    models = build()
    run = train_with_checkpoints(
        models, task, optimizer, lr, MARKS, batch_size=BATCH, batch_key=batch_key,
        input_jitter=jitter, jitter_key=_jitter_key if jitter else None, seed_batch=seed_batch,
    )
    opt = {"sgd": optax.sgd, "adam": optax.adam}[optimizer](lr)
    kept, losses = _by_hand(build(), task, opt, batch_key, jitter)
    assert run.losses.shape == (STEPS, len(SEEDS)) and sorted(run.checkpoints) == list(MARKS)
    np.testing.assert_allclose(run.losses, losses, rtol=1e-12, atol=0)
    for m in MARKS:
        want = jax.tree_util.tree_map(lambda *a: np.stack(a), *kept[m])
        for got, ref in zip(jax.tree_util.tree_leaves(run.checkpoints[m]),
                            jax.tree_util.tree_leaves(want), strict=True):
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    for got, ref in zip(jax.tree_util.tree_leaves(models.params),
                        jax.tree_util.tree_leaves(run.checkpoints[STEPS]), strict=True):
        np.testing.assert_array_equal(got, ref)  # the models end at the last checkpoint


@pytest.mark.slow
def test_a_diverging_seed_is_applied_not_skipped(x64):
    # a step whose loss overflows is applied, as a plain optimizer loop applies it: the seed
    # ends non-finite (gz.train's trials instead keep the last finite state)
    task = make_task("adding", seq_len=6)
    models = SeededModels.build("vector", task.input_dim, 4, (1,), dtype=jnp.float64)
    run = train_with_checkpoints(models, task, "sgd", 1e200, (1, 3), batch_size=BATCH,
                                 batch_key=_step_key)
    assert np.isfinite(run.losses[0]).all() and not np.isfinite(run.losses[1:]).any()
    leaves = jax.tree_util.tree_leaves(run.checkpoints[3])
    assert not all(np.isfinite(leaf).all() for leaf in leaves)


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 2, reason="needs two devices (tests/conftest.py)")
def test_seeds_split_over_two_devices_equal_one_device(x64):
    # each device trains its own seeds as one device trains them all: the same numbers
    seeds, task = (1, 2, 3, 4), make_task("adding", seq_len=6)
    runs = {}
    for devices in (1, 2):
        models = SeededModels.build("vector", task.input_dim, 4, seeds, dtype=jnp.float64)
        runs[devices] = train_with_checkpoints(models, task, "adam", 1e-2, MARKS,
                                               batch_size=BATCH, batch_key=_step_key,
                                               devices=devices)
    one, two = runs[1], runs[2]
    assert (one.devices, two.devices) == (1, 2)
    np.testing.assert_allclose(two.losses, one.losses, rtol=1e-13, atol=0)
    for m in MARKS:
        for got, ref in zip(jax.tree_util.tree_leaves(two.checkpoints[m]),
                            jax.tree_util.tree_leaves(one.checkpoints[m]), strict=True):
            assert len(got.sharding.device_set) == 1  # read back whole, on one device
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-15)
    assert two.flops == one.flops  # the shard_map body counted once per device
