r"""First-order gate correction of the gradient: ``G0``, ``G1`` and ``G(1)`` at every step.

docs/theory.md §3.3: keep the forward trajectory fixed and deform only the backward transport,
``J_j(eps) = A_j + eps B_j``. With the adjoint recursion
:math:`\lambda_k(\epsilon) = \delta_k + J_{k+1}(\epsilon)^\top \lambda_{k+1}(\epsilon)` and the
immediate parameter Jacobians :math:`\partial^+ h_k/\partial\theta`,

.. math::
    G(\epsilon) = \sum_k (\partial^+ h_k/\partial\theta)^\top \lambda_k(\epsilon), \quad
    G_0 = G(0), \quad G_1 = \tfrac{dG}{d\epsilon}\big|_0, \quad G(1) = \nabla_\theta L.

Instead of differentiating ``jax.grad`` forward-mode (three to four passes), one reverse
``lax.scan`` over the stored states does it. The exact adjoints ``lambda = lambda(1)`` come from
the training pass; the residual ``e = lambda - lambda(0)`` and the first-order adjoint
``lambda1 = d lambda / d eps`` obey

.. math::
    e_{k} = A_{k+1}^\top e_{k+1} + B_{k+1}^\top \lambda_{k+1}, \qquad
    \lambda^1_{k} = A_{k+1}^\top \lambda^1_{k+1} + B_{k+1}^\top (\lambda_{k+1} - e_{k+1}),

with ``e_T = lambda1_T = 0``, so the injections ``delta_t`` never need to be known. One
``jax.vjp`` per step of ``split_step`` gives ``A^T v``, ``B^T v`` and the parameter cotangent for
the three stacked cotangents ``(e, lambda1, lambda)`` at once. Then
``G0 = G(1) - sum_k (d+h_k/dtheta)^T e_k`` and ``G1 = sum_k (d+h_k/dtheta)^T lambda1_k``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatezoo.instruments import steps
from gatezoo.instruments.protocol import LayerFns, StepContext
from gatezoo.instruments.views import Measure, StepViews

__all__ = ["FirstOrder", "first_order_gradients", "param_group_names", "expansion"]


class FirstOrder(NamedTuple):
    """The gradient terms of :func:`first_order_gradients`, each shaped like the params.

    Attributes:
      g0: the leading term ``G0`` (gates frozen in the state path).
      g1: the first-order gate correction ``G1``.
      exact_cell: ``sum_k (d+h_k/dtheta)^T lambda_k``, the cell part of ``G(1)`` rebuilt from the
        adjoints (zero outside the cell), a consistency check against ``grads``; ``None``
        unless asked for.
    """

    g0: Any
    g1: Any
    exact_cell: Any


def first_order_gradients(
    fns: LayerFns,
    params: Any,
    xs: jax.Array,
    carries: Any,
    adjoints: Any,
    grads: Any,
    *,
    self_check: bool = False,
    carry0: Any = None,
    ys: Any = None,
) -> FirstOrder:
    """``(G0, G1[, G(1) cell part])`` shaped like ``params`` (see module docstring).

    Two phases. (1) A reverse ``lax.scan`` carries only the state cotangents: per step one
    forward linearisation of ``split_step`` and ``A^T`` applied to ``(e, lambda1)``, ``B^T`` to
    ``(lambda, lambda - e)``, with ``params`` held constant (no parameter cotangents inside the
    loop). (2) The parameter cotangents of all ``T * batch`` steps at once: one ``jax.vjp`` of the
    step applied to every stored ``(h_{t-1}, x_t)`` pair as one big batch, for the stacked
    cotangents ``(e, lambda1)`` (and ``lambda`` with ``self_check``): large matrix products
    instead of ``T`` small ones. (Precomputing the linearisation of all steps outside the loop
    and scanning over the stored VJP residuals is slower on CPU.) With
    ``fns.first_order_streams`` (gatezoo's gated cells) both phases use the cell's closed-form
    recursion and one batched evaluation of its activations instead
    (:mod:`gatezoo.instruments.first_order_cells`); the numbers are the same.

    Args:
      fns: the model functions (the cell must follow the gate protocol for a non-zero ``G1``;
        with ``fns.gates_read_state`` False, ``B = 0`` and the result is ``(G(1), 0)`` at once,
        ``adjoints`` unread, unless ``self_check``).
      params: full model parameters; ``grads`` their exact gradient ``G(1)``.
      xs: inputs ``(batch, T, in)``; ``carries``/``adjoints``: leaves ``(T, batch, ...)``, the
        forward states and ``dL/dh_t`` of the same pass as ``grads``.
      self_check: also rebuild the cell part of ``G(1)`` from the adjoints (``exact_cell``;
        otherwise ``None``), one more parameter cotangent.
      carry0: the layer's initial carry ``h_0`` (``(batch, ...)``; ``None``: zero). When it
        depends on the parameters (``fns.initial``: a learned carry, or one computed by other
        layers) the residual and first-order adjoint of ``h_0``,
        ``e_0 = A_1^T e_1 + B_1^T lambda_1`` and ``lambda1_0 = A_1^T lambda1_1 +
        B_1^T (lambda_1 - e_1)``, are pulled back through it.

    Example (through :func:`gatezoo.attach`, which supplies ``carries``, ``adjoints`` and
    ``grads`` from one backward pass; ``""`` names the one layer of a ``SequenceModel``):
      >>> import jax
      >>> from flax import nnx
      >>> import gatezoo as gz
      >>> task = gz.make_task("adding", seq_len=8)
      >>> cell = gz.VectorGate(task.input_dim, 4, rngs=nnx.Rngs(0))
      >>> model = gz.SequenceModel(cell, task.output_dim, rngs=nnx.Rngs(1))
      >>> att = gz.attach(model, task, ["expansion"])
      >>> _, params = gz.instruments.model_fns(model, task)
      >>> fo = att.first_order(params, *task.sample(jax.random.key(0), 4))[""]
      >>> fo.g0["cell"]["W"].shape == fo.g1["cell"]["W"].shape == (4, 4)
      True
    """
    tm = jax.tree_util.tree_map
    if not fns.gates_read_state and not self_check:
        # B = 0 within the layer (no gate reads the state): e = lambda1 = 0 in the recursion,
        # so G0 = G(1) and G1 = 0 exactly, without reading the adjoints
        return FirstOrder(grads, tm(jnp.zeros_like, grads), None)
    if ys is not None:
        fns = _with_targets(fns, ys)
    xs_t = steps.time_major(xs if fns.inputs is None else fns.inputs(params, xs))
    prev = steps.previous_states(carries, carry0)
    if fns.first_order_streams is not None:
        p_t, first = _closed_form(fns, params, xs, xs_t, prev, adjoints, self_check)
    else:
        p_t, first = _generic(fns, params, xs, xs_t, prev, adjoints, self_check)
    if fns.initial is not None:
        p_t = tm(jnp.add, p_t, _through_initial(fns, params, xs, xs_t, prev, adjoints, first,
                                                self_check))
    pick = lambda tree, i: tm(lambda z: z[i], tree)  # noqa: E731
    g0 = tm(jnp.subtract, grads, pick(p_t, 0))
    return FirstOrder(g0, pick(p_t, 1), pick(p_t, 2) if self_check else None)


def _with_targets(fns: LayerFns, ys: Any) -> LayerFns:
    bind = lambda f: None if f is None else (lambda p, x: f(p, x, ys))  # noqa: E731
    return fns._replace(inputs=bind(fns.inputs), initial=bind(fns.initial))


def _stack(*trees: Any) -> Any:
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


def _closed_form(fns: LayerFns, params, xs, xs_t, prev, adjoints, self_check: bool) -> Any:
    """Parameter cotangents of ``(e, lambda1[, lambda])`` from the cell's closed-form streams
    (:attr:`LayerFns.first_order_streams`): the cell's own cotangents are placed in the full
    parameter tree by the transpose of ``cell_params``; a layer fed by other layers adds the
    cotangent of its inputs pulled back through ``fns.inputs``."""
    e_all, lam1_all, immediate = fns.first_order_streams(
        fns.cell_params(params), xs_t, prev, adjoints
    )
    first = _head(e_all), _head(lam1_all)
    # one cotangent at a time: two-dimensional products, faster on CPU than a vmapped batch
    d_cell, d_xs = _stack(*[immediate(v) for v in [e_all, lam1_all] + ([adjoints] * self_check)])
    _, to_params = jax.vjp(fns.cell_params, params)
    p_t = jax.vmap(lambda c: to_params(c)[0])(d_cell)
    if fns.inputs is not None:
        _, through_inputs = jax.vjp(lambda p: steps.time_major(fns.inputs(p, xs)), params)
        d_in = jax.vmap(lambda c: through_inputs(c)[0])(d_xs)
        p_t = jax.tree_util.tree_map(jnp.add, p_t, d_in)
    return p_t, first


def _head(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a[0], tree)


def _through_initial(fns: LayerFns, params, xs, xs_t, prev, adjoints, first, self_check: bool):
    """Parameter cotangents of ``(e_0, lambda1_0[, lambda_0])``, the streams at the initial
    carry, pulled back through ``fns.initial`` (zero when ``h_0`` does not depend on the
    parameters)."""
    tm = jax.tree_util.tree_map
    e1, l1 = first
    lam = _head(adjoints)
    cp = fns.cell_params(params)
    h0, x0 = _head(prev), xs_t[0]
    a_t = jax.vmap(steps.transpose_a(fns, cp, h0, x0))(_stack(e1, l1))
    b_t = jax.vmap(steps.transpose_b(fns, cp, h0, x0))(_stack(lam, tm(jnp.subtract, lam, e1)))
    streams = tm(jnp.add, a_t, b_t)  # (e_0, lambda1_0)
    if self_check:  # lambda_0 = J_1^T lambda_1 = A_1^T lambda_1 + B_1^T lambda_1
        lam0 = tm(jnp.add, steps.transpose_a(fns, cp, h0, x0)(lam), tm(lambda z: z[0], b_t))
        streams = tm(lambda s2, z: jnp.concatenate([s2, z[None]]), streams, lam0)
    _, pull = jax.vjp(lambda p: fns.initial(p, xs), params)
    return jax.vmap(lambda c: pull(c)[0])(streams)


def _generic(fns: LayerFns, params, xs, xs_t, prev, adjoints, self_check: bool) -> Any:
    """Parameter cotangents of ``(e, lambda1[, lambda])`` through one ``jax.vjp`` of the step per
    time step (the streams) and one over all steps at once (the parameter cotangents)."""
    tm = jax.tree_util.tree_map
    cp = fns.cell_params(params)
    pick = lambda tree, i: tm(lambda z: z[i], tree)  # noqa: E731

    def body(carry, inp):
        e, lam1 = carry
        x, h, lam = inp
        a_t = jax.vmap(steps.transpose_a(fns, cp, h, x))(_stack(e, lam1))
        b_t = jax.vmap(steps.transpose_b(fns, cp, h, x))(_stack(lam, tm(jnp.subtract, lam, e)))
        new = tm(jnp.add, a_t, b_t)
        return (pick(new, 0), pick(new, 1)), (e, lam1)

    zero = tm(lambda c: jnp.zeros_like(c[0]), adjoints)
    _, (e_all, lam1_all) = jax.lax.scan(body, (zero, zero), (xs_t, prev, adjoints), reverse=True)

    merge = lambda tree: tm(lambda a: a.reshape((-1,) + a.shape[2:]), tree)  # noqa: E731
    h_all = merge(prev)

    def immediate(p):
        # d+h_t/dtheta: the states before each step held fixed; a layer fed by other layers
        # sees theta through its inputs too, so G0 and G1 are exact for every parameter
        seq = xs_t if fns.inputs is None else steps.time_major(fns.inputs(p, xs))
        return steps.plain_step(fns, fns.cell_params(p), h_all, seq.reshape((-1,) + seq.shape[2:]))

    _, vjp_p = jax.vjp(immediate, params)
    cots = [merge(e_all), merge(lam1_all)] + ([merge(adjoints)] if self_check else [])
    (p_t,) = jax.vmap(vjp_p)(_stack(*cots))
    return p_t, (_head(e_all), _head(lam1_all))


def _key_name(key: Any) -> str | None:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            name = str(getattr(key, attr))
            return None if name in ("value", "raw_value") else name
    return str(key)


def param_group_names(params: Any) -> list[str]:
    """Dotted names of the leaves of ``params`` (``"cell.W_g"``), in ``tree_leaves`` order."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return [".".join(n for n in map(_key_name, path) if n) or "params" for path, _ in paths]


def _cell_leaf_mask(fns: LayerFns, params: Any) -> list[bool]:
    cell_ids = {id(leaf) for leaf in jax.tree_util.tree_leaves(fns.cell_params(params))}
    return [id(leaf) in cell_ids for leaf in jax.tree_util.tree_leaves(params)]


def _sq(tree_leaves: list[jax.Array]) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in tree_leaves)


