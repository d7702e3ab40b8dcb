"""The report page: one self-contained HTML file, plus the PNGs, a Markdown table and a summary.

The page embeds every figure as a base64 PNG ``data:`` URI and carries its own CSS, so it opens
in a browser with no network and no JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gatezoo.experiments.stats import to_list
from gatezoo.report.figures import ReportFigure

__all__ = ["Table", "markdown_table", "html_table", "write_report", "docs_url", "link_theory"]

#: a section of the documentation's theory page as reports, findings and verdicts cite it
_THEORY_REF = re.compile(r"theory §(\d+)(?:\.(\d+))?")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.92em;color:#444;margin-top:.4em}
.note{color:#666;font-size:.9em}
"""


class Table:
    """A small table: column names and rows of values (floats are formatted on output)."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = ""):
        self.columns = list(columns)
        self.rows = [list(r) for r in rows]
        self.title = title


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def markdown_table(table: Table) -> str:
    """The table as GitHub-flavoured Markdown."""
    lines = ["| " + " | ".join(table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.rows]
    head = f"**{table.title}**\n\n" if table.title else ""
    return head + "\n".join(lines) + "\n"


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in table.rows
    )
    title = f"<h3>{html.escape(table.title)}</h3>" if table.title else ""
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def docs_url() -> str | None:
    """Where the documentation site is: ``$GATEZOO_DOCS_URL`` if set, else the site built in
    this checkout (``bash docs/build.sh`` writes ``docs/_build/html``), else ``None``."""
    env = os.environ.get("GATEZOO_DOCS_URL", "").strip()
    if env:
        return env.rstrip("/") + "/"
    built = Path(__file__).resolve().parents[2] / "docs" / "_build" / "html" / "theory.html"
    return built.parent.as_uri() + "/" if built.is_file() else None


def link_theory(escaped: str, base: str | None) -> str:
    """Turns each ``theory §6.2`` of already escaped HTML into a link to that section of the
    theory page (anchor ``theory-6-2``); without a site (``base=None``) the text stays."""
    if base is None:
        return escaped

    def link(m: re.Match) -> str:
        anchor = "theory-" + "-".join(g for g in m.groups() if g)
        return f"<a href='{html.escape(base)}theory.html#{anchor}'>{m.group(0)}</a>"

    return _THEORY_REF.sub(link, escaped)


def _theory_note(base: str | None) -> str:
    where = (f"<a href='{html.escape(base)}theory.html'>the theory page</a>" if base else
             "the theory page of gatezoo's documentation (docs/theory.md; build the site with "
             "<code>bash docs/build.sh</code>)")
    return f"<p class='note'>Sections cited as “theory §” are those of {where}.</p>"


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    intro: str,
    figures: Sequence[ReportFigure],
    tables: Sequence[Table] = (),
    summary: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    findings: Sequence[dict[str, Any]] = (),
) -> Path:
    """Writes ``report.html``, ``figures/<name>.png``, ``table.md`` and ``summary.json``.

    ``findings`` (``{"text", "figure"}`` each) open the page as a list, each linked to its
    figure; they also go into ``summary.json`` under ``"findings"``.

    Returns the path of ``report.html``.
    """
    out = Path(out_dir)
    base = docs_url()
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>",
    ]
    names = {f.name: i for i, f in enumerate(figures, 1)}
    if findings:
        parts.append("<h2 id='findings'>Findings</h2><ul>")
        for item in findings:
            fig = item.get("figure")
            link = (f" <a href='#{html.escape(fig)}'>(Figure {names[fig]})</a>"
                    if fig in names else "")
            parts.append(f"<li>{html.escape(item['text'])}{link}</li>")
        parts.append("</ul>")
    for note in notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    if tables:
        parts.append("<h2>Summary table</h2>")
        parts += [html_table(t) for t in tables]
    if figures:
        parts.append("<h2>Figures</h2>")
    for i, fig in enumerate(figures, 1):
        (fig_dir / f"{fig.name}.png").write_bytes(fig.png)
        b64 = base64.b64encode(fig.png).decode("ascii")
        parts.append(
            f"<figure id='{html.escape(fig.name)}'><h3>Figure {i}. {html.escape(fig.title)}</h3>"
            f"<img alt='{html.escape(fig.title)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
        )
    parts.append(_theory_note(base))
    parts.append("</body></html>")
    page = out / "report.html"
    head, body = parts[:2], parts[2:]  # no link inside <title>
    page.write_text("\n".join(head + [link_theory("\n".join(body), base)]), encoding="utf-8")
    (out / "table.md").write_text(
        "\n".join(markdown_table(t) for t in tables) if tables else "(no table)\n"
    )
    if summary is not None:
        if findings:
            summary = {"findings": list(findings), **summary}
        (out / "summary.json").write_text(json.dumps(to_list(summary), indent=1))
    return page
