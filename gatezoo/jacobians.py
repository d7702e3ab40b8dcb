"""Closed-form and autodiff state Jacobians, parameter Jacobians and their products.

The namespace ``gz.jacobians``; the functions are defined in :mod:`gatezoo.models.jacobians`
and documented there (docs/theory.md §2-§3).
"""

from gatezoo.models.jacobians import (
    CONVENTIONS,
    ORDERS,
    autodiff_split,
    deformed_product,
    first_order,
    frechet_l1,
    has_closed_form,
    loglog_slope,
    param_jacobians,
    product_first_order,
    register_param_jacobians,
    register_state_jacobians,
    state_jacobians,
    transport,
    truncation_error,
)

__all__ = [
    "CONVENTIONS",
    "ORDERS",
    "state_jacobians",
    "param_jacobians",
    "register_state_jacobians",
    "register_param_jacobians",
    "has_closed_form",
    "autodiff_split",
    "transport",
    "deformed_product",
    "product_first_order",
    "first_order",
    "frechet_l1",
    "truncation_error",
    "loglog_slope",
]