def _dot(a: list[jax.Array], b: list[jax.Array]) -> jax.Array:
    return sum(jnp.sum(x * y) for x, y in zip(a, b, strict=False))


def expansion_metrics(
    fns: LayerFns, params: Any, g: Any, g0: Any, g1: Any
) -> dict[str, jax.Array]:
    """Per cell parameter group and overall: ``||G1||/||G0||``, ``||G(1)-G0-G1||/||G(1)||`` and
    ``cos(G(1), G0)``."""
    names = param_group_names(params)
    mask = _cell_leaf_mask(fns, params)
    lg, l0, l1 = (jax.tree_util.tree_leaves(t) for t in (g, g0, g1))
    out: dict[str, jax.Array] = {}

    def add(suffix, a, a0, a1):
        rem = [x - y - z for x, y, z in zip(a, a0, a1, strict=False)]
        n, n0, n1 = jnp.sqrt(_sq(a)), jnp.sqrt(_sq(a0)), jnp.sqrt(_sq(a1))
        out[f"g1_over_g0{suffix}"] = n1 / n0
        out[f"remainder{suffix}"] = jnp.sqrt(_sq(rem)) / n
        out[f"cos{suffix}"] = _dot(a, a0) / (n * n0)

    sel = [i for i, m in enumerate(mask) if m] or list(range(len(lg)))
    add("", [lg[i] for i in sel], [l0[i] for i in sel], [l1[i] for i in sel])
    for i in sel:
        add(f"@{names[i]}", [lg[i]], [l0[i]], [l1[i]])
    return out


