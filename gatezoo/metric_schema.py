r"""The metric schema: how every metric is named, and what every quantity means.

A metric is named by the instrument that measures it, the recurrent layer it measures and the
quantity, as :func:`metric_name` builds it (the only place a name is put together):

* ``"<instrument>/<quantity>"``, e.g. ``"gates/alpha_mean"``, for a model with one recurrent
  layer (a :class:`gatezoo.SequenceModel`);
* ``"<instrument>/<layer path>/<quantity>"``, e.g. ``"gates/layers.1/alpha_mean"``, for a model
  with several;
* the trainer's own metrics, instrument ``"train"`` (every step) and ``"eval"`` (held-out
  evaluations), are the bare quantity, e.g. ``"loss"``: ``metrics.jsonl`` keeps them apart by
  the line's ``split``.

A quantity is a bare name or a pattern naming a family: ``"ratio@{lag}"`` (one metric per lag of
the grid 1, 2, 4, ...), ``"cos@{group}"`` (one per cell parameter, its dotted path). Every quantity
every instrument emits is in :data:`QUANTITIES` with its definition, which the metrics reference
of the docs is generated from. :func:`parse_metric_name` and :func:`quantity_of` read a name back.
An instrument the schema does not know (one you wrote yourself) names its metrics the same way,
unchecked, unless :func:`declare` adds its quantities.

Example:
  >>> from gatezoo.metric_schema import metric_name, parse_metric_name, quantity_of, series_name
  >>> metric_name("gates", None, "alpha_mean")
  'gates/alpha_mean'
  >>> metric_name("sensitivity", "layers.1", "profile@4")
  'sensitivity/layers.1/profile@4'
  >>> parse_metric_name("sensitivity/layers.1/profile@4")
  MetricName(instrument='sensitivity', layer='layers.1', quantity='profile@4')
  >>> quantity_of("lags/ratio@8").name
  'ratio@{lag}'
  >>> metric_name("train", None, "loss"), parse_metric_name("loss", split="eval").instrument
  ('loss', 'eval')
  >>> series_name("lags", None, "ratio")  # the stem of the family ratio@{lag}
  'lags/ratio'
  >>> metric_name("gates", None, "alpha_maen")
  Traceback (most recent call last):
  ...
  ValueError: unknown quantity 'alpha_maen' of instrument 'gates'; closest: 'alpha_mean'
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import NamedTuple

__all__ = [
    "Quantity",
    "MetricName",
    "QUANTITIES",
    "TRAINER",
    "metric_name",
    "series_name",
    "parse_metric_name",
    "quantity_of",
    "quantities",
    "instruments",
    "declare",
]

#: the trainer's namespaces: their metrics carry no prefix, the line's ``split`` tells them apart
TRAINER = ("train", "eval")

# what a pattern's field stands for in a concrete quantity
_FIELDS = {"lag": r"[0-9]+", "group": r"[^/@]+", "metric": r"[^/]+"}


class Quantity(NamedTuple):
    """One declared quantity.

    Attributes:
      instrument: the instrument (or ``"train"``/``"eval"``) that emits it.
      name: the bare quantity, or a pattern with fields ``{lag}`` (an integer lag of the grid
        1, 2, 4, ...), ``{group}`` (a cell parameter's dotted path) or ``{metric}`` (any name).
      definition: what it measures, in a sentence or two (reST, ``:math:`` allowed).
      when: the condition under which it is emitted (empty: always).
    """

    instrument: str
    name: str
    definition: str
    when: str = ""


class MetricName(NamedTuple):
    """A metric name taken apart: ``layer`` is ``None`` for a model with one recurrent layer
    and for the trainer's metrics."""

    instrument: str
    layer: str | None
    quantity: str


def _q(instrument: str, when: str = ""):
    return lambda name, definition: Quantity(instrument, name, definition, when)


_GATED = "gated cells"
_ADAM = "an Adam-like optimizer (a second moment nu in its state)"
_LR = "an injected learning rate (the optimizer given as a factory, as gz.train does)"


def _gates() -> list[Quantity]:
    q = _q("gates")
    over = " over batch, time and neurons (a strided subsample of at most 4096 values)"
    return [
        q("alpha_mean", r"Mean gate :math:`E[\alpha_t]` over batch, time and neurons."),
        q("alpha_min", r"Smallest gate value :math:`\min\alpha_t`."),
        q("alpha_max", r"Largest gate value :math:`\max\alpha_t`."),
        q("alpha_p10", r"10th percentile of :math:`\alpha_t`" + over + "."),
        q("alpha_p50", r"Median of :math:`\alpha_t`" + over + "."),
        q("alpha_p90", r"90th percentile of :math:`\alpha_t`" + over + "."),
        q("tau_mean", r"Mean time constant :math:`E[1/\alpha_t]`, in steps."),
        q("tau_p50", r"Median time constant ``1 / alpha_p50``, in steps."),
        q("tau_p90", r"90th-percentile time constant ``1 / alpha_p10``, in steps."),
        q("neuron_spread", r"Standard deviation across neurons of the per-neuron mean gate "
          "(0 for a scalar gate)."),
        q("time_std", r"Mean over neurons and sequences of the standard deviation of "
          r":math:`\alpha_t` over time: how much the gate moves within a sequence."),
    ]


def _lags() -> list[Quantity]:
    q, g = _q("lags"), _q("transport")

    def fit_of(what: str) -> str:
        return (r"Fitted power :math:`s` of :math:`\log(\|\lambda_T^\top J_T\cdots "
                r"J_{T-\ell+1}\|/\|\lambda_T\|) = c + s\log P_\ell` over the gate trace's "
                r"examples and lags :math:`\ell\ge 1` (1 %/99 % trim), :math:`P_\ell` (over "
                r":math:`\|\lambda_T\|` where it is a norm) " + what)
    return [
        q("adjoint_last", r"Median over the batch of the error signal "
          r":math:`\|\partial L/\partial h_T\|` at the last step."),
        q("ratio@{lag}", r"The error signal's profile at lag :math:`\ell`: the batch-median "
          r":math:`\|\partial L/\partial h_{T-\ell}\|` over its value at lag 0."),
        q("decay_rate", r"OLS slope of the log profile on :math:`\ell`: the log-gain of the "
          "error signal per step of lag."),
        g("frozen_s", fit_of("the gate-frozen transport "
          r":math:`\|\lambda_T^\top A_T\cdots A_{T-\ell+1}\|` (the theory's zeroth-order "
          "prediction: gates held at their values).")),
        g("frozen_r2", r":math:`R^2` of the gate-frozen transport's power fit (``frozen_s``): "
          "how much of the error signal's decay by lag the gates' zeroth order explains."),
        g("frozen@{lag}", r"Batch median of the gate-frozen transport over "
          r":math:`\|\lambda_T\|` at lag :math:`\ell`."),
        g("weighted_s", fit_of("the adjoint-weighted retention "
          r":math:`\|\lambda^{(r)}_T\odot\prod_j(1-\alpha_j)\|` (the diagonal of "
          r":math:`A` the gates set, weighted by the lag-0 error signal).")),
        g("weighted_r2", r":math:`R^2` of the adjoint-weighted retention's power fit."),
        g("weighted@{lag}", r"Batch median of the adjoint-weighted retention over "
          r":math:`\|\lambda_T\|` at lag :math:`\ell`."),
        g("retention_s", fit_of(r"the neuron mean :math:`\frac1{d_h}\sum_i\prod_j"
          r"(1-\alpha^{(i)}_j)` of the retentions (every neuron weighed alike: it drifts "
          "below the transport once training makes the gates heterogeneous).")),
        g("retention_r2", r":math:`R^2` of the neuron-mean retention's power fit."),
        g("retention@{lag}", r"Batch median of the neuron mean of the retentions "
          r":math:`\frac1{d_h}\sum_i\prod_{j>T-\ell}(1-\alpha^{(i)}_j)`."),
        g("candidate_s", fit_of(r"the neuron mean :math:`\frac1{d_h}\sum_i\prod_j"
          r"\alpha^{(i)}_j` of the candidate weights (the S1 code's predictor).")),
        g("candidate_r2", r":math:`R^2` of the neuron-mean candidate weights' power fit."),
        g("candidate@{lag}", r"Batch median of the neuron mean of the candidate weights "
          r":math:`\frac1{d_h}\sum_i\prod_{j>T-\ell}\alpha^{(i)}_j`."),
        g("propagated@{lag}", r"Batch median of the last step's error signal propagated "
          r"back, :math:`\|\lambda_T^\top J_T\cdots J_{T-\ell+1}\|/\|\lambda_T\|`: the "
          "profile the predictors are fitted to (the training error signal ``lags/ratio`` "
          "when the loss has only a last-step term)."),
        g("diagonal_part@{lag}", r"Mean over examples of :math:`\log(\|\lambda^{(r)}_T"
          r"\odot\prod(1-\alpha)\|/\|\lambda_T\|)`: the log-gain the gates' diagonal "
          "retention gives the propagated signal at this lag (nats; negative: decay)."),
        g("mixing_part@{lag}", r"Mean of :math:`\log(\|\lambda_T^\top\prod A\|/"
          r"\|\lambda^{(r)}_T\odot\prod(1-\alpha)\|)`: what the recurrent weights' mixing "
          r"(:math:`A` beyond its gate diagonal) adds, in nats."),
        g("gate_part@{lag}", r"Mean of :math:`\log(\|\lambda_T^\top\prod J\|/"
          r"\|\lambda_T^\top\prod A\|)`: what the gate-induced part :math:`B` adds, in "
          "nats (0 when no gate reads the state)."),
        g("diagonal_share", "Share of the window's total log-gain of the propagated signal "
          "(summed over lags) carried by the diagonal retention; the three shares add to 1, "
          "a negative one sustains the signal against the others' decay."),
        g("diagonal_gain", "Mean over the window's lags of ``diagonal_part@{lag}`` (nats)."),
        g("mixing_gain", "Mean over the window's lags of ``mixing_part@{lag}`` (nats)."),
        g("gate_gain", "Mean over the window's lags of ``gate_part@{lag}`` (nats)."),
        g("mixing_share", "Share of the window's total log-gain carried by recurrent mixing."),
        g("gate_share", r"Share of the window's total log-gain carried by :math:`B`."),
    ]


def _optimizer() -> list[Quantity]:
    q = _q("optimizer")
    a, lr = _q("optimizer", _ADAM), _q("optimizer", _LR)
    step = r"the per-neuron effective step :math:`s_q = -\sum_{i\in q}u_ig_i/\sum_{i\in q}g_i^2`"
    row = r"Adam's per-neuron step :math:`\eta/(\sqrt{\hat\nu}+\epsilon)` (mean over a neuron's "
    return [
        q("grad_norm", r"Global norm :math:`\|g\|_2` of this step's gradient."),
        q("update_norm", r"Global norm :math:`\|\Delta\theta\|_2` of the optimizer's update."),
        q("step_mean", "Mean over neurons of " + step + " over the rows of the cell's kernels "
          r"(:math:`\eta` for SGD)."),
        q("step_cv", "Coefficient of variation (std / mean) across neurons of " + step + "."),
        q("step_anisotropy", "Max / min across neurons of " + step + "."),
        _q("optimizer", _GATED)("step_gate_corr", "Pearson correlation across neurons of " + step
                                 + r" with the neuron's mean gate :math:`E[\alpha_q]`."),
        q("found_lr", "1 if the optimizer state holds the learning rate in force, else 0."),
        q("found_momentum", "1 if it holds a momentum (a heavy-ball trace or Adam's b1), else 0."),
        q("found_nu", "1 if it holds Adam's second moment nu, else 0."),
        q("beta", r"The momentum coefficient :math:`\beta` (heavy-ball momentum or Adam's "
          "b1; 0 without)."),
        q("momentum_factor", r":math:`1/(1-\beta)` for heavy-ball momentum, else 1."),
        lr("lr", "The learning rate applied by this update."),
        lr("step_gain", r"Update size over plain SGD's: "
           r":math:`\|\Delta\theta\|/(\eta\|g\|)`."),
        a("adam_row_mean", row + "incoming weights): mean over neurons."),
        a("adam_row_min", row + "incoming weights): smallest over neurons."),
        a("adam_row_max", row + "incoming weights): largest over neurons."),
        a("adam_row_anisotropy", row + "incoming weights): max / min over neurons."),
    ]


def _analogies() -> list[Quantity]:
    q, e = _q("analogies"), _q("effective_lr")
    mu = r"the effective rate :math:`\mu^{(q)}_\ell = \Lambda^{(q)}\bar\Gamma^{(q)}_\ell`"
    return [
        e("base", r"Mean over neurons of the optimizer's base rate :math:`\Lambda^{(q)}`: "
          "Adam's per-neuron step, else the learning rate in force (over 1 - beta for "
          "heavy-ball momentum)."),
        e("envelope@{lag}", "Sum over neurons of " + mu + r", :math:`\bar\Gamma_\ell` the mean "
          r"retention product :math:`E_{b,t}\prod_{j=t-\ell+1}^{t}(1-\alpha_j)`."),
        e("anisotropy@{lag}", "Max / min over neurons of " + mu + "."),
        q("beta_gate", r"The leak as a momentum along sequence time: :math:`1 - E[\alpha]`."),
        q("beta_optimizer", r"The optimizer's momentum :math:`\beta` (0 without)."),
        q("gate_anisotropy", "Max / min over neurons of the per-neuron mean gate (the vector "
          "gate as a diagonal preconditioner)."),
        _q("analogies", _LR)("lr", "The learning rate in force."),
        _q("analogies", _LR)("gate_step", r"The gate as a schedule: "
                             r":math:`\eta\,E[\alpha]`."),
        _q("analogies", _ADAM)("adam_anisotropy", "Max / min over neurons of Adam's "
                               "per-neuron step."),
        _q("analogies", _ADAM)("precond_corr", "Pearson correlation across neurons of the mean "
                               "gate with Adam's per-neuron step."),
    ]


def _expansion() -> list[Quantity]:
    q = _q("expansion")
    one = " of one cell parameter (its dotted path)"
    g1 = r":math:`\|G_1\|/\|G_0\|`: the first-order gate correction relative to the gradient " \
        "with the gates frozen in the state path"
    rem = r":math:`\|G(1)-G_0-G_1\|/\|G(1)\|`: what the first-order expansion leaves out"
    cos = r":math:`\cos(G(1), G_0)`"
    return [
        q("g1_over_g0", g1 + ", over the cell's parameters."),
        q("remainder", rem + ", over the cell's parameters."),
        q("cos", cos + " over the cell's parameters."),
        q("g1_over_g0@{group}", g1 + one + "."),
        q("remainder@{group}", rem + one + "."),
        q("cos@{group}", cos + one + "."),
        _q("expansion", "self_check (gatezoo train --self-check)")(
            "self_check", r":math:`\|G(1)_{cell} - \sum_k(\partial^+h_k/\partial\theta)^\top"
            r"\lambda_k\|/\|G(1)_{cell}\|`: rounding-level when the cell's call and its "
            "split_call agree."),
    ]


def _jacobians() -> list[Quantity]:
    r, s = _q("ratios"), _q("sensitivity")
    ratio = r":math:`r_j = \|B_j\|_2/\|A_j\|_2` over 16 sampled steps"
    sp = _q("sensitivity", _GATED)
    fit = r"Fitted power :math:`s` of :math:`\log S_{t,k} = c + s\log P_{t,k}` (1 %/99 % trim), " \
        ":math:`P` the neuron mean of "
    rms = r"Root-mean-square log error of the fitted profile :math:`(P(\ell)/P(1))^s` against " \
        "the measured one, over all lags, for "
    return [
        r("median", "Median of " + ratio + "."),
        r("p90", "90th percentile of " + ratio + "."),
        r("max", "Largest of " + ratio + "."),
        r("a_norm", r"Median spectral norm :math:`\|A_j\|_2` of the gate-frozen step Jacobian."),
        r("b_norm", r"Median spectral norm :math:`\|B_j\|_2` of the gate-induced step Jacobian."),
        s("median_lag1", r"Median over the probe batch and end times of the one-step "
          r"sensitivity :math:`S_{t,t-1} = \|J_t\|_2`."),
        s("profile@{lag}", r"Normalised lag profile: median of "
          r":math:`S_{t,t-\ell} = \|J_t\cdots J_{t-\ell+1}\|_2` over its median at lag 1."),
        sp("candidate_s", fit + r":math:`\prod\alpha_j`."),
        sp("candidate_r2", r":math:`R^2` of the candidate-weight power fit."),
        sp("candidate_rms", rms + "the candidate weights."),
        sp("retention_s", fit + r":math:`\prod(1-\alpha_j)`."),
        sp("retention_r2", r":math:`R^2` of the retention power fit."),
        sp("retention_rms", rms + "the retentions."),
    ]


def _probes() -> list[Quantity]:
    a, t = _q("anisotropy"), _q("truncation")
    jac = r" of the Jacobian product :math:`M_{t,t-\ell}`, median over random triples"
    grad = (" of the probe batch's per-sample gradients (rows normalised, columns centred), "
            "over all singular values")
    ai, ce = r"Anisotropy index :math:`\sigma_1/\sigma_{10}`", \
        r"Energy concentration :math:`CE_{10}=\sum_{i\le10}\sigma_i^2/\sum_{i\le16}\sigma_i^2`"
    er = r"Effective rank :math:`\exp(-\sum_ip_i\log p_i)`, :math:`p_i=\sigma_i^2/\sum\sigma^2`,"
    pr = r"Participation ratio :math:`(\sum\sigma^2)^2/\sum\sigma^4`"
    ce_all = r"Energy concentration :math:`\sum_{i\le10}\sigma_i^2/\sum_i\sigma_i^2`"
    f = r":math:`F(\epsilon)=\prod_j(A_j+\epsilon B_j)` over the last steps of a probe sequence"
    return [
        a("jac_ai@{lag}", ai + jac + "."),
        a("jac_ce@{lag}", ce + jac + "."),
        a("jac_erank@{lag}", er + jac + "."),
        a("jac_pr@{lag}", pr + jac + "."),
        a("grad_ai", ai + grad + "."),
        a("grad_ce", ce_all + grad + "."),
        a("grad_erank", er + grad + "."),
        a("grad_pr", pr + grad + "."),
        t("slope", r"OLS slope of :math:`\log E(\epsilon)` on :math:`\log\epsilon` at small "
          r":math:`\epsilon`, :math:`E = \|F(\epsilon)-F(0)-\epsilon L_1\|_F` for " + f
          + "; 2 when the first-order expansion holds."),
        t("rel_err", r"Truncation error at :math:`\epsilon=1` over the product: "
          r":math:`E(1)/\|F(1)\|`."),
        t("rel_err_linear", r":math:`E(1)/\|F(0)+L_1\|`."),
        t("l1_over_f0", r"First-order term over the gates-frozen product: "
          r":math:`\|L_1\|/\|F(0)\|`."),
        t("c2", r"Second-order coefficient :math:`E(\epsilon)/(\epsilon^2\|F(1)\|)` at the "
          r"smallest :math:`\epsilon` of the grid."),
    ]


def _learnability() -> list[Quantity]:
    q = _q("learnability")
    mu = (r":math:`\mu^{(q)}_{t,\ell}=\Lambda^{(q)}_{t-\ell}\Gamma^{(q)}_{t,\ell}` with the "
          r"first-order diagonal :math:`\Gamma=\prod_j\mathrm{leak}_j[1+\sum_j"
          r"\mathrm{rdiag}_j/\mathrm{leak}_j]` over the window :math:`j=t-\ell+1..t`")
    return [
        q("rate", r"Mean over probe steps and neurons of the optimizer's rate "
          r":math:`\Lambda^{(q)}_k` on the recurrent kernels, weighted by the squared "
          "pre-synaptic output (Adam's lr/(sqrt(nu_hat)+eps); else the rate in force; else 1)."),
        q("envelope@{lag}", r"The envelope :math:`f(\ell)=E_{b,t}\sum_q|\mu^{(q)}_{t,\ell}|`, "
          + mu + "."),
        q("envelope_gates@{lag}", r"The gates' share :math:`f_{gates}(\ell)=\mathrm{lr}\,"
          r"E_{b,t}\sum_q|\prod_j\mathrm{leak}^{(q)}_j|`: zeroth order, one uniform rate."),
        q("envelope_ratio@{lag}", r":math:`f(\ell)/f_{gates}(\ell)`: how much the optimizer's "
          "per-weight rate and the first-order gate term change the gates' envelope."),
        q("first_order_ratio@{lag}", r":math:`\sum|\Lambda\Gamma_{first}|/\sum|\Lambda"
          r"\Gamma_{exact}|` at a few end times, :math:`\Gamma_{exact}` the diagonal of the "
          r"exact transport :math:`J_t\cdots J_{t-\ell+1}`: 1 where the follow-up's "
          "first-order diagonal is exact."),
        q("psi_mean@{lag}", r"Mean over the probe sequences of the matched statistic "
          r":math:`\bar\psi(\ell)`, the sequence mean of :math:`\sum_q\mu^{(q)}_{t,\ell}"
          r"\delta^{(q)}_t v^{(q)}_{t-\ell}` averaged over random parameter directions."),
        q("psi_std@{lag}", r"Standard deviation over the probe sequences of "
          r":math:`\bar\psi(\ell)`."),
    ]


def _trainer() -> list[Quantity]:
    t, e = _q("train"), _q("eval")
    return [
        t("loss", "Training loss of this step's batch."),
        t("lr", "The learning rate in force (NaN when the optimizer's state holds none)."),
        t("grad_norm", r"Global norm :math:`\|g\|_2` of this step's gradient."),
        t("steps_per_sec", "Training throughput of the round trip that wrote the line, in "
          "steps per second of wall time."),
        e("loss", "Held-out loss, mean over the evaluation batches."),
        e("baseline_ratio", "Held-out loss over the task's trivial baseline (below 1: "
          "something was learned)."),
        _q("eval", "classification tasks")("accuracy", "Held-out classification accuracy."),
        _q("eval", "the copy task")("copy_accuracy", "Held-out accuracy on the recalled steps."),
        _q("eval", "the mqar and selective-copy tasks")(
            "recall_accuracy", "Held-out accuracy on the queried or recalled tokens."),
        _q("eval", "a task with its own metric_fn")(
            "{metric}", "A metric of the task's own ``metric_fn``, mean over the evaluation "
            "batches."),
    ]


#: every quantity gatezoo's instruments and trainer emit
QUANTITIES: tuple[Quantity, ...] = (
    *_gates(), *_lags(), *_optimizer(), *_analogies(), *_expansion(), *_jacobians(),
    *_probes(), *_learnability(), *_trainer(),
)

_BUILTIN = frozenset(q.instrument for q in QUANTITIES)
_DECLARED: dict[str, tuple[Quantity, ...]] = {}


def declare(*declared: Quantity) -> None:
    """Adds the quantities of instruments of your own to the schema (replacing what an earlier
    call declared for the same instrument), so that their names are checked and defined.

    Raises:
      ValueError: a quantity of an instrument gatezoo declares itself, or a malformed name.
    """
    for q in declared:
        if q.instrument in _BUILTIN:
            raise ValueError(f"instrument {q.instrument!r} is gatezoo's own; its quantities are "
                             "declared in gatezoo.metric_schema")
        _check_part("instrument", q.instrument)
        _check_part("quantity", q.name)
    for name in {q.instrument for q in declared}:
        _DECLARED[name] = tuple(q for q in declared if q.instrument == name)
    _index.cache_clear()


@functools.cache
def _index() -> dict[str, tuple[tuple[Quantity, re.Pattern], ...]]:
    out: dict[str, list] = {}
    for q in (*QUANTITIES, *(q for qs in _DECLARED.values() for q in qs)):
        out.setdefault(q.instrument, []).append((q, _regex(q.name)))
    return {k: tuple(v) for k, v in out.items()}


def _regex(pattern: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", pattern)  # literal, field, literal, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?:{_FIELDS[p]})"
                              for i, p in enumerate(parts)) + r"\Z")


