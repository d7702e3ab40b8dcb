"""Bad inputs at the Python API answer with one line that names the argument, the value and
what is allowed, before anything compiles; inputs a model can run give defined results.

Covers ``TrainConfig``, ``gz.train``, the models (``gz.Recurrent`` inside ``SequenceModel``, the
Flax adapters), ``gz.attach``/``update`` and the instruments on edge-case batches (one step, no
sequence, a NaN input, a cell whose output is not its state)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import MGU, mse

import gatezoo as gz

LOSS = lambda m, x, y: mse(m(x), y)  # noqa: E731


@pytest.mark.parametrize("field, value, message", [
    ("seeds", (0.5,), "seeds must be integers, got 0.5"),
    ("seeds", (2**31,), "seeds must be in [0, 2147483647]"),
    ("seeds", (1, 1), "seeds must be distinct"),
    ("hidden", 8.0, "hidden must be an integer >= 1, got 8.0"),
    ("steps", True, "steps must be an integer >= 0, got True"),
    ("learning_rate", "abc", "learning_rate must be a finite number > 0, got 'abc'"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number > 0, got inf"),
    ("clip", "x", "clip must be a finite number > 0, got 'x'"),
    ("lr_trials", "abc", "lr_trials must be a sequence of learning rates"),
    ("init", "foo", "unknown init 'foo'; choose one of: flax, torch, normal"),
    ("init_std", -1.0, "init_std must be a finite number > 0, got -1.0"),
    ("gate_bias", "bad", "gate_bias must be a finite number or 'chrono', got 'bad'"),
    ("momentum", 2.0, "momentum must be in [0, 1), got 2.0"),
    ("schedule", "foo", "unknown schedule 'foo'; choose one of: constant"),
    ("task_options", [1], "task_options must be a dict, got [1]"),
    ("cell_options", None, "cell_options must be a dict, got None"),
    ("use_bias", "yes", "use_bias must be True or False, got 'yes'"),
    ("fixed_batch", "no", "fixed_batch must be True or False, got 'no'"),
    ("task", 3, "task must be a registered name, got 3"),
    ("instruments", (3,), "instruments must be names (strings)"),
    ("every", {"gates": 0}, "every must map instrument names to integers >= 1"),
])
def test_a_bad_config_field_is_named_with_its_value_and_what_is_allowed(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        gz.TrainConfig(**{field: value})
    assert "\n" not in str(err.value)


def test_integers_from_numpy_are_integers():
    config = gz.TrainConfig(hidden=np.int64(8), steps=np.int32(3), seeds=np.arange(2),
                            seq_len=np.int64(12), learning_rate=np.float32(0.01))
    assert (config.hidden, config.steps, config.seq_len, config.seeds) == (8, 3, 12, (0, 1))
    assert all(type(v) is int for v in (config.hidden, config.steps, config.seq_len))
    assert type(config.learning_rate) is float
    assert gz.TrainConfig.from_dict(config.to_dict()) == config  # JSON-ready


def _model(cell_name="gru", d_in=2, hidden=4):
    cell = gz.make_cell(cell_name, d_in, hidden, rngs=nnx.Rngs(0))
    return gz.SequenceModel(cell, 1, rngs=nnx.Rngs(1))


@pytest.mark.parametrize("cell_name, name", [("gru", "GRU"), ("flax-gru", "FlaxGRU")])
def test_a_wrong_feature_size_names_the_cell_and_the_shape_in_the_users_layout(cell_name, name):
    model = _model(cell_name)
    with pytest.raises(ValueError, match=re.escape(
            f"{name} expects inputs with 2 features in the last axis, got inputs of shape "
            "(3, 5, 3) (*batch, T, features)")):
        model(jnp.ones((3, 5, 3)))
    layer = gz.Recurrent(gz.GRU(2, 4, rngs=nnx.Rngs(0)), time_major=True)
    with pytest.raises(ValueError, match=re.escape("got inputs of shape (5, 3, 3) "
                                                   "(T, *batch, features)")):
        layer(jnp.ones((5, 3, 3)))


def test_no_time_steps_is_refused_and_an_empty_batch_runs():
    model = _model()
    with pytest.raises(ValueError, match=re.escape(
            "inputs of shape (3, 0, 2) (*batch, T, features) have no time steps")):
        model(jnp.ones((3, 0, 2)))
    for cell_name in ("gru", "s6", "lstm"):  # S6 once divided by the batch size
        assert _model(cell_name)(jnp.ones((0, 5, 2))).shape == (0, 1)


def _measure(names, xs, ys, model=None):
    model = model or _model()
    att = gz.attach(model, LOSS, names)
    params = nnx.state(model, nnx.Param)
    opt = optax.adam(1e-2)
    return att.update(params, att.init(params), xs, ys, step=0, optimizer=opt,
                      opt_state=opt.init(params))


def test_an_empty_batch_is_refused_by_the_instruments():
    with pytest.raises(ValueError, match=re.escape(
            "xs holds an empty batch (shape (0, 5, 2)); the instruments need at least one "
            "sequence")):
        _measure(["economy"], jnp.ones((0, 5, 2)), jnp.zeros((0, 1)))


def test_one_step_refuses_the_lag_instruments_and_measures_the_others():
    xs, ys = jnp.ones((3, 1, 2)), jnp.zeros((3, 1))
    for name in ("lags", "transport", "sensitivity"):
        with pytest.raises(ValueError, match=re.escape(
                f"instrument {name!r} measures over lags and needs sequences of at least 2 "
                "steps; its layer 'model' ran on T = 1")):
            _measure([name], xs, ys)
    out = _measure(["gates", "optimizer", "effective_lr", "analogies", "ratios"], xs, ys)
    assert out.metrics and all(np.isfinite(v) for v in out.metrics.values())


def test_a_non_finite_gradient_makes_every_metric_of_the_step_non_finite():
    xs, ys = jnp.ones((3, 6, 2)), jnp.zeros((3, 1))
    clean = _measure(["economy"], xs, ys).metrics
    assert sum(np.isfinite(v) for v in clean.values()) > len(clean) // 2
    bad = _measure(["economy"], xs.at[0, 2, 1].set(jnp.nan), ys)
    assert not np.isfinite(bad.loss)
    assert set(bad.metrics) == set(clean)
    assert not any(np.isfinite(v) for v in bad.metrics.values())


def test_an_integer_parameter_is_named():
    model = _model()
    model.cell.b_z = nnx.Param(jnp.zeros(4, jnp.int32))
    with pytest.raises(TypeError, match=re.escape(
            "parameter cell.b_z is int32: every nnx.Param is differentiated")):
        gz.attach(model, LOSS, ["gates"])


def test_an_uncalled_optimizer_factory_gets_the_call_it_needs():
    model = _model()
    att = gz.attach(model, LOSS, ["gates"])
    params = nnx.state(model, nnx.Param)
    with pytest.raises(TypeError, match=re.escape("(call the factory: optax.adam(1e-3), not "
                                                  "optax.adam)")):
        att.update(params, att.init(params), jnp.ones((2, 4, 2)), jnp.zeros((2, 1)), step=0,
                   optimizer=optax.adam, opt_state=None)


class SquashedMGU(MGU):
    """A gated cell whose output is not its state: ``y = tanh(2 h')``."""

    def split_call(self, h, x, gate_h):
        new, _ = super().split_call(h, x, gate_h)
        return new, jnp.tanh(2 * new)


def test_a_cell_whose_output_is_not_its_state_is_refused_where_the_adjoints_would_be_wrong():
    """The adjoints are taken through offsets on the states, which ``y = tanh(2 h')`` does not
    read: the first-order gradients would miss the readout's path (G0 was 4.6 % off jax.grad),
    so the instruments built on them refuse the layer; the state-only ones still measure."""
    model = gz.SequenceModel(SquashedMGU(2, 4, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
    xs, ys = jnp.ones((3, 6, 2)), jnp.zeros((3, 1))
    for name in ("expansion", "lags", "transport", "truncation"):
        with pytest.raises(ValueError, match=re.escape(
                f"instrument {name!r} cannot measure layer 'model': its cell returns an output "
                "y that is not its new state")):
            gz.attach(model, LOSS, [name])
    att = gz.attach(model, LOSS, [])
    with pytest.raises(ValueError, match="first_order cannot measure layer 'model'"):
        att.first_order(nnx.state(model, nnx.Param), xs, ys)
    out = _measure(["gates", "ratios", "sensitivity"], xs, ys, model)
    assert all(np.isfinite(v) for v in out.metrics.values())
    # the same cell returning its state is measured: its G0 is the gradient with the gates
    # reading a stop_gradient copy of the state (the gate-frozen state path)
    plain = gz.SequenceModel(MGU(2, 4, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
    params = nnx.state(plain, nnx.Param)
    g0 = gz.attach(plain, LOSS, ["expansion"]).first_order(params, xs, ys)[""].g0

    def frozen_loss(p):
        m = nnx.merge(nnx.graphdef(plain), p)
        h = jnp.zeros((3, 4))
        for t in range(xs.shape[1]):
            h, _ = m.cell.split_call(h, xs[:, t], jax.lax.stop_gradient(h))
        return mse(h @ m.W_o[...] + m.b_o[...], ys)

    want = jax.grad(frozen_loss)(params)
    for got, exact in zip(jax.tree_util.tree_leaves(g0["cell"]),
                          jax.tree_util.tree_leaves(want["cell"]), strict=True):
        np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-7)


def test_a_task_loss_refuses_predictions_that_would_broadcast_against_the_targets():
    task = gz.make_task("adding", 6)
    with pytest.raises(ValueError, match=re.escape(
            "task 'adding' expects pred (4, 1) and y (4, 1), got (4, 1) and (4,)")):
        task.loss(jnp.zeros((4, 1)), jnp.zeros(4))
    with pytest.raises(ValueError, match=re.escape(
            "the prediction has shape (4, 1) but the targets (4,); they must match")):
        gz.tasks.mean_squared_error(jnp.zeros((4, 1)), jnp.zeros(4))
    with pytest.raises(ValueError, match="the labels must be the logits' shape without"):
        gz.tasks.softmax_cross_entropy(jnp.zeros((4, 3, 5)), jnp.zeros((4, 2), jnp.int32))
