import time; t0=time.time()
import jax, jax.numpy as jnp, optax
from flax import nnx
import gatezoo as gz

class MyGatedCell(nnx.Module):
    def __init__(self, d_in, d_h, *, rngs):
        init = nnx.initializers.normal(0.3)
        self.in_features, self.hidden_features = d_in, d_h
        self.W = nnx.Param(init(rngs.params(), (d_h, d_h)))
        self.U = nnx.Param(init(rngs.params(), (d_in, d_h)))
        self.W_g = nnx.Param(init(rngs.params(), (d_h, d_h)))
        self.U_g = nnx.Param(init(rngs.params(), (d_in, d_h)))

    num_feature_axes = 1

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (self.hidden_features,))

    def __call__(self, h, x):
        return self.split_call(h, x, h)

    def split_call(self, h, x, gate_h):
        alpha = self.time_scale(gate_h, x)
        h_new = (1 - alpha) * h + alpha * jnp.tanh(h @ self.W + x @ self.U)
        return h_new, h_new

    def time_scale(self, h, x):
        return jax.nn.sigmoid(h @ self.W_g + x @ self.U_g)

print(gz.models.is_gated(MyGatedCell(2, 8, rngs=nnx.Rngs(0))))

class Model(nnx.Module):
    def __init__(self, d_in, d_h, *, rngs):
        self.rnn = gz.Recurrent(MyGatedCell(d_in, d_h, rngs=rngs))
        self.head = nnx.Linear(d_h, 1, rngs=rngs)
    def __call__(self, xs):
        return self.head(self.rnn(xs)[:, -1])

def loss_fn(model, xs, ys):
    return jnp.mean((model(xs) - ys) ** 2)

task = gz.make_task("adding", 20)

model = Model(2, 16, rngs=nnx.Rngs(0))
optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
att = gz.attach(model, loss_fn, ["gates", "expansion", "optimizer", "effective_lr"])
params = nnx.state(model, nnx.Param)
opt_state, inst_state = optimizer.init(params), att.init(params)

@jax.jit
def train_step(params, opt_state, inst_state, step, xs, ys):
    out = att.update(params, inst_state, xs, ys, step=step, optimizer=optimizer, opt_state=opt_state)
    return optax.apply_updates(params, out.updates), out.opt_state, out.state, out

def batch(key, b=32, T=20):
    k1, k2 = jax.random.split(key)
    values = jax.random.uniform(k1, (b, T))
    pos = jax.random.randint(k2, (b, 2), 0, T // 2) + jnp.array([0, T // 2])
    marks = jax.nn.one_hot(pos, T).sum(1)
    return jnp.stack([values, marks], -1), (values * marks).sum(1, keepdims=True)

key = jax.random.key(1)
for step in range(301):
    key, k = jax.random.split(key)
    xs, ys = batch(k)
    params, opt_state, inst_state, out = train_step(params, opt_state, inst_state, step, xs, ys)
    if step % 100 == 0:
        m = out.metrics
        print(step, float(out.loss), sorted(m)[:5] if step==0 else "", float(m["expansion/g1_over_g0"]), float(m["effective_lr/base"]))
print(sorted(out.metrics))
first = att.first_order(params, xs, ys)
print(type(first), {k: type(v) for k, v in first.items()})
fo = first[list(first)[0]]
print(fo._fields if hasattr(fo,'_fields') else fo)
print(time.time()-t0)
m = out.metrics
print({k: float(v) for k, v in m.items() if k.startswith(("optimizer/found", "effective_lr", "optimizer/lr"))})
print(fo.g0.keys() if hasattr(fo.g0,'keys') else type(fo.g0))
print(jax.tree.map(lambda a: a.shape, fo.g1))
