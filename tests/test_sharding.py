"""Several devices: the batch, or the seeds and trials, split over two forced CPU devices give
the one-device losses."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gatezoo.metric_schema import parse_metric_name
from gatezoo.training import TrainConfig, train
from gatezoo.training.sharding import resolve_devices

CONFIG = dict(cell="lstm", task="adding", seq_len=12, hidden=8, batch_size=8, steps=8,
              seeds=(0, 1), learning_rate=1e-2, steps_per_call=4, eval_every=4,
              eval_batches=2)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_two_devices_match_one_device(cell):
    assert jax.device_count() >= 2, "conftest forces 2 CPU devices (XLA_FLAGS)"
    one = train(TrainConfig(**{**CONFIG, "cell": cell}, devices=1), progress=False)
    two = train(TrainConfig(**{**CONFIG, "cell": cell}, devices=2), progress=False)
    for split in ("train", "eval"):
        a = [ln["loss"] for ln in one.history if ln["split"] == split]
        b = [ln["loss"] for ln in two.history if ln["split"] == split]
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    leaves = zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(two.params),
                 strict=True)
    for x, y in leaves:
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)
    # the two-device run really is split: state replicated on both, gradients all-reduced
    leaf = jax.tree_util.tree_leaves(two.params)[0]
    assert len(leaf.sharding.device_set) == 2
    hlo = two.step_fns.chunk.lower(two.state, None, None, jnp.int32(1)).compile().as_text()
    assert "all-reduce" in hlo
    # and each device keeps its half of the batch through the hand-written sequence backward
    # pass (its parameter products contract (t, b) in place: gatezoo/models/time_batch_product)
    assert "all-gather" not in hlo and "all-to-all" not in hlo


def test_device_count_rules(capsys):
    assert jax.device_count() >= 2
    assert resolve_devices(None, 8) == 2
    assert resolve_devices(None, 7) == 1  # automatic: falls back to one device, says so
    assert "does not divide over 2 devices" in capsys.readouterr().err
    assert resolve_devices(1, 7) == 1
    with pytest.raises(ValueError, match="batch size 7 does not divide over 2 devices"):
        resolve_devices(2, 7)
    with pytest.raises(ValueError, match="devices=3 but only 2 device"):
        resolve_devices(3, 9)
    with pytest.raises(ValueError, match="does not divide over 2 devices"):
        train(TrainConfig(**{**CONFIG, "batch_size": 7}, devices=2), progress=False)


def _losses(result, split):
    return [(ln["step"], ln.get("trial"), ln["seed"], ln["loss"]) for ln in result.history
            if ln["split"] == split]


@pytest.mark.slow
def test_seeds_sharded_over_two_devices_match_one_device(tmp_path):
    # 4 slots: 2 seeds x 2 learning-rate trials (the trials ride the seed axis), 2 per device
    config = {**CONFIG, "cell": "gru", "steps": 4, "steps_per_call": 2, "eval_every": 2,
              "checkpoint_every": 2, "instruments": ("gates",), "seeds": (0, 1),
              "lr_trials": (1e-2, 3e-2)}
    one = train(TrainConfig(**config, devices=1), progress=False)
    # the sharded run stops at step 2 and resumes from its checkpoint (restored sharded)
    sharded = TrainConfig(**config, devices=2, shard="seeds")
    train(sharded.replace(steps=2), tmp_path, progress=False)
    two = train(sharded, tmp_path, resume=True, progress=False)
    written = [json.loads(t) for t in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    two.history = written  # the whole run, both halves
    for split in ("train", "eval"):
        a, b = _losses(one, split), _losses(two, split)
        assert len(a) == len(b) > 0 and [x[:3] for x in a] == [x[:3] for x in b]
        np.testing.assert_allclose([x[3] for x in b], [x[3] for x in a], rtol=1e-5, atol=1e-7)
    # the instruments too (they run at step 0 under their default schedule)
    first = [ln for ln in one.history if ln["split"] == "train" and ln["step"] == 0]
    again = [ln for ln in two.history if ln["split"] == "train" and ln["step"] == 0]
    names = [k for k in first[0] if parse_metric_name(k).instrument == "gates"]
    assert names and len(first) == len(again) == len(two.config.slot_seeds())
    np.testing.assert_allclose([[ln[k] for k in names] for ln in again],
                               [[ln[k] for k in names] for ln in first], rtol=1e-5, atol=1e-7)
    # each device holds half of the slots of every stacked leaf, not a replica
    for x, y in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(two.params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)
        assert {s.data.shape[0] for s in y.addressable_shards} == {y.shape[0] // 2}
    keys = two.state.keys
    assert len(keys.sharding.device_set) == 2 and keys.addressable_shards[0].data.shape[0] == 2


def test_seed_sharding_rules():
    with pytest.raises(ValueError, match="3 slots .* do not divide over 2 devices"):
        train(TrainConfig(**{**CONFIG, "seeds": (0, 1, 2)}, devices=2, shard="seeds"),
              progress=False)
    with pytest.raises(ValueError, match="unknown shard 'model'"):
        TrainConfig(shard="model")
    with pytest.raises(ValueError, match="seed_batch does not apply with shard='seeds'"):
        TrainConfig(shard="seeds", seed_batch=1)
    assert resolve_devices(None, 7, slots=4) == 2  # the slots divide; the batch need not


@pytest.mark.slow
def test_seeds_split_with_host_spectra_is_a_clear_error_not_a_hang():
    # each CPU device's host SVD (gatezoo.linalg) would wait for the other's forever
    config = {**CONFIG, "cell": "vector", "steps": 2, "steps_per_call": 2, "eval_every": 2,
              "instruments": ("anisotropy",), "seeds": (0, 1)}
    with pytest.raises(ValueError, match="cannot run instruments that take spectra"):
        train(TrainConfig(**config, devices=2, shard="seeds"), progress=False)
