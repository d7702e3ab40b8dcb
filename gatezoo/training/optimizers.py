"""Optimizers and learning-rate schedules by name, with readable state.

Every optimizer given by name or as a factory ``learning_rate -> GradientTransformation`` is
built with :func:`optax.inject_hyperparams`, so its state holds ``learning_rate``, the rate
applied at the last update (a schedule is evaluated at the update's step count), beside the
momentum trace or Adam's moments, which the instruments read by name
(:mod:`gatezoo.instruments.optimizer`). Any other ``optax.GradientTransformation`` is used as it
is. :func:`register_optimizer` adds names for the command line.

Optimizers (``g`` the gradient, ``eta_t`` the rate in force):

* ``sgd``:       ``theta -= eta_t g``
* ``momentum``:  heavy ball, ``m = beta m + g``, ``theta -= eta_t m``
* ``nesterov``:  ``m = beta m + g``, ``theta -= eta_t (g + beta m)``
* ``adam``:      ``theta -= eta_t mu_hat / (sqrt(nu_hat) + eps)``
* ``adamw``:     Adam plus decoupled weight decay ``theta -= eta_t lambda theta``
* ``rmsprop``:   ``nu = rho nu + (1 - rho) g^2``, ``theta -= eta_t g / sqrt(nu + eps)``

Schedules of ``eta_t`` over ``steps`` updates (``eta`` the peak rate):

* ``constant``:      ``eta``
* ``cosine``:        ``eta (1 + cos(pi t / steps)) / 2``
* ``warmup-cosine``: linear from 0 to ``eta`` over ``warmup`` steps, then cosine to 0
* ``exponential``:   ``eta * decay_rate ** (t / steps)``
* ``step``:          ``eta * decay_rate ** floor(t / step_size)`` (``step_size = steps // 3``)

With ``clip`` the gradient is first rescaled to global norm at most ``clip``.

Narrow parameters (bfloat16, float16): every optimizer :func:`make_optimizer` returns runs on a
float32 *master copy* of them (:func:`float32_master`), so its hyperparameters, statistics,
counts and rate are float32 while the model computes in its own dtype. Float32 and float64
parameters are optimized as before, bit for bit, with the same state layout.

Example:
  >>> import jax.numpy as jnp
  >>> from gatezoo.training.optimizers import make_optimizer
  >>> from gatezoo.instruments.optimizer import learning_rate_in_force
  >>> opt = make_optimizer("momentum", 0.1, schedule="cosine", steps=100)
  >>> state = opt.init({"w": jnp.ones(3)})
  >>> _, state = opt.update({"w": jnp.ones(3)}, state, {"w": jnp.ones(3)})
  >>> round(float(learning_rate_in_force(state)), 6)  # cosine at t = 0
  0.1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gatezoo.models.init import is_narrow, widened
from gatezoo.registry_entry import Entry, add

__all__ = [
    "OptimizerEntry",
    "OPTIMIZERS",
    "SCHEDULES",
    "optimizer_names",
    "schedule_names",
    "register_optimizer",
    "make_schedule",
    "make_optimizer",
    "Float32MasterState",
    "float32_master",
]


@dataclasses.dataclass(frozen=True)
class OptimizerEntry(Entry):
    """A registered optimizer: ``factory(learning_rate, **hyperparams) -> GradientTransformation``.

    ``hyperparams`` names the knobs :func:`make_optimizer` passes besides the rate (and that
    ``optax.inject_hyperparams`` then keeps readable in the state); a user's entry has none: its
    ``factory`` wraps the user's function of the learning rate alone (kept as
    ``factory.factory``).
    """

    hyperparams: tuple[str, ...] = ()

    @property
    def build(self) -> Callable[..., optax.GradientTransformation]:
        """The factory under its former name."""
        return self.factory


def _sgd(learning_rate, clip=None):
    return _clipped(clip, optax.sgd(learning_rate))


def _momentum(learning_rate, momentum, clip=None):
    return _clipped(clip, optax.sgd(learning_rate, momentum=momentum))


def _nesterov(learning_rate, momentum, clip=None):
    return _clipped(clip, optax.sgd(learning_rate, momentum=momentum, nesterov=True))


def _adam(learning_rate, b1, b2, eps, clip=None):
    return _clipped(clip, optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def _adamw(learning_rate, b1, b2, eps, weight_decay, clip=None):
    return _clipped(
        clip, optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    )


def _rmsprop(learning_rate, decay, eps, clip=None):
    return _clipped(clip, optax.rmsprop(learning_rate, decay=decay, eps=eps))


def _clipped(clip, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    # Clipping sits inside the injected factory so the optimizer state stays one
    # InjectHyperparamsState (and the clip norm is a readable hyperparameter too).
    if clip is None:
        return inner
    return optax.chain(optax.clip_by_global_norm(clip), inner)


class Float32MasterState(NamedTuple):
    """The state of :func:`float32_master` for a model with narrow parameters.

    Attributes:
      master: the parameters in float32 (the wider leaves as they are): what the optimizer
        updates; the model's parameters are this copy rounded to their dtype.
      inner: the wrapped optimizer's state, built on ``master`` (so float32 throughout).
      last_step: the optimizer's own float32 update of ``master`` at the last step (zeros
        before the first); the change of the rounded parameters is this plus rounding noise
        of up to an ulp, so the ``optimizer`` instrument measures the effective step on it.
    """

    master: Any
    inner: Any
    last_step: Any


def float32_master(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner`` run on a float32 master copy of narrow (bfloat16, float16) parameters.

    Why a master copy rather than only float32 statistics: in bfloat16 (8 mantissa bits) the
    hyperparameters themselves round (``b2 = 0.999`` becomes ``1.0``, so Adam's bias correction
    is ``0/0`` at the first step), and an update smaller than half a unit in the last place of
    its parameter (``2^-9 |theta|``; a plain SGD step usually is) is lost when added in
    bfloat16, so the parameters stall. Here the optimizer sees float32 gradients and float32
    parameters: ``optax.inject_hyperparams`` takes its dtype from the parameters it is given,
    so rates, schedules, ``b1``/``b2``/``eps``, Adam's ``mu``/``nu`` and the momentum trace are
    all float32 (``mu_dtype`` alone would leave ``nu`` and the hyperparameters narrow), and the
    copy accumulates the small updates. The update it returns, float32, moves each narrow
    parameter exactly onto its master value rounded to the parameter's dtype
    (``optax.apply_updates`` adds in float32 and rounds), so the model stays one rounding away
    from the float32 trajectory instead of drifting by a rounding per step. The cost is two
    float32 copies of the parameters in the optimizer state (saved in checkpoints with it):
    the master and its last update (:class:`Float32MasterState`).

    Parameters of float32 or wider leave ``inner`` untouched: its own state (no copy) and its
    own update, bit for bit. The choice is made by ``init`` from the parameters, so one
    optimizer serves runs of every dtype. ``update`` needs ``params`` for narrow parameters.
    """

    def init(params: Any) -> Any:
        if not any(is_narrow(jnp.result_type(leaf)) for leaf in jax.tree_util.tree_leaves(params)):
            return inner.init(params)
        master = widened(params)
        return Float32MasterState(master, inner.init(master),
                                  jax.tree_util.tree_map(jnp.zeros_like, master))

    def update(updates: Any, state: Any, params: Any = None, **extra_args: Any):
        apply = optax.with_extra_args_support(inner).update
        if not isinstance(state, Float32MasterState):
            return apply(updates, state, params, **extra_args)
        if params is None:
            raise ValueError("an optimizer of narrow (bfloat16) parameters needs params in "
                             "update(grads, state, params): they are rounded from its copy")
        steps, inner_state = apply(widened(updates), state.inner, state.master, **extra_args)
        master = optax.apply_updates(state.master, steps)

        def applied(step: Any, new: Any, old: Any) -> Any:
            if not is_narrow(old.dtype):
                return step
            # exact in float32 (both terms are narrow numbers): old + applied == round(new)
            return new.astype(old.dtype).astype(jnp.float32) - old.astype(jnp.float32)

        moves = jax.tree_util.tree_map(applied, steps, master, params)
        return moves, Float32MasterState(master, inner_state, steps)

    return optax.GradientTransformationExtraArgs(init, update)