def _self_check(fns, params, grads, exact_cell) -> jax.Array:
    mask = _cell_leaf_mask(fns, params)
    lg = [x for x, m in zip(jax.tree_util.tree_leaves(grads), mask, strict=False) if m]
    le = [x for x, m in zip(jax.tree_util.tree_leaves(exact_cell), mask, strict=False) if m]
    return jnp.sqrt(_sq([a - b for a, b in zip(lg, le, strict=False)]) / _sq(lg))


def expansion(fns: LayerFns, *, every: int | None = None, self_check: bool = False) -> Measure:
    """The ``expansion`` instrument: G0, G1, G(1) ratios per parameter group every step.

    Metrics: ``expansion/{g1_over_g0,remainder,cos}`` over the cell's parameters and
    ``...@<group>`` per cell parameter (see :func:`expansion_metrics`); with ``self_check``
    also ``expansion/self_check``:
    ``||G(1)_cell - sum_k (d+h_k/dtheta)^T lambda_k|| / ||G(1)_cell||``, rounding-level when the
    adjoints and the step function agree (one more parameter cotangent).

    For a layer whose gates read no state (``fns.gates_read_state`` False: minGRU, minLSTM,
    RG-LRU, S6) :func:`first_order_gradients` returns ``G0 = G(1)``, ``G1 = 0`` from the
    gradient alone, so the instrument needs no adjoints (unless ``self_check`` asks for the
    full recursion).
    """

    def measure(ctx: StepContext, state, views: StepViews):
        fo = first_order_gradients(
            ctx.fns, ctx.params, ctx.xs, ctx.carries, ctx.adjoints, ctx.grads,
            self_check=self_check, carry0=ctx.carry0, ys=ctx.ys,
        )
        out = expansion_metrics(ctx.fns, ctx.params, ctx.grads, fo.g0, fo.g1)
        if self_check:
            out["self_check"] = _self_check(
                ctx.fns, ctx.params, ctx.grads, fo.exact_cell
            )
        return out, state

    return Measure(
        "expansion", lambda p: (), measure, every=every,
        # the registry declares the rest of the record; the adjoints depend on this cell
        needs_adjoints=fns.gates_read_state or self_check,
    )