def instruments() -> tuple[str, ...]:
    """The instruments (and ``"train"``, ``"eval"``) whose quantities the schema declares."""
    return tuple(_index())


def quantities(instrument: str) -> tuple[Quantity, ...]:
    """The declared quantities of ``instrument`` (``()`` for an undeclared one)."""
    return tuple(q for q, _ in _index().get(instrument, ()))


def _check_part(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"a metric's {what} must be a non-empty string without '/', got "
                         f"{value!r}")


def _match(instrument: str, quantity: str) -> Quantity | None:
    declared = _index()[instrument]
    for q, _ in declared:  # a pattern itself names its family (series_name, the docs)
        if q.name == quantity:
            return q
    return next((q for q, rx in declared if rx.match(quantity)), None)


def _closest(quantity: str, declared: tuple[Quantity, ...]) -> str:
    def likeness(name: str) -> float:
        probe = quantity
        if "@" in name and "@" in quantity:  # compare stems: the lag itself is no typo
            probe = quantity.split("@", 1)[0] + "@" + name.split("@", 1)[1]
        return difflib.SequenceMatcher(None, probe, name).ratio()

    return max((q.name for q in declared if "{metric}" not in q.name), key=likeness, default="")


def metric_name(instrument: str, layer: str | None, quantity: str) -> str:
    """The full name of ``quantity`` measured by ``instrument`` on ``layer``.

    Args:
      instrument: an instrument's name, or ``"train"``/``"eval"`` for the trainer's metrics.
      layer: the measured layer's path in a model with several recurrent layers; ``None`` (or
        ``""``) for a model with one and for the trainer's metrics.
      quantity: a concrete quantity (``"profile@4"``) or a declared pattern (``"profile@{lag}"``).

    Raises:
      ValueError: in one line, a quantity the instrument does not declare (naming the closest
        one), a layer given to a trainer metric, or a part that is empty or holds ``"/"``.

    Example:
      >>> metric_name("gates", None, "alpha_mean")
      'gates/alpha_mean'
      >>> metric_name("lags", "layers.1", "ratio@4")
      'lags/layers.1/ratio@4'
      >>> metric_name("train", None, "loss")  # the trainer's metrics keep their bare names
      'loss'

    References:
      None: a naming rule, with no mathematics of its own; what each quantity means is in
      :data:`QUANTITIES` and docs/theory.md §3-§4.
    """
    _check_part("instrument", instrument)
    _check_part("quantity", quantity)
    if layer:
        _check_part("layer", layer)
    if instrument in _index() and _match(instrument, quantity) is None:
        raise ValueError(f"unknown quantity {quantity!r} of instrument {instrument!r}; "
                         f"closest: {_closest(quantity, quantities(instrument))!r}")
    if instrument in TRAINER:
        if layer:
            raise ValueError(f"{instrument!r} metrics are the whole model's, not layer {layer!r}")
        return quantity
    return f"{instrument}/{layer}/{quantity}" if layer else f"{instrument}/{quantity}"