OPTIMIZERS: dict[str, OptimizerEntry] = {}


def register_optimizer(
    name: str,
    factory: Callable[..., optax.GradientTransformation],
    description: str = "",
    *,
    hyperparams: Sequence[str] | None = None,
    replace: bool = False,
) -> OptimizerEntry:
    """Registers ``factory(learning_rate) -> GradientTransformation`` under ``name`` (for the CLI's
    ``--optimizer`` and ``gatezoo compare --optimizers``) and returns its entry.

    With ``hyperparams`` (a tuple of knob names, possibly empty), ``factory`` is instead called
    as ``factory(learning_rate, *knobs, clip=None)`` and applies ``clip`` itself, like the
    built-in optimizers.

    Example:
      >>> import optax
      >>> def lion_clipped(lr):
      ...     return optax.chain(optax.clip_by_global_norm(1.0), optax.lion(lr))
      >>> entry = register_optimizer("doc-lion", lion_clipped, "Lion after clipping")
      >>> entry.name, entry.description
      ('doc-lion', 'Lion after clipping')
      >>> _ = OPTIMIZERS.pop("doc-lion")  # the example leaves the registry as it was

    Raises:
      ValueError: a name already registered (unless ``replace``) or an empty one.
      TypeError: a factory that is not callable, or an already built transformation.

    References:
      None: registry plumbing, with no rule of its own; the registered factory's optax
      transformation is the rule (:func:`make_optimizer` cites the built-in ones).
    """
    if not callable(factory) or isinstance(factory, optax.GradientTransformation):
        raise TypeError(
            f"optimizer {name!r}: register a factory learning_rate -> GradientTransformation, "
            f"got {type(factory).__name__}"
        )
    if hyperparams is None:
        entry = OptimizerEntry(name, _rate_only(factory), description or f"user optimizer {name}")
    else:
        entry = OptimizerEntry(name, factory, description or f"optimizer {name}",
                               tuple(hyperparams))
    return add(OPTIMIZERS, entry, kind="optimizer", replace=replace)


