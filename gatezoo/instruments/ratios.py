r"""Per-step Jacobian ratios :math:`r_j = \|B_j\|_2 / \|A_j\|_2` (docs/theory.md §3.2-§3.3).

``A_j`` is the gate-frozen step Jacobian and ``B_j`` the gate-induced one; the first-order
truncation is accurate while ``n max_j r_j << 1`` over a window of ``n`` steps. The exact spectral
norms (largest singular values) are taken on a fixed subsample of ``(t, b)`` pairs, spread evenly
over time and cycling over the batch, so the cost does not grow with ``T * batch``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gatezoo.instruments import steps
from gatezoo.instruments.norms import spectral_norm
from gatezoo.instruments.views import Measure, StepViews

__all__ = ["sample_pairs", "jacobian_norms", "ratios"]


def sample_pairs(seq_len: int, batch: int, n: int) -> tuple[jax.Array, jax.Array]:
    """``n`` (or fewer) fixed ``(t, b)`` pairs: times evenly spread, examples cycling."""
    n = min(n, seq_len * batch)
    k = jnp.arange(n)
    return (2 * k + 1) * seq_len // (2 * n), k % batch


def jacobian_norms(fns, cell_params, prev, xs_t, t, b, compat: str = "exact"):
    """``(||A||_2, ||B||_2)`` at the pairs ``(t, b)`` (0-indexed steps), each ``(n,)``."""
    h = jax.tree_util.tree_map(lambda c: c[t, b], prev)
    x = xs_t[t, b]
    a, bm = jax.vmap(lambda h_, x_: steps.split_jacobians(fns, cell_params, h_, x_, compat))(h, x)
    return spectral_norm(a), spectral_norm(bm)


def ratios(fns, *, every: int | None = None, samples: int = 16, compat: str = "exact") -> Measure:
    """The ``ratios`` instrument (gated cells): ``r_j`` statistics on ``samples`` pairs.

    Metrics: ``ratios/median``, ``ratios/p90``, ``ratios/max``, ``ratios/a_norm`` and
    ``ratios/b_norm`` (medians of the spectral norms). Under ``compat="paper-code"`` ``B`` is built
    from the post-update state (docs/theory.md §2.3 item 1).
    """
    steps.check_compat(compat)

    def measure(ctx, state, views: StepViews):
        T, B = views.xs_t.shape[:2]
        t, b = sample_pairs(T, B, samples)
        if ctx.lengths is not None:  # the same spread over each sequence's valid steps
            n = t.shape[0]
            t = (2 * jnp.arange(n) + 1) * ctx.lengths[b] // (2 * n)
        na, nb = jacobian_norms(ctx.fns, views.cell_params, views.prev, views.xs_t, t, b, compat)
        r = nb / na
        return {
            "median": jnp.median(r),
            "p90": jnp.quantile(r, 0.9),
            "max": jnp.max(r),
            "a_norm": jnp.median(na),
            "b_norm": jnp.median(nb),
        }, state

    return Measure("ratios", lambda p: (), measure, every=every)