def series_name(instrument: str, layer: str | None, stem: str) -> str:
    """The common start of the family ``"<stem>@{lag}"``: ``name@<lag>`` is its metric at a lag
    (what :func:`gatezoo.report.runfiles.lag_series` reads)."""
    return metric_name(instrument, layer, stem + "@{lag}").removesuffix("@{lag}")


def parse_metric_name(name: str, split: str = "train") -> MetricName:
    """``name`` taken apart into ``(instrument, layer, quantity)``; a name without ``"/"`` is a
    trainer metric of ``split`` (``"train"`` or ``"eval"``, the line's split).

    Raises:
      ValueError: a name with an empty part or more than three parts, or a bad ``split``.
    """
    if split not in TRAINER:
        raise ValueError(f"split must be one of {TRAINER}, got {split!r}")
    parts = name.split("/") if isinstance(name, str) else [None]
    if len(parts) > 3 or not all(parts) or (len(parts) > 1 and parts[0] in TRAINER):
        raise ValueError(f"{name!r} is not a metric name ('<instrument>[/<layer>]/<quantity>' "
                         "or a bare trainer metric)")
    if len(parts) == 1:
        return MetricName(split, None, name)
    return MetricName(parts[0], parts[1] if len(parts) == 3 else None, parts[-1])


def quantity_of(name: str, split: str = "train") -> Quantity:
    """The declared :class:`Quantity` that the metric ``name`` is an instance of.

    Raises:
      ValueError: a malformed name, an undeclared instrument or an unknown quantity.
    """
    instrument, _, quantity = parse_metric_name(name, split)
    if instrument not in _index():
        raise ValueError(f"{name!r}: instrument {instrument!r} declares no quantities "
                         "(gatezoo.metric_schema.declare adds an instrument of your own)")
    found = _match(instrument, quantity)
    if found is None:
        raise ValueError(f"unknown quantity {quantity!r} of instrument {instrument!r}; "
                         f"closest: {_closest(quantity, quantities(instrument))!r}")
    return found