def _rate_only(factory: Callable[..., Any]) -> Callable[..., optax.GradientTransformation]:
    # inject_hyperparams calls the factory with keyword ``learning_rate``; a user's factory may
    # name its one argument anything (``lambda lr: ...``).
    def build(learning_rate, clip=None):
        transform = factory(learning_rate)
        if not isinstance(transform, optax.GradientTransformation):
            raise TypeError(
                f"the optimizer factory {getattr(factory, '__name__', factory)!r} returned "
                f"{type(transform).__name__}, not an optax.GradientTransformation"
            )
        return _clipped(clip, transform)

    build.factory = factory  # the user's own function, e.g. for re-importing its module
    return build


for _name, _build, _description, _knobs in (
    ("sgd", _sgd, "plain gradient descent theta -= eta g", ()),
    ("momentum", _momentum, "heavy-ball momentum m = beta m + g, theta -= eta m", ("momentum",)),
    ("nesterov", _nesterov, "Nesterov momentum theta -= eta (g + beta m)", ("momentum",)),
    ("adam", _adam, "Adam (bias-corrected first and second moments)", ("b1", "b2", "eps")),
    ("adamw", _adamw, "Adam with decoupled weight decay", ("b1", "b2", "eps", "weight_decay")),
    ("rmsprop", _rmsprop, "RMSProp nu = rho nu + (1 - rho) g^2, theta -= eta g / sqrt(nu)",
     ("decay", "eps")),
):
    register_optimizer(_name, _build, _description, hyperparams=_knobs)


SCHEDULES: dict[str, str] = {
    "constant": "the peak rate at every step",
    "cosine": "cosine decay from the peak rate to 0 over the run",
    "warmup-cosine": "linear warmup over `warmup` steps, then cosine decay to 0",
    "exponential": "rate * decay_rate ** (t / steps)",
    "step": "rate * decay_rate ** floor(t / step_size), step_size = steps // 3",
}


def optimizer_names() -> list[str]:
    return sorted(OPTIMIZERS)


def schedule_names() -> list[str]:
    return sorted(SCHEDULES)


