"""`gatezoo --import MODULE`: a user's module registers a cell and Optax optimizers gatezoo does
not name, and `gatezoo compare` trains them with the generic optimizer-side metrics."""

import json
import sys
import textwrap

import pytest

import gatezoo as gz
from gatezoo.cli import main

PLUGIN = textwrap.dedent('''
    import jax, jax.numpy as jnp, optax
    from flax import nnx
    import gatezoo as gz

    class PluginGated(nnx.Module):
        def __init__(self, d_in, d_h, *, rngs):
            init = nnx.initializers.normal(0.3)
            self.in_features, self.hidden_features = d_in, d_h
            self.W = nnx.Param(init(rngs.params(), (d_h, d_h)))
            self.U = nnx.Param(init(rngs.params(), (d_in, d_h)))
            self.W_g = nnx.Param(init(rngs.params(), (d_h, d_h)))

        num_feature_axes = 1

        def initialize_carry(self, input_shape, rngs=None):
            return jnp.zeros(input_shape[:-1] + (self.hidden_features,))

        def __call__(self, h, x):
            return self.split_call(h, x, h)

        def split_call(self, h, x, gate_h):
            a = jax.nn.sigmoid(gate_h @ self.W_g)
            new = (1 - a) * h + a * jnp.tanh(h @ self.W + x @ self.U)
            return new, new

        def time_scale(self, h, x):
            return jax.nn.sigmoid(h @ self.W_g)

    gz.register_cell("plugin-gated", PluginGated, "a user's gated cell")
    gz.register_optimizer("plugin-lion", lambda lr: optax.lion(lr))
    gz.register_optimizer("plugin-adafactor", lambda lr: optax.adafactor(lr))
    gz.register_optimizer("plugin-clip-adamw", lambda lr: optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(lr)))
''')

NAMES = ("plugin-lion", "plugin-adafactor", "plugin-clip-adamw")


@pytest.mark.slow
def test_compare_with_imported_cell_and_optimizers(tmp_path, monkeypatch):
    (tmp_path / "gz_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "cmp"
    try:
        rc = main(["--import", "gz_test_plugin", "compare", "--cells", "plugin-gated",
                   "--optimizers", ",".join(NAMES), "--steps", "4", "--seeds", "1",
                   "--hidden", "4", "--seq-len", "6", "--batch-size", "4",
                   "--instruments", "optimizer,gates", "--every", "step=1", "--eval-every", "4",
                   "--out", str(out), "--quiet"])
        assert rc == 0
        for name in NAMES:
            lines = [json.loads(t) for t in
                     (out / f"plugin-gated-{name}" / "metrics.jsonl").read_text().splitlines()]
            train = [ln for ln in lines if ln["split"] == "train"]
            # the user's learning-rate factories are tuned like the built-in optimizers:
            # compare's default 3 trials, each 4 steps, in one run
            assert sorted({ln["trial"] for ln in train}) == [0, 1, 2]
            assert len(train) == 3 * 4
            tuning = json.loads((out / f"plugin-gated-{name}" / "result.json").read_text())
            assert len(tuning["tuning"]["rates"]) == 3
            found_lr, corr, step_mean = (gz.metric_name("optimizer", None, q) for q in
                                         ("found_lr", "step_gate_corr", "step_mean"))
            assert all(ln[found_lr] == 1.0 for ln in train)
            assert all(abs(ln[corr]) <= 1.0 for ln in train)
            assert train[-1][step_mean] > 0
    finally:
        gz.models.CELLS.pop("plugin-gated", None)
        for name in NAMES:
            gz.training.OPTIMIZERS.pop(name, None)
        sys.modules.pop("gz_test_plugin", None)


def test_a_missing_plugin_is_one_line(capsys):
    assert main(["--import", "no_such_gatezoo_plugin", "list"]) == 2
    assert "--import no_such_gatezoo_plugin" in capsys.readouterr().err
