"""Interpretation notes of the metrics reference: units, and what a high or low value means.

Keyed by ``(instrument, quantity)`` exactly as in ``gatezoo.metric_schema.QUANTITIES``; the
build fails on a key the schema does not declare (``gatezoo_metrics``). A quantity without a
note is still listed with its definition.
"""

NOTES: dict[tuple[str, str], str] = {}