def make_schedule(
    name: str,
    learning_rate: float,
    *,
    steps: int = 1000,
    warmup: int = 0,
    decay_rate: float = 0.1,
    step_size: int | None = None,
) -> optax.Schedule:
    """The schedule ``t -> eta_t`` called ``name`` (see the module docstring).

    Raises:
      ValueError: for an unknown name or inconsistent lengths.
    """
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {name!r}; choose one of: {', '.join(schedule_names())}"
        )
    lr = float(learning_rate)
    steps = max(int(steps), 1)
    if name == "warmup-cosine" and not 0 <= int(warmup) < steps:
        raise ValueError(f"warmup must be in [0, steps={steps}), got {warmup}")
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=steps)
    if name == "warmup-cosine":
        if int(warmup) == 0:  # optax needs a positive warmup; no warmup is plain cosine
            return optax.cosine_decay_schedule(lr, decay_steps=steps)
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=int(warmup), decay_steps=steps, end_value=0.0
        )
    if name == "exponential":
        return optax.exponential_decay(lr, transition_steps=steps, decay_rate=decay_rate)
    size = int(step_size) if step_size is not None else max(steps // 3, 1)
    if size < 1:
        raise ValueError(f"step_size must be a positive integer, got {step_size}")
    return optax.exponential_decay(
        lr, transition_steps=size, decay_rate=decay_rate, staircase=True
    )


def _built(tx: optax.GradientTransformation, schedule: str, clip: float | None):
    """A built transformation, used as it is: its rate is its own."""
    if schedule != "constant" or clip is not None:
        raise ValueError(
            "optimizer: a built optax.GradientTransformation keeps its own rate, so "
            "schedule and clip cannot apply; pass a factory learning_rate -> transformation"
        )
    return float32_master(tx)


def make_optimizer(
    name: str | optax.GradientTransformation | Callable[..., optax.GradientTransformation],
    learning_rate: float,
    *,
    schedule: str = "constant",
    steps: int = 1000,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    warmup: int = 0,
    decay_rate: float = 0.1,
    step_size: int | None = None,
    clip: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    rmsprop_decay: float = 0.9,
) -> optax.GradientTransformation:
    r"""The optimizer ``name`` with the rate schedule ``schedule``, wrapped by inject_hyperparams.

    ``sgd`` and ``adam`` step as below, :math:`g_i` the gradient, :math:`\eta_i` the scheduled
    rate and :math:`\hat m_i, \hat v_i` Adam's bias-corrected moments (the module docstring has
    every rule and schedule; docs/theory.md §5 compares each with a gate):

    .. math::
        \theta_{i+1} = \theta_i - \eta_i\, g_i, \qquad
        \theta_{i+1} = \theta_i - \eta_i\, \hat m_i / (\sqrt{\hat v_i} + \epsilon).

    Args:
      name: a registered name (:data:`OPTIMIZERS`: ``sgd``, ``momentum``, ``nesterov``,
        ``adam``, ``adamw``, ``rmsprop`` and those added by :func:`register_optimizer`); a
        factory ``learning_rate -> optax.GradientTransformation`` (any optax member, a chain,
        ``optax.contrib``, your own), wrapped like the named ones, so the rate in force is
        optimizer state; or a built ``optax.GradientTransformation``, used as it is (its rate
        is its own: ``learning_rate``, ``schedule`` and ``clip`` do not apply and are refused
        unless left at their defaults). Either way the result runs narrow (bfloat16)
        parameters on a float32 master copy (:func:`float32_master`).
      learning_rate: the peak rate ``eta`` (> 0).
      schedule: one of :data:`SCHEDULES`; ``steps``, ``warmup``, ``decay_rate`` and
        ``step_size`` shape it.
      momentum: ``beta`` of ``momentum``/``nesterov``.
      weight_decay: ``lambda`` of ``adamw``.
      clip: if given, clip the gradient to this global norm first.
      b1, b2, eps: Adam's; ``rmsprop_decay`` is RMSProp's ``rho``.

    Returns:
      An ``optax.GradientTransformation``; for names and factories its state is an
      inject-hyperparams state whose ``learning_rate`` is the rate in force (for narrow
      parameters inside a :class:`Float32MasterState`).

    Raises:
      ValueError: for an unknown optimizer or schedule name or a non-positive rate.

    Example:
      >>> import jax.numpy as jnp
      >>> opt, params = make_optimizer("adam", 1e-3), {"w": jnp.ones(3)}
      >>> updates, state = opt.update({"w": jnp.full(3, 2.0)}, opt.init(params), params)
      >>> [round(float(u), 6) for u in updates["w"]]  # Adam's first step: -eta sign(g)
      [-0.001, -0.001, -0.001]

    References:
      Kingma and Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`__, ICLR 2015.

      Loshchilov and Hutter, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`__, ICLR 2019 (``adamw``).
    """
    if isinstance(name, optax.GradientTransformation):
        return _built(name, schedule, clip)
    if callable(name):
        entry = OptimizerEntry("user factory", _rate_only(name), "user factory")
    else:
        entry = OPTIMIZERS.get(name)
    if entry is None:
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of: {', '.join(optimizer_names())}, pass "
            "an optax.GradientTransformation or a factory learning_rate -> one, or register "
            "one with gz.register_optimizer"
        )
    if not float(learning_rate) > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if clip is not None and not float(clip) > 0:
        raise ValueError(f"clip must be > 0 (or None), got {clip}")
    rate = make_schedule(
        schedule, learning_rate, steps=steps, warmup=warmup, decay_rate=decay_rate,
        step_size=step_size,
    )
    if schedule == "constant":
        # a number, not a constant schedule: it then lives in the state, where learning-rate
        # trials set it per slot (gatezoo.training.trials)
        rate = float(learning_rate)
    knobs = {"momentum": momentum, "b1": b1, "b2": b2, "eps": eps,
             "weight_decay": weight_decay, "decay": rmsprop_decay}
    kwargs: dict[str, Any] = {k: float(knobs[k]) for k in entry.hyperparams}
    if clip is not None:
        kwargs["clip"] = float(clip)
    return float32_master(optax.inject_hyperparams(entry.build)(learning_rate=rate, **kwargs))
