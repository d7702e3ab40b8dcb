r"""Interpretation notes of the metrics reference: units, and what a high or low value means.

Keyed by ``(instrument, quantity)`` exactly as in ``gatezoo.metric_schema.QUANTITIES``. Every
quantity of the schema must have a note, and every note a quantity: the build fails
(``ExtensionError`` from ``gatezoo_metrics``) on a quantity without a note and on a stale key.

A note is reST for one item of a line block (one line, ``:math:`` and ``:ref:`` allowed),
one to three sentences: ``Units: ... .`` first, then how to read a high or a low value, and a
typical range only where one can be stated safely (a bound that holds by construction, or a
number the theory page reports). Where the reading depends on the task or the model, say so.
"""

# shared wording
_LR_UNITS = "Units: those of a learning rate (a parameter change per unit of gradient)."
_RATIO = "Units: none (a ratio of two norms)."
_R2 = ("Units: none, between 0 and 1 (NaN with fewer than three points). Near 1: the "
       "predictor's decay explains the profile across lags and examples; near 0: it does not "
       "(then the fitted power means little).")
_SHARE = ("Units: none; the three shares add to 1. With a decaying signal (a negative total "
          "log-gain) a share near 1 says this part does most of the decaying and a negative "
          "share that it sustains the signal; the shares swing widely when the total is near 0.")
_GAIN = ("Units: nats (natural log of a gain, averaged over the window's lags). Negative: "
         "this part makes the propagated signal decay, positive: it sustains or amplifies it; "
         "0: it has no effect.")
_MAXMIN = ("Units: none, at least 1 for positive values. 1: every neuron alike; the larger, "
           "the more unequal the neurons.")
_CORR = "Units: none, a Pearson correlation between -1 and 1 (NaN when either side is constant)."
_FLAG = "Units: none, 1 or 0 (a flag)."
_FIT = ("Units: none (a power, the slope of a log-log fit). 1: the profile falls exactly as "
        "fast as the predictor; above 1 faster, below 1 slower; read it together with the "
        "fit's :math:`R^2`.")


def _transport_at(what: str) -> str:
    return ("Units: none (relative to each example's lag-0 signal :math:`\\|\\lambda_T\\|`). "
            + what)


def _jac(what: str) -> str:
    return (f"{what} At lag 1 it describes one step Jacobian; how it changes with the lag "
            "shows whether the transport concentrates on few directions over long windows.")


