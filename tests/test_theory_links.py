"""Every citation of the theory points at a section the shipped theory page has, and reports
link to it."""

import re
import subprocess
from pathlib import Path

from gatezoo.report import page as page_module

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
CITATION = re.compile(r"(?:docs/theory\.md|theory) §§?(\d+(?:\.\d+)?)"
                      r"(?:\s*(?:-|–|and)\s*§?(\d+(?:\.\d+)?))?")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [ROOT / f for f in out if (ROOT / f).is_file()]


def anchors() -> set[str]:
    return set(re.findall(r"^\((theory-[\w-]+)\)=$", THEORY.read_text(), flags=re.M))


def test_no_file_cites_the_design_note_users_never_get():
    design_note = "THEORY" + ".md"
    offenders = [str(p.relative_to(ROOT)) for p in tracked_files()
                 if p.suffix in {".py", ".md", ".rst", ".sh", ".toml", ".txt", ""}
                 and design_note in p.read_text(errors="replace")]
    assert offenders == []


def test_every_cited_section_is_an_anchor_of_the_theory_page():
    have = anchors()
    assert {"theory-1", "theory-2-3", "theory-7-12"} <= have
    cited = {}
    for path in tracked_files():
        if path.suffix not in {".py", ".md", ".rst"} or path == THEORY:
            continue
        for m in CITATION.finditer(path.read_text(errors="replace")):
            for sec in m.groups():
                if sec:
                    cited.setdefault("theory-" + sec.replace(".", "-"), str(path.name))
    assert len(cited) > 20
    assert {a: f for a, f in cited.items() if a not in have} == {}


def test_reports_link_each_citation_to_its_section(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEZOO_DOCS_URL", "https://docs.example/gatezoo")
    out = page_module.write_report(
        tmp_path, title="T (theory §6)", intro="see theory §4.4 and theory §7",
        figures=[], findings=[{"text": "theory §7.12 held", "figure": None}],
        tables=[page_module.Table(["a"], [[1.0]], title="Claims of theory §7 tested here")])
    html = out.read_text()
    base = "https://docs.example/gatezoo/theory.html"
    for anchor in ("theory-4-4", "theory-7", "theory-7-12"):
        assert f"<a href='{base}#{anchor}'>" in html
    assert "<title>T (theory §6)</title>" in html  # no markup inside the title
    assert f"<a href='{base}'>the theory page</a>" in html


def test_without_a_site_the_report_says_where_the_theory_is(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEZOO_DOCS_URL", raising=False)
    monkeypatch.setattr(page_module, "docs_url", lambda: None)
    html = page_module.write_report(tmp_path, title="T", intro="see theory §4.4",
                                    figures=[]).read_text()
    assert "see theory §4.4" in html and "<a href" not in html
    assert "docs/theory.md" in html and "bash docs/build.sh" in html
