"""Guard rails for cells written outside gatezoo: registration with any factory signature, the
gate-protocol check at first use, one parameter dtype, Flax's own cells through the real builder,
the expansion self-check from config / make_instruments / CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatezoo as gz
from gatezoo.cli import main as cli_main
from gatezoo.training.run_model import build_model

D_IN, D_H = 2, 4


class UserGated(nnx.Module):
    """A minimal gated unit with only ``rngs`` in its signature (like README's MyGatedCell).

    ``shift`` adds a constant to ``__call__`` only (a broken gate path); ``ts`` picks a broken
    ``time_scale``.
    """

    def __init__(self, d_in, d_h, *, rngs, shift=0.0, ts="ok"):
        init = nnx.initializers.normal(0.4)
        self.hidden_features = d_h
        self.shift, self.ts = shift, ts
        self.W = nnx.Param(init(rngs.params(), (d_h, d_h)))
        self.U = nnx.Param(init(rngs.params(), (d_in, d_h)))
        self.W_g = nnx.Param(init(rngs.params(), (d_h, d_h)))

    num_feature_axes = 1

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (self.hidden_features,), self.W[...].dtype)

    def __call__(self, h, x):
        new, y = self.split_call(h, x, h)
        return new + self.shift, y + self.shift

    def split_call(self, h, x, gate_h):
        alpha = jax.nn.sigmoid(gate_h @ self.W_g)
        new = (1 - alpha) * h + alpha * jnp.tanh(h @ self.W + x @ self.U)
        return new, new

    def time_scale(self, h, x):
        alpha = jax.nn.sigmoid(h @ self.W_g)
        if self.ts == "column":
            return alpha[..., :1]
        if self.ts == "transposed":
            return alpha.T
        if self.ts == "range":
            return 2.0 * alpha
        return alpha


def _register(name, factory, options=()):
    gz.models.CELLS.pop(name, None)
    return gz.register_cell(name, factory, "test cell", options=options)


def tiny(**changes):
    base = dict(cell="gru", task="adding", seq_len=6, hidden=D_H, batch_size=4, steps=2,
                seeds=(0,), learning_rate=1e-2, steps_per_call=2, eval_every=2, eval_batches=1,
                checkpoint_every=2, devices=1, seed_batch=1)
    base.update(changes)
    return gz.TrainConfig(**base)


@pytest.mark.slow
def test_a_cell_class_is_its_own_factory_and_trains_with_instruments():
    _register("user-gated", UserGated)
    cell = gz.make_cell("user-gated", D_IN, D_H, rngs=nnx.Rngs(0), use_bias=False,
                        param_dtype=jnp.float32)
    assert isinstance(cell, UserGated)  # use_bias / init / param_dtype were not passed
    result = gz.train(tiny(cell="user-gated", instruments=("gates", "expansion")),
                      progress=False)
    line = [ln for ln in result.history if ln["split"] == "train"][-1]
    assert 0 < line[gz.metric_name("gates", None, "alpha_mean")] < 1
    assert np.isfinite(line[gz.metric_name("expansion", None, "g1_over_g0")])


def test_a_factory_missing_an_argument_is_named():
    _register("needs-depth", lambda d_in, d_h, *, rngs, depth: UserGated(d_in, d_h, rngs=rngs))
    with pytest.raises(ValueError, match=r"cell 'needs-depth'.*requires depth"):
        gz.make_cell("needs-depth", D_IN, D_H, rngs=nnx.Rngs(0))


def test_unknown_cell_names_register_cell():
    with pytest.raises(ValueError, match="register_cell"):
        gz.make_cell("no-such-cell", D_IN, D_H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="register_cell"):
        gz.TrainConfig(cell=UserGated)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [nnx.SimpleCell, nnx.GRUCell, nnx.OptimizedLSTMCell])
def test_model_fns_works_on_flax_cells(kind):
    task = gz.make_task("adding", 5)
    model = gz.SequenceModel(kind(task.input_dim, D_H, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
    fns, params = gz.instruments.model_fns(model, task)
    xs, ys = task.sample(jax.random.key(0), 3)
    loss, carries = fns.loss(params, xs, ys)
    assert np.isclose(float(loss), float(task.loss(model(xs), ys)), rtol=1e-6)
    assert not fns.gated and fns.hidden == D_H
    assert jax.tree_util.tree_leaves(carries)[-1].shape == (5, 3, D_H)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [nnx.SimpleCell, nnx.GRUCell, nnx.OptimizedLSTMCell])
def test_train_with_instruments_on_flax_cells_registered_as_their_own_factory(kind):
    name = f"raw-{kind.__name__}"
    _register(name, kind)
    result = gz.train(tiny(cell=name, instruments=("economy",)), progress=False)
    line = [ln for ln in result.history if ln["split"] == "train"][-1]
    assert np.isfinite(line[gz.metric_name("lags", None, "ratio@1")])
    assert np.isfinite(line[gz.metric_name("optimizer", None, "step_mean")])
    # the economy preset skips gate instruments
    assert gz.metric_name("gates", None, "alpha_mean") not in line


def test_one_parameter_dtype_for_the_whole_model(x64):
    _register("user-gated", UserGated)
    task = gz.make_task("adding", 5)
    model = build_model(tiny(cell="user-gated", dtype="float64"), task, seed=0)
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float64)}
    # a user cell built in float64 gets a float64 readout, so its gradient is float64 throughout
    cell = UserGated(D_IN, D_H, rngs=nnx.Rngs(0))
    assert cell.W[...].dtype == jnp.float64
    model = gz.SequenceModel(cell, 1, rngs=nnx.Rngs(1))
    assert model.W_o[...].dtype == jnp.float64


@pytest.mark.parametrize("broken, message", [
    (dict(shift=0.3), r"cell UserGated: __call__\(h, x\) differs from split_call"),
    (dict(ts="column"), r"cell UserGated: time_scale returned shape \(3, 1\)"),
    (dict(ts="transposed"), r"cell UserGated: time_scale returned shape \(4, 3\)"),
    (dict(ts="range"), r"cell UserGated: time_scale must lie in \[0, 1\]"),
])
def test_gate_protocol_is_checked_at_first_use(broken, message):
    task = gz.make_task("adding", 5)
    cell = UserGated(task.input_dim, D_H, rngs=nnx.Rngs(0), **broken)
    model = gz.SequenceModel(cell, 1, rngs=nnx.Rngs(1))
    example = task.sample(jax.random.key(0), 2)
    with pytest.raises(gz.models.GateProtocolError, match=message):
        gz.instruments.model_fns(model, task, example=example)
    _register("broken", lambda d_in, d_h, *, rngs: UserGated(d_in, d_h, rngs=rngs, **broken))
    with pytest.raises(gz.models.GateProtocolError, match=message):
        gz.train(tiny(cell="broken"), progress=False)


def test_unknown_input_width_asks_for_an_example():
    model = gz.SequenceModel(UserGated(D_IN, D_H, rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match=r"in_features attribute or pass example"):
        gz.instruments.model_fns(model, lambda m, x, y: jnp.mean((m(x) - y) ** 2))


@pytest.mark.slow
def test_self_check_from_make_instruments_config_and_cli(tmp_path):
    task = gz.make_task("adding", 5)
    model = build_model(tiny(cell="vector"), task, seed=0)
    fns, _ = gz.instruments.model_fns(model, task)
    (inst,) = gz.make_instruments([], fns, self_check=True)
    assert inst.name == "expansion"
    result = gz.train(tiny(cell="vector", self_check=True), progress=False)
    line = [ln for ln in result.history if ln["split"] == "train"][-1]
    self_check = gz.metric_name("expansion", None, "self_check")
    assert line[self_check] < 1e-5
    out = tmp_path / "run"
    assert cli_main(["train", "--cell", "vector", "--task", "adding", "--seq-len", "5",
                     "--hidden", "4", "--batch", "4", "--steps", "1", "--steps-per-call", "1",
                     "--devices", "1", "--self-check", "--quiet", "--out", str(out)]) == 0
    lines = [json.loads(t) for t in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(self_check in ln for ln in lines)