NOTES: dict[tuple[str, str], str] = {
    # gates: the time-scale gate alpha (docs/theory.md §1.2)
    ("gates", "alpha_mean"):
        "Units: none, between 0 and 1 (the weight of the new candidate; for an LSTM one "
        "minus the forget gate). Near 1 the cell "
        "overwrites its state every step (a plain RNN at 1); near 0 it keeps its state and "
        "integrates slowly, with memory :math:`\\approx 1/\\alpha` steps.",
    ("gates", "alpha_min"):
        "Units: none, between 0 and 1. The slowest neuron-step seen: a value near 0 means some "
        "neuron nearly freezes its state at some step (long memory there).",
    ("gates", "alpha_max"):
        "Units: none, between 0 and 1. The fastest neuron-step seen: near 1 means some neuron "
        "at some step overwrites its state completely.",
    ("gates", "alpha_p10"):
        "Units: none, between 0 and 1. The slow end of the gate distribution: low means a "
        "tenth of the neuron-steps retain their state for many steps (see ``tau_p90``).",
    ("gates", "alpha_p50"):
        "Units: none, between 0 and 1. The typical gate: compare with ``alpha_mean`` (a "
        "median well below the mean: a skewed distribution with a fast tail).",
    ("gates", "alpha_p90"):
        "Units: none, between 0 and 1. The fast end of the gate distribution: near 1 means a "
        "tenth of the neuron-steps nearly overwrite their state.",
    ("gates", "tau_mean"):
        "Units: steps of sequence time, at least 1. High: long memory; 1: none (a plain RNN). "
        "Dominated by the smallest gates (:math:`E[1/\\alpha]\\ge 1/E[\\alpha]`), so a few "
        "slow neurons can make it large.",
    ("gates", "tau_p50"):
        "Units: steps of sequence time, at least 1. The typical time constant: a memory of "
        "about this many steps; compare it with the lags the task needs.",
    ("gates", "tau_p90"):
        "Units: steps of sequence time, at least 1. The slow tail: a tenth of the neuron-steps "
        "have a longer time constant: the memory of the slow neurons.",
    ("gates", "neuron_spread"):
        "Units: none, between 0 and 0.5 (a standard deviation of values in [0, 1]). 0: all "
        "neurons share one time scale (a scalar gate always); high: heterogeneous time "
        "scales, e.g. a few slow neurons among fast ones.",
    ("gates", "time_std"):
        "Units: none, between 0 and 0.5. 0: each neuron's gate is constant along the sequence "
        "(a constant :math:`\\alpha`); high: the gate opens and closes with the data, warping "
        "time within a sequence.",
    # lags: the error signal by lag (docs/theory.md §4.4)
    ("lags", "adjoint_last"):
        "Units: the loss's units per unit of state. Its size depends on the task's loss and "
        "on its averaging (a batch mean: per-example signals shrink with the batch size), so "
        "follow it within a run: a fall to near 0 means the last step's loss is fitted.",
    ("lags", "ratio@{lag}"):
        "Units: none (1 at lag 0). Below 1: the error signal decays over this many steps (a "
        "vanishing gradient at small values, e.g. :math:`10^{-3}`); above 1: it grows (the "
        "loss's terms at earlier steps, or an exploding transport).",
    ("lags", "decay_rate"):
        "Units: nats per step of lag. Negative: decay, the signal falling by a factor "
        ":math:`e` over about :math:`-1/\\text{rate}` steps; near 0: the signal persists over "
        "the whole sequence; positive: it grows with the lag.",
    # transport: the theory's predictors of the error signal (docs/theory.md §4.4, §7.14)
    ("transport", "frozen_s"):
        _FIT + " Near 1 with a high :math:`R^2` (one measurement of :ref:`§7.14 "
        "<theory-7-14>` found a power near 1) means the zeroth-order theory predicts the "
        "signal's decay.",
    ("transport", "frozen_r2"):
        _R2 + " gatezoo's reports call the effective-learning-rate claim reproduced at "
        ":math:`R^2\\ge 0.8` (:ref:`§7.14 <theory-7-14>`).",
    ("transport", "frozen@{lag}"):
        _transport_at("Below 1: the gate-frozen transport decays over the lag, above 1 it "
                      "grows; equal to ``propagated@{lag}``: the gates' own path :math:`B` "
                      "leaves the signal's size unchanged."),
    ("transport", "weighted_s"):
        _FIT + " It leaves out recurrent mixing, so it is expected to track the profile less "
        "well than ``frozen_s`` once training mixes the neurons.",
    ("transport", "weighted_r2"):
        _R2 + " It usually lies between the neuron-mean predictors' and the gate-frozen "
        "transport's (:ref:`§4.4 <theory-4-4>`).",
    ("transport", "weighted@{lag}"):
        _transport_at("It falls with the lag, every retention :math:`1-\\alpha` being "
                      "below 1; near 1: slow neurons carry the signal unchanged; well below "
                      "``propagated@{lag}``: mixing or the gates' path sustain the signal."),
    ("transport", "retention_s"):
        _FIT + " With heterogeneous gates the neuron mean is dominated by the fast neurons "
        "and falls below the profile, which pushes the power below 1.",
    ("transport", "retention_r2"):
        _R2 + " With ``candidate_r2``, typically the lowest of the predictors once training "
        "has made the gates heterogeneous (:ref:`§7.14 <theory-7-14>`).",
    ("transport", "retention@{lag}"):
        "Units: none, between 0 and 1, falling with the lag. Near 1: most neurons retain "
        "their state over this lag; near 0: most have forgotten it.",
    ("transport", "candidate_s"):
        _FIT + " The candidate weights :math:`\\prod\\alpha` fall fast when the gates are "
        "small, so this power depends strongly on the gates' level.",
    ("transport", "candidate_r2"):
        _R2 + " The release's S1 predictor; compare it with ``retention_r2`` "
        "(:ref:`§8 <theory-8>`, item 2).",
    ("transport", "candidate@{lag}"):
        "Units: none, between 0 and 1, falling with the lag. Near 1: gates near 1 "
        "(fast cells); near 0: small gates, whose candidate path decays quickly with the lag.",
    ("transport", "propagated@{lag}"):
        "Units: none (relative to the lag-0 signal). Below 1: the last step's error signal "
        "decays over this lag; above 1: it grows; what the predictors are fitted to.",
    ("transport", "diagonal_part@{lag}"):
        "Units: nats (natural log of a gain). Typically negative: the gates' retention makes "
        "the signal decay; near 0: retentions near 1 (slow neurons) keep it.",
    ("transport", "mixing_part@{lag}"):
        "Units: nats. Positive: the recurrent weights carry the signal beyond what the "
        "diagonal retention keeps; negative: their mixing makes it decay faster.",
    ("transport", "gate_part@{lag}"):
        "Units: nats; 0 when no gate reads the state. Positive: the gates' own path :math:`B` "
        "sustains or amplifies the signal; negative: it speeds the decay; near 0: first "
        "order in the gates is enough.",
    ("transport", "diagonal_share"): _SHARE,
    ("transport", "diagonal_gain"): _GAIN,
    ("transport", "mixing_gain"): _GAIN,
    ("transport", "gate_gain"): _GAIN + " Exactly 0 when no gate reads the state.",
    ("transport", "mixing_share"): _SHARE,
    ("transport", "gate_share"): _SHARE + " Exactly 0 when no gate reads the state.",
    # optimizer: measured from the update, read from the state (docs/theory.md §5)
    ("optimizer", "grad_norm"):
        "Units: the loss's units per unit of parameter. Its scale depends on the task's loss; "
        "spikes can mean instability, and it usually shrinks as the loss is fitted.",
    ("optimizer", "update_norm"):
        "Units: those of the parameters. The size of this step's move: "
        ":math:`\\eta\\|g\\|` for plain SGD; large relative to the parameters' own norm: "
        "an aggressive step.",
    ("optimizer", "step_mean"):
        _LR_UNITS + " Exactly :math:`\\eta` for plain SGD; for Adam-like methods the "
        "gradient-weighted mean of their per-coordinate preconditioner, which can be far "
        "from :math:`\\eta`.",
    ("optimizer", "step_cv"):
        "Units: none. 0 (up to rounding): every neuron takes the same step, as under plain "
        "SGD; the higher, the more the optimizer adapts its step per neuron.",
    ("optimizer", "step_anisotropy"):
        _MAXMIN + " 1 (up to rounding) for plain SGD; negative when some neuron's update "
        "points up its gradient (momentum can do that).",
    ("optimizer", "step_gate_corr"):
        _CORR + " Positive: the optimizer steps larger for the neurons with larger gates (the "
        "two rescalings compound); negative: it compensates them; near 0: unrelated. "
        "Meaningless under plain SGD, whose steps are all :math:`\\eta` up to rounding.",
    ("optimizer", "found_lr"):
        _FLAG + " 0 means the learning rate was fixed inside the transformation; the "
        "quantities that need it (``lr``, ``step_gain``) are then not emitted.",
    ("optimizer", "found_momentum"):
        _FLAG + " 1 for heavy-ball momentum (its coefficient injected) or Adam's first "
        "moment; 0 for plain SGD.",
    ("optimizer", "found_nu"):
        _FLAG + " 1 for an Adam-like optimizer (and an injected rate), which emits the "
        "``adam_row_*`` quantities.",
    ("optimizer", "beta"):
        "Units: none, between 0 and 1 (0 without momentum). High (e.g. 0.9, Adam's usual b1): "
        "a long gradient memory of about :math:`1/(1-\\beta)` steps; a setting of the "
        "optimizer, not learned.",
    ("optimizer", "momentum_factor"):
        "Units: none, at least 1. How much heavy-ball momentum amplifies a steady gradient "
        "(10 at :math:`\\beta=0.9`); 1 for every other optimizer, Adam's normalised first "
        "moment included.",
    ("optimizer", "lr"):
        _LR_UNITS + " A setting, or the value of the schedule at this step.",
    ("optimizer", "step_gain"):
        "Units: none. 1 for plain SGD; above 1: the optimizer moves farther than SGD at this "
        "rate (heavy-ball momentum: about ``momentum_factor`` for a steady gradient); below "
        "1: shorter. Adam's value depends on the gradient's scale.",
    ("optimizer", "adam_row_mean"):
        _LR_UNITS + " Large for neurons whose incoming weights have small gradient second "
        "moments; compare it with ``lr``, the step of a gradient of unit second moment.",
    ("optimizer", "adam_row_min"):
        _LR_UNITS + " The most damped neuron: the one with the largest gradient second "
        "moments.",
    ("optimizer", "adam_row_max"):
        _LR_UNITS + " The most amplified neuron: the one with the smallest gradient second "
        "moments (at most :math:`\\eta/\\epsilon`, for a neuron without gradient).",
    ("optimizer", "adam_row_anisotropy"):
        _MAXMIN + " Adam's preconditioner across neurons, to compare with the gates' "
        "``analogies/gate_anisotropy``.",
    # effective_lr: mu = Lambda * retention product (docs/theory.md §3.5)
    ("effective_lr", "base"):
        _LR_UNITS + " Without a learning rate in the optimizer's state it is 1 (the bare "
        "retention; :math:`1/(1-\\beta)` under heavy-ball momentum) and has no units.",
    ("effective_lr", "envelope@{lag}"):
        _LR_UNITS + " A sum over neurons, so it grows with the width; its fall with the lag "
        "(the retentions :math:`1-\\alpha` are below 1) shows how fast the effective rate "
        "vanishes for distant contributions.",
    ("effective_lr", "anisotropy@{lag}"):
        _MAXMIN + " Heterogeneous gates compound over the window, so it tends to grow with "
        "the lag: the slow neurons keep an effective rate the fast ones have lost.",
    # analogies: gates beside the optimizer (docs/theory.md §5)
    ("analogies", "beta_gate"):
        "Units: none, between 0 and 1. Near 1: a long momentum along sequence time (slow "
        "gates, memory of about :math:`1/(1-\\beta)` steps); near 0: no accumulation (a "
        "plain RNN).",
    ("analogies", "beta_optimizer"):
        "Units: none, between 0 and 1 (0 without momentum). The optimizer's momentum along "
        "training iterations, to compare with ``beta_gate`` along sequence time.",
    ("analogies", "gate_anisotropy"):
        _MAXMIN + " Exactly 1 for a scalar gate; large: the vector gate acts as a strongly "
        "non-uniform diagonal preconditioner.",
    ("analogies", "lr"):
        _LR_UNITS + " The same value as ``optimizer/lr``.",
    ("analogies", "gate_step"):
        _LR_UNITS + " At most the learning rate: the immediate step a candidate parameter "
        "effectively gets; far below ``lr``: the gates anneal the step.",
    ("analogies", "adam_anisotropy"):
        _MAXMIN + " Compare it with ``gate_anisotropy``: which of the two spreads the neurons' "
        "steps more.",
    ("analogies", "precond_corr"):
        _CORR + " Positive: Adam steps larger where the gates open wider (the two "
        "preconditioners overlap); near 0: complementary; negative: opposed.",
    # expansion: G0, G1 and G(1) (docs/theory.md §3.3)
    ("expansion", "g1_over_g0"):
        _RATIO + " 0 when no gate reads the state; well below 1: the gradient with frozen "
        "gates dominates (the paper's small-but-systematic claim); near or above 1: the gates' "
        "path changes the gradient substantially.",
    ("expansion", "remainder"):
        "Units: none, a fraction of the exact gradient's norm. Near 0: first order in the "
        "gate path captures the whole gate effect; large: higher orders matter (long windows "
        "with a large ``ratios/median``).",
    ("expansion", "cos"):
        "Units: none, between -1 and 1. Near 1: freezing the gates keeps the gradient's "
        "direction; lower: the gates' path turns it (negative: the frozen gradient points "
        "against the true one).",
    ("expansion", "g1_over_g0@{group}"):
        _RATIO + " As ``g1_over_g0``, for one parameter; the groups with the largest value "
        "are those the gates' path reaches most.",
    ("expansion", "remainder@{group}"):
        "Units: none, a fraction of this parameter's exact gradient norm. As ``remainder``, "
        "for one parameter.",
    ("expansion", "cos@{group}"):
        "Units: none, between -1 and 1. As ``cos``, for one parameter.",
    ("expansion", "self_check"):
        "Units: none, a relative error. At rounding level (the tests accept below "
        ":math:`10^{-5}` in float32) when the cell's call and its split_call agree; larger "
        "values mean the gate protocol is implemented inconsistently and ``expansion`` "
        "cannot be trusted.",
    # ratios: r_j = ||B_j|| / ||A_j|| (docs/theory.md §3.2)
    ("ratios", "median"):
        _RATIO + " 0 when no gate reads the state; the first-order expansion is accurate "
        "over :math:`n` steps while :math:`n\\,r\\ll 1`. :ref:`§7.12 <theory-7-12>` reports "
        "about 0.07-0.2 at a :math:`\\mathcal N(0, 0.2^2)` initialisation.",
    ("ratios", "p90"):
        _RATIO + " The upper tail of the per-step ratio; well above the median: a few steps "
        "where the gates' path is strong.",
    ("ratios", "max"):
        _RATIO + " The worst sampled step; above 1: at some step the gates' path outweighs "
        "the gate-frozen Jacobian.",
    ("ratios", "a_norm"):
        "Units: none (state per state). Above 1: one step with the gates frozen can amplify "
        "some direction of the state; below 1: it contracts every direction.",
    ("ratios", "b_norm"):
        "Units: none (state per state); 0 when no gate reads the state. How strongly one step "
        "feeds back through the gates; read it against ``a_norm``.",
    # sensitivity: lag sensitivities on the probe batch (docs/theory.md §4.4)
    ("sensitivity", "median_lag1"):
        "Units: none (state per state). Above 1: a step can amplify the state's "
        "perturbations; below 1: every step contracts them.",
    ("sensitivity", "profile@{lag}"):
        "Units: none (1 at lag 1). The normalised effective learning rate at this lag "
        "(:ref:`§4.4 <theory-4-4>`): below 1 distant contributions are damped, above 1 "
        "amplified; a fast fall with the lag means short effective memory.",
    ("sensitivity", "candidate_s"): _FIT.replace("profile", "sensitivity"),
    ("sensitivity", "candidate_r2"): _R2.replace("profile", "sensitivity"),
    ("sensitivity", "candidate_rms"):
        "Units: nats (natural-log error). 0: the fitted profile matches the measured one at "
        "every lag; 0.1: off by about 10 %; above 1: off by more than a factor :math:`e`.",
    ("sensitivity", "retention_s"): _FIT.replace("profile", "sensitivity"),
    ("sensitivity", "retention_r2"): _R2.replace("profile", "sensitivity"),
    ("sensitivity", "retention_rms"):
        "Units: nats (natural-log error). 0: a perfect fit; compare with ``candidate_rms`` "
        "to see which gate product predicts the profile better.",
    # anisotropy: direction-resolved effective rates (docs/theory.md §4.5, §6.4)
    ("anisotropy", "jac_ai@{lag}"):
        _jac("Units: none, at least 1. 1: all directions get the same gain; large: the "
             "effective rate depends strongly on the direction."),
    ("anisotropy", "jac_ce@{lag}"):
        _jac("Units: none, between 0 and 1 (1 for a state of at most 10 dimensions). Near "
             "1: the top 10 directions hold nearly all of the top 16's energy."),
    ("anisotropy", "jac_erank@{lag}"):
        _jac("Units: none, between 1 and the state's dimension. Low: the transport acts "
             "along few directions; high: along many."),
    ("anisotropy", "jac_pr@{lag}"):
        _jac("Units: none, between 1 and the state's dimension. Low: few directions carry "
             "the transport; high: the energy is spread."),
    ("anisotropy", "grad_ai"):
        "Units: none, at least 1. Large: the per-sample gradients share a few dominant "
        "directions; near 1: they spread evenly. The probe batch's size bounds the spectrum.",
    ("anisotropy", "grad_ce"):
        "Units: none, between 0 and 1 (1 for a probe batch of at most 10). Near 1: ten "
        "directions hold nearly all the per-sample gradients' variation; not comparable with "
        "``jac_ce`` (another denominator).",
    ("anisotropy", "grad_erank"):
        "Units: none, between 1 and the probe batch's size. Low: the per-sample gradients "
        "vary along few directions; high: along many.",
    ("anisotropy", "grad_pr"):
        "Units: none, between 1 and the probe batch's size. Low: few directions carry the "
        "gradients' variation; high: it is spread.",
    # truncation: the second-order truncation test (docs/theory.md §3.2, §6.2)
    ("truncation", "slope"):
        "Units: none (a log-log slope). About 2: the error is second order and the "
        "first-order expansion is consistent; clearly below 2: rounding reaches the smallest "
        ":math:`\\epsilon` of the grid, or the check is broken.",
    ("truncation", "rel_err"):
        "Units: none, a fraction of :math:`\\|F(1)\\|`. Near 0: first order reproduces the "
        "exact product; the :ref:`§6.5 <theory-6-5>` reference medians at the appendix "
        "setting are about 0.11 "
        "(scalar gate) and 0.38 (vector gate). It grows with the window's length.",
    ("truncation", "rel_err_linear"):
        "Units: none, a fraction of :math:`\\|F(0)+L_1\\|`. As ``rel_err``, against the "
        "first-order product itself; large: first order misses much of the product.",
    ("truncation", "l1_over_f0"):
        _RATIO + " How large the first-order gate correction of the product is; near 0: "
        "the gates' path barely changes the transport. The :ref:`§6.5 <theory-6-5>` "
        "medians are about 0.49 "
        "(scalar gate) and 0.83 (vector gate).",
    ("truncation", "c2"):
        "Units: none. The second-order coefficient: it should level off as :math:`\\epsilon` "
        "shrinks; a large value means strong second-order effects of the gates' path.",
    # train: the trainer's own metrics
    ("train", "loss"):
        "Units: those of the task's loss (mean squared error in squared target units, or "
        "cross-entropy in nats). Lower is better; compare it with the task's baseline "
        "(``baseline_ratio`` of the held-out evaluations).",
    ("train", "lr"):
        _LR_UNITS + " A setting, or the schedule's value at this step; NaN: the rate is not "
        "readable from the optimizer's state.",
    ("train", "grad_norm"):
        "Units: the loss's units per unit of parameter. Its scale depends on the task; "
        "spikes can mean instability (or the need for clipping).",
    ("train", "steps_per_sec"):
        "Units: training steps per second of wall time. Higher is faster; it depends on the "
        "hardware, the model's size and the instruments attached, and the first lines "
        "include compilation.",
    # eval: the held-out evaluations
    ("eval", "loss"):
        "Units: those of the task's loss. Lower is better; well above the training loss: "
        "overfitting (for a task with a fixed data set).",
    ("eval", "baseline_ratio"):
        "Units: none. 1: no better than the task's trivial baseline (e.g. predicting the "
        "mean); 0: perfect; above 1: worse than the baseline.",
    ("eval", "accuracy"):
        "Units: none, a fraction between 0 and 1. Higher is better; chance is about one over "
        "the number of classes (the largest class's share for unbalanced data).",
    ("eval", "copy_accuracy"):
        "Units: none, a fraction between 0 and 1. Higher is better; guessing among the "
        "eight categories gives 1/8.",
    ("eval", "recall_accuracy"):
        "Units: none, a fraction between 0 and 1. Higher is better; chance is about one over "
        "the number of tokens the task draws from.",
    ("eval", "{metric}"):
        "Units: the task's own, as its ``metric_fn`` defines them, and so is the reading of "
        "a high or a low value.",
    # learnability: the follow-up's generalised effective learning rate (probe tier)
    ("learnability", "rate"):
        "Units: those of the learning rate (a step per unit of gradient). Adam's per-weight "
        "rate grows where the squared gradients are small; equal to the learning rate under "
        "SGD; 1 when the optimizer's state holds no rate.",
    ("learnability", "envelope@{lag}"):
        "Units: those of the rate, summed over neurons. Its decay with the lag is how fast the "
        "contributions of older inputs lose weight in the update; a flat envelope means long "
        "lags learn as fast as short ones.",
    ("learnability", "envelope_gates@{lag}"):
        "Units: those of the learning rate, summed over neurons. What the gates alone would "
        "give under one uniform rate; it falls with the lag at the pace of the retentions.",
    ("learnability", "envelope_ratio@{lag}"):
        "Units: none. Above 1: the optimizer's per-weight rate (and the first-order gate term) "
        "raise the envelope above the gates' share at that lag; below 1: they lower it.",
    ("learnability", "first_order_ratio@{lag}"):
        "Units: none. 1: the first-order diagonal of the follow-up equals the exact diagonal; "
        "it drifts from 1 with the lag where the recurrent mixing or the gates' state path "
        "matter (below 1: the approximation decays faster than the exact transport).",
    ("learnability", "psi_mean@{lag}"):
        "Units: those of the loss per unit of parameter, times the rate. Its size against "
        "``psi_std`` over many sequences decides whether a lag is learnable "
        "(:func:`gatezoo.instruments.window.learnability_window_of`).",
    ("learnability", "psi_std@{lag}"):
        "Units: those of ``psi_mean``. Large against the mean: the lag's signal is buried in "
        "noise and needs many sequences to be detected.",
}
