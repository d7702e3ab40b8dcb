"""The metrics reference, generated from the one metric schema at build time.

The directive ``{gatezoo-metrics}`` writes one section per instrument of
``gatezoo.metric_schema.QUANTITIES`` (in the schema's order; the trainer's ``train`` and
``eval`` namespaces last), its description and record from the instrument registry, and each
quantity with its full metric name, its definition, when it is emitted and its note: its units
and what a high or low value means (``metric_notes.NOTES``, one per quantity).

The list itself is generated, so it cannot drift; the build fails (``ExtensionError``) when

* a quantity of the schema has no entry on the page (the directive was removed, or a new
  instrument's quantities were not rendered),
* a registered instrument of gatezoo's own has no quantity in the schema,
* a quantity of the schema has no note in ``metric_notes.NOTES`` (a new quantity needs its
  units and its reading written down before the docs build), or
* a note is kept for a quantity the schema no longer has (a stale note).

Every quantity gets the label ``metric-<instrument>-<quantity>`` (lower case, runs of other
characters as ``-``), e.g. ``metric-transport-frozen-r2`` or ``metric-lags-ratio-lag``.
"""

from __future__ import annotations

import re

import metric_notes
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

_TRAINER_TEXT = {
    "train": "The trainer's own metrics of every training step. They carry no instrument "
    "prefix: ``metrics.jsonl`` keeps them apart from the held-out ones by the line's "
    "``split`` (``\"train\"``).",
    "eval": "The trainer's held-out evaluations, every ``eval_every`` steps (``--eval-every``), "
    "on batches the training never sees; bare names, on lines whose ``split`` is ``\"eval\"``.",
}


def label(instrument: str, name: str) -> str:
    return "metric-" + re.sub(r"[^a-z0-9]+", "-", f"{instrument}-{name}".lower()).strip("-")


def _schema():
    from gatezoo import metric_schema

    return metric_schema


def _instruments_in_order() -> list[str]:
    out: list[str] = []
    for q in _schema().QUANTITIES:
        if q.instrument not in out:
            out.append(q.instrument)
    trainer = [i for i in out if i in _schema().TRAINER]
    return [i for i in out if i not in trainer] + trainer


def _record_lines(instrument: str) -> list[str]:
    from gatezoo.instruments import INSTRUMENTS, PRESETS

    if instrument in _TRAINER_TEXT:
        return [_TRAINER_TEXT[instrument], ""]
    entry = INSTRUMENTS.get(instrument)
    if entry is None:
        return []
    presets = [p for p, names in PRESETS.items() if instrument in names]
    needs = [n for n, on in (("the gate protocol", entry.needs_gates),
                             ("the adjoints of the backward pass", entry.needs_adjoints)) if on]
    desc = entry.description
    where = "runs in the training step" if entry.tier == "step" else \
        "its own passes on a probe batch"
    every = f"every {entry.cadence} step{'s' if entry.cadence != 1 else ''} by default"
    in_presets = ", ".join(f"``{p}``" for p in presets) if presets else "none"
    lines = ["*" + _escape(desc[:1].upper() + desc[1:]) + ".*", "",
             f"- tier: ``{entry.tier}`` ({where}), {every}",
             f"- needs: {', '.join(needs) if needs else 'any recurrent cell'}",
             f"- in presets: {in_presets}",
             ""]
    return lines


def _escape(text: str) -> str:
    """Plain registry text (``||dL/dh||``, ``*``) as literal-safe reST."""
    return re.sub(r"([\\*`|_])", r"\\\1", text)


class Metrics(SphinxDirective):
    """``{gatezoo-metrics}``: the whole reference."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        schema = _schema()
        self.env.note_dependency(__file__)
        self.env.note_dependency(metric_notes.__file__)
        lines: list[str] = []
        rendered = getattr(self.env, "gatezoo_metrics_rendered", set())
        for instrument in _instruments_in_order():
            title = f"``{instrument}``"
            lines += [f".. _metrics-{instrument}:", "", title, "-" * len(title), ""]
            lines += _record_lines(instrument)
            for q in schema.quantities(instrument):
                full = schema.metric_name(instrument, None, q.name)
                lines += [f".. _{label(instrument, q.name)}:", "",
                          f"``{full}``", "~" * (len(full) + 4), ""]
                lines += [_one_line(q.definition), ""]
                facts = [f"Emitted: {'with ' + q.when if q.when else 'always'}."]
                note = metric_notes.NOTES.get((instrument, q.name))
                if note:  # none: _check fails the build
                    facts.append(note)
                lines += [f"| {fact}" for fact in facts] + [""]
                rendered.add((instrument, q.name))
        self.env.gatezoo_metrics_rendered = rendered
        self.env.gatezoo_metrics_page = self.env.docname
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=self.env.docname), node)
        return node.children


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check(app: Sphinx, env) -> None:
    from gatezoo.instruments import INSTRUMENTS

    schema = _schema()
    rendered = getattr(env, "gatezoo_metrics_rendered", set())
    declared = {(q.instrument, q.name) for q in schema.QUANTITIES}
    missing = sorted(declared - rendered)
    if missing:
        raise ExtensionError(
            f"the metrics reference lacks {len(missing)} quantity(ies) of "
            "gatezoo.metric_schema.QUANTITIES: "
            + ", ".join(f"{i}/{n}" for i, n in missing)
            + " (is the {gatezoo-metrics} directive on docs/metrics.md?)")
    silent = sorted(set(INSTRUMENTS) - {i for i, _ in declared})
    if silent:
        raise ExtensionError("instruments with no quantity in the metric schema: "
                             + ", ".join(silent))
    stale = sorted(set(metric_notes.NOTES) - declared)
    if stale:
        raise ExtensionError("docs/ext/metric_notes.py keeps notes for quantities the schema "
                             "does not declare: " + ", ".join(f"{i}/{n}" for i, n in stale))
    without = sorted(declared - {k for k, v in metric_notes.NOTES.items() if v.strip()})
    if without:
        raise ExtensionError(
            f"docs/ext/metric_notes.py has no note for {len(without)} quantity(ies) of "
            "gatezoo.metric_schema.QUANTITIES (every quantity needs its units and what a high "
            "or low value means): " + ", ".join(f"{i}/{n}" for i, n in without))


def _purge(app: Sphinx, env, docname: str) -> None:
    # the reference is one directive on one page: re-reading that page renders it anew
    if getattr(env, "gatezoo_metrics_page", None) == docname:
        env.gatezoo_metrics_rendered = set()


def _merge(app: Sphinx, env, docnames, other) -> None:
    env.gatezoo_metrics_rendered = getattr(env, "gatezoo_metrics_rendered", set()) | getattr(
        other, "gatezoo_metrics_rendered", set())


def setup(app: Sphinx) -> dict:
    app.add_directive("gatezoo-metrics", Metrics)
    app.connect("env-check-consistency", _check)
    app.connect("env-merge-info", _merge)
    app.connect("env-purge-doc", _purge)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
