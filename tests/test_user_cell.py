"""The README's user-defined gated cell, executed from the README itself, through the hook."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gatezoo as gz

README = Path(__file__).resolve().parents[1] / "README.md"
D_IN, D_H = 3, 5


def readme_cell_class():
    """Runs the first python block of the README section on opting a cell in; returns the class."""
    text = README.read_text()
    start = text.index("opting a cell of your own in")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None, "the README section has no python example"
    namespace: dict = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)  # its own asserts run too
    return namespace["MyGatedCell"]


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def test_readme_cell_split_sums_to_full_jacobian_and_matches_vector_gate(x64):
    MyGatedCell = readme_cell_class()
    cell = MyGatedCell(D_IN, D_H, rngs=nnx.Rngs(0))
    assert gz.models.is_gated(cell)
    fn = gz.models.cell_fn(cell)
    # a vector-gate cell without biases and with U_g = 0, written with gatezoo's classes
    ref = gz.VectorGate(D_IN, D_H, use_bias=False, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
    for name in ("W", "U", "W_g"):
        getattr(ref, name)[...] = getattr(cell, name)[...]
    ref.U_g[...] = jnp.zeros_like(ref.U_g[...])
    for seed in range(2):
        k1, k2 = jax.random.split(jax.random.key(seed))
        h = jax.random.normal(k1, (D_H,), jnp.float64)
        x = jax.random.normal(k2, (D_IN,), jnp.float64)
        A, B = gz.jacobians.autodiff_split(fn.step, fn.params, h, x)
        J = jax.jacrev(lambda v: cell(v, x)[0])(h)
        assert A.dtype == jnp.float64
        assert rel(A + B, J) <= 1e-8
        A_ref, B_ref = gz.jacobians.state_jacobians(ref, h, x)
        assert rel(A, A_ref) <= 1e-12 and rel(B, B_ref) <= 1e-12
        assert float(jnp.linalg.norm(B)) > 1e-3
        np.testing.assert_allclose(cell.time_scale(h, x), ref.time_scale(h, x), rtol=1e-14)


@pytest.mark.slow
def test_readme_cell_runs_in_rnn_and_sequence_model():
    MyGatedCell = readme_cell_class()
    cell = MyGatedCell(D_IN, D_H, rngs=nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(0), (2, 7, D_IN))
    ref = nnx.RNN(cell)(xs)
    model = gz.SequenceModel(cell, 1, readout="all", rngs=nnx.Rngs(1))
    for eps in (None, 0.5):
        ys, _ = model.unroll_states(xs, eps=eps)
        np.testing.assert_allclose(np.swapaxes(ys, 0, 1), ref, rtol=1e-6, atol=1e-7)
    # the deformed unroll at eps = 1 gives the exact gradient (with respect to the initial state)
    def grad_wrt_h0(eps):
        return jax.grad(
            lambda c: jnp.sum(model.unroll_states(xs, eps=eps, carry0=c)[0][-1] ** 2)
        )(0.5 * jnp.ones((2, D_H)))

    np.testing.assert_allclose(grad_wrt_h0(1.0), grad_wrt_h0(None), rtol=1e-5, atol=1e-6)
