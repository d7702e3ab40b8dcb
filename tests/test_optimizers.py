"""Optimizers by name: each update against the textbook formula, schedules, clipping, readers."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gatezoo.instruments.optimizer import learning_rate_in_force, momentum_beta, state_value
from gatezoo.training.optimizers import (
    OPTIMIZERS,
    SCHEDULES,
    make_optimizer,
    make_schedule,
)

P0 = np.array([0.5, -1.0, 2.0])
GRADS = [np.array([0.3, -0.2, 1.0]), np.array([-0.1, 0.4, 0.5]), np.array([0.2, 0.2, -0.3])]
LR = 0.1


def _run(opt, steps=3):
    params = {"w": jnp.asarray(P0)}
    state = opt.init(params)
    for g in GRADS[:steps]:
        updates, state = opt.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params["w"]), state


def _reference(name, beta=0.9, b1=0.9, b2=0.999, eps=1e-8, wd=1e-4, rho=0.9):
    """Independent numpy implementation of each update rule."""
    p = P0.astype(np.float64).copy()
    m = np.zeros(3)
    v = np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        if name == "sgd":
            p -= LR * g
        elif name == "momentum":
            m = beta * m + g
            p -= LR * m
        elif name == "nesterov":
            m = beta * m + g
            p -= LR * (g + beta * m)
        elif name in ("adam", "adamw"):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            if name == "adamw":
                step = step + wd * p
            p -= LR * step
        elif name == "rmsprop":
            v = rho * v + (1 - rho) * g**2
            p -= LR * g / np.sqrt(v + eps)
    return p


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_update_matches_formula(name):
    got, state = _run(make_optimizer(name, LR))
    np.testing.assert_allclose(got, _reference(name), rtol=2e-6, atol=1e-7)
    assert float(learning_rate_in_force(state)) == pytest.approx(LR)


def test_readers_find_the_right_state():
    _, adam_state = _run(make_optimizer("adam", LR), steps=1)
    mu = state_value(adam_state, "mu", "ScaleByAdamState")["w"]
    np.testing.assert_allclose(np.asarray(mu), 0.1 * GRADS[0], rtol=1e-6)
    assert state_value(adam_state, "trace") is None
    assert momentum_beta(adam_state)[1] == "ema"
    _, mom_state = _run(make_optimizer("momentum", LR, momentum=0.5), steps=2)
    trace = state_value(mom_state, "trace")["w"]
    np.testing.assert_allclose(np.asarray(trace), GRADS[1] + 0.5 * GRADS[0], rtol=1e-6)
    assert state_value(mom_state, "nu", "ScaleByAdamState") is None
    beta, kind = momentum_beta(mom_state)
    assert (float(beta), kind) == (0.5, "heavy-ball")
    # a transformation built with a fixed rate has none in its state: None, not an error
    assert learning_rate_in_force(optax.sgd(0.1).init({"w": jnp.zeros(2)})) is None


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_rate_in_force_follows_schedule(schedule):
    steps, warmup, decay = 12, 3, 0.5

    def expected(t):
        if schedule == "constant":
            return LR
        if schedule == "cosine":
            return LR * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
        if schedule == "warmup-cosine":
            if t < warmup:
                return LR * t / warmup
            return LR * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (steps - warmup)))
        if schedule == "exponential":
            return LR * decay ** (t / steps)
        return LR * decay ** (t // (steps // 3))

    opt = make_optimizer("sgd", LR, schedule=schedule, steps=steps, warmup=warmup,
                         decay_rate=decay)
    params = {"w": jnp.zeros(2)}
    state = opt.init(params)
    for t in range(steps):
        _, state = opt.update({"w": jnp.ones(2)}, state, params)
        assert float(learning_rate_in_force(state)) == pytest.approx(expected(t), abs=1e-7), t
    sched = make_schedule(schedule, LR, steps=steps, warmup=warmup, decay_rate=decay)
    assert float(sched(5)) == pytest.approx(expected(5), abs=1e-7)


def test_clip_bounds_the_global_norm():
    g = np.array([3.0, 4.0, 0.0])  # norm 5
    opt = make_optimizer("sgd", 1.0, clip=1.0)
    params = {"w": jnp.zeros(3)}
    updates, _ = opt.update({"w": jnp.asarray(g)}, opt.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -g / 5.0, rtol=1e-6)
    small = np.array([0.3, 0.4, 0.0])  # norm 0.5 < clip: untouched
    updates, _ = opt.update({"w": jnp.asarray(small)}, opt.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -small, rtol=1e-6)


def test_bad_names_and_values():
    with pytest.raises(ValueError, match="unknown optimizer 'lion'; choose one of: adam"):
        make_optimizer("lion", 0.1)
    with pytest.raises(ValueError, match="unknown schedule 'linear'; choose one of"):
        make_optimizer("sgd", 0.1, schedule="linear")
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        make_optimizer("sgd", 0.0)
    with pytest.raises(ValueError, match="clip must be > 0"):
        make_optimizer("sgd", 0.1, clip=-1.0)
    with pytest.raises(ValueError, match="warmup must be in"):
        make_optimizer("sgd", 0.1, schedule="warmup-cosine", steps=10, warmup=10)
