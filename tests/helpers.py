"""Models a user writes, shared by the test files that measure them (outside the package)."""

import jax
import jax.numpy as jnp
from flax import nnx


class MGU(nnx.Module):
    """Minimal gated unit: ``f = sigmoid(W_f h + U_f x + b_f)``, ``c = tanh(W (f * h) + U x)``,
    ``h' = (1 - f) h + f c``; the gate reads ``gate_h``, everything else reads ``h``.

    ``scale`` is the standard deviation of the weights, ``bias`` the gate's initial bias."""

    def __init__(self, d_in, d_h, *, rngs, param_dtype=jnp.float32, scale=0.5, bias=0.0):
        init = nnx.initializers.normal(scale)
        self.in_features, self.hidden_features = d_in, d_h
        self.W_f = nnx.Param(init(rngs.params(), (d_h, d_h), param_dtype))
        self.U_f = nnx.Param(init(rngs.params(), (d_in, d_h), param_dtype))
        self.b_f = nnx.Param(bias * jnp.ones((d_h,), param_dtype))
        self.W = nnx.Param(init(rngs.params(), (d_h, d_h), param_dtype))
        self.U = nnx.Param(init(rngs.params(), (d_in, d_h), param_dtype))

    num_feature_axes = 1

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (self.hidden_features,), self.W[...].dtype)

    def __call__(self, h, x):
        return self.split_call(h, x, h)

    def split_call(self, h, x, gate_h):
        f = self.time_scale(gate_h, x)
        c = jnp.tanh((f * h) @ self.W[...] + x @ self.U[...])
        new = (1 - f) * h + f * c
        return new, new

    def time_scale(self, h, x):
        return jax.nn.sigmoid(h @ self.W_f[...] + x @ self.U_f[...] + self.b_f[...])
