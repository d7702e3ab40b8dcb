"""The API pages, generated from the packages' ``__all__`` lists at build time.

A page holds the directive::

    ```{gatezoo-api} cells
    ```

and the page spec ``gatezoo_api_pages["cells"] = (namespace, submodules)`` of ``conf.py`` says
which names it documents: those of ``namespace.__all__`` (one namespace or a list) defined in one
of ``submodules``, or, with ``submodules=None``, every name of the namespace that no other page
of the same namespace claims. Nothing here lists a name: a name added to (or dropped from) an
``__all__`` appears on (or leaves) its page at the next build.

Each name is documented once, at its namespace path (``gatezoo.models.VectorGate``); the same
object reached by another public path (``gatezoo.VectorGate``) resolves to that entry, both in the
generated index of ``gatezoo.__all__`` and in cross-references written in docstrings. The
directive ``{gatezoo-toplevel}`` writes that index (and documents, at ``gatezoo.NAME``, a
top-level name that no namespace holds). ``coverage_check`` checks the outcome.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
from collections.abc import Iterable

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)


# -- what is public, and where each name is documented ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Public:
    """One public name: ``namespace.name`` is ``obj``, defined in ``module``."""

    namespace: str
    name: str
    obj: object
    module: str

    @property
    def path(self) -> str:
        return f"{self.namespace}.{self.name}"


def namespaces(config) -> list[str]:
    """``gatezoo`` and the namespaces whose ``__all__`` is public API, in the conf's order."""
    return ["gatezoo", *[n for n in config.gatezoo_api_namespaces if n != "gatezoo"]]


def _all(namespace: str) -> list[str]:
    mod = importlib.import_module(namespace)
    names = getattr(mod, "__all__", None)
    if names is None:
        raise ValueError(f"{namespace} has no __all__; the API pages are generated from it")
    return list(names)


def defining_module(namespace: str, name: str, obj: object) -> str:
    """The module that defines ``obj``: its ``__module__`` (classes, functions), else the
    deepest loaded submodule of ``namespace`` that binds ``name`` to it (data)."""
    mod = getattr(obj, "__module__", None) if (inspect.isclass(obj) or inspect.isroutine(obj)) \
        else None
    if isinstance(mod, str) and mod.startswith("gatezoo"):
        return mod
    holders = [m for m, module in list(sys.modules.items())
               if module is not None and m.startswith(namespace + ".")
               and vars(module).get(name, None) is obj]
    return max(holders, key=lambda m: m.count("."), default=namespace)


def public_names(config) -> list[Public]:
    """Every public name of every namespace, in ``__all__`` order."""
    out = []
    for ns in namespaces(config):
        mod = importlib.import_module(ns)
        for name in _all(ns):
            obj = getattr(mod, name)
            out.append(Public(ns, name, obj, defining_module(ns, name, obj)))
    return out


def _key(p: Public) -> tuple[str, int]:
    return p.name, id(p.obj)


def documented_paths(config) -> dict[tuple[str, int], str]:
    """``(name, id(obj)) -> the path it is documented at``: the first namespace after the top
    level that holds it, else ``gatezoo.NAME`` (a top-level name no namespace holds)."""
    out: dict[tuple[str, int], str] = {}
    for p in public_names(config):
        if p.namespace != "gatezoo":
            out.setdefault(_key(p), p.path)
    for p in public_names(config):
        out.setdefault(_key(p), p.path)
    return out


def page_names(config, page: str) -> list[Public]:
    """The names the API page ``page`` documents (see the module docstring)."""
    spec = config.gatezoo_api_pages[page]
    ns_list, modules = spec
    ns_list = [ns_list] if isinstance(ns_list, str) else list(ns_list)
    where = documented_paths(config)
    claimed: set[str] = set()
    for other, (other_ns, other_mods) in config.gatezoo_api_pages.items():
        other_ns = [other_ns] if isinstance(other_ns, str) else list(other_ns)
        if other != page and other_mods and set(other_ns) & set(ns_list):
            claimed.update(other_mods)
    out = []
    for p in public_names(config):
        if p.namespace not in ns_list or where[_key(p)] != p.path:
            continue
        inside = modules is None and p.module not in claimed or \
            modules is not None and p.module in modules
        if inside:
            out.append(p)
    return out


# -- text of one entry -------------------------------------------------------------------------


def _attr_doc(module: str, name: str) -> list[str]:
    """The ``#:`` comment (or docstring after the assignment) of module-level data."""
    try:
        docs = ModuleAnalyzer.for_module(module).find_attr_docs()
    except Exception:  # a module without source: no comment
        return []
    return list(docs.get(("", name), []))


def _is_namedtuple(obj: object) -> bool:
    return inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, "_fields")


def _data_value(obj: object) -> str:
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        keys = ", ".join(obj)
        if len(keys) <= 400:
            return f"a dict of {len(obj)} entries: {keys}"
    text = repr(obj)
    if len(text) <= 90:
        return text
    size = f", {len(obj)} entries" if hasattr(obj, "__len__") else ""
    return f"a {type(obj).__name__}{size}"


def entry_lines(p: Public, path: str) -> list[str]:
    """reST documenting ``p`` at ``path``."""
    obj = p.obj
    if inspect.isclass(obj):
        kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
        lines = [f".. {kind}:: {path}", "   :members:"]
        if _is_namedtuple(obj):  # fields are in the docstring's Attributes
            lines.append(f"   :exclude-members: {', '.join(obj._fields)}")
        return lines + [""]
    if inspect.isroutine(obj):
        return [f".. autofunction:: {path}", ""]
    doc = _attr_doc(p.module, p.name) or _attr_doc(p.namespace, p.name)
    lines = [f".. py:data:: {path}", f"   :type: {type(obj).__name__}", ""]
    lines += ["   " + line for line in (doc or [])]
    value = _data_value(obj)
    shown = f"``{value}``" if value.startswith(("(", "[", "'", '"')) or value[:1].isdigit() \
        else value
    lines += ["", f"   Value: {shown}" if "``" not in value else "", ""]
    return lines


def _first_paragraph(text: str) -> str:
    para = []
    for line in inspect.cleandoc(text or "").splitlines():
        if not line.strip():
            if para:
                break
            continue
        para.append(line.strip())
    return " ".join(para)


_ENDS = re.compile(r"(?<=\.)\s+(?=[A-Z(`:*])")


def _balanced(text: str) -> bool:
    """No literal, role or emphasis left open in ``text``."""
    rest = re.sub(r"``.*?``", "", text)
    return "``" not in rest and rest.count("`") % 2 == 0 and text.count("(") == text.count(")")


def summary(p: Public) -> str:
    """The first sentence of ``p``'s description, reST markup kept balanced."""
    obj = p.obj
    if inspect.isclass(obj) or inspect.isroutine(obj):
        text = _first_paragraph(getattr(obj, "__doc__", "") or "")
    else:
        text = _first_paragraph("\n".join(_attr_doc(p.module, p.name)))
    for match in _ENDS.finditer(text):
        head = text[:match.start()]
        if _balanced(head):
            return head
    return text


def module_title(module: str) -> str:
    doc = _first_paragraph(getattr(importlib.import_module(module), "__doc__", "") or "")
    return doc.rstrip(".") or module


def summary_table(entries: Iterable[tuple[str, str]]) -> list[str]:
    lines = [".. list-table::", "   :widths: 35 65", "   :class: api-summary", ""]
    for path, text in entries:
        lines += [f"   * - :py:obj:`~{path}`", f"     - {text or ' '}"]
    return lines + [""]


# -- directives -------------------------------------------------------------------------------


class ApiPage(SphinxDirective):
    """``{gatezoo-api} PAGE``: a summary table, then one section per defining module."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        config = self.env.config
        page = self.arguments[0]
        if page not in config.gatezoo_api_pages:
            raise self.error(f"gatezoo-api: no page {page!r} in conf.gatezoo_api_pages")
        names = page_names(config, page)
        if not names:
            raise self.error(f"gatezoo-api: page {page!r} documents no name")
        self.env.note_dependency(__file__)
        lines = summary_table((p.path, summary(p)) for p in names)
        by_module: dict[str, list[Public]] = {}
        for p in names:
            by_module.setdefault(p.module, []).append(p)
        for module, group in by_module.items():
            title = module_title(module)
            lines += [title, "-" * max(len(title), 4), "",
                      f"Defined in ``{module}``.", ""]
            for p in group:
                lines += entry_lines(p, p.path)
        return self._parse(lines)

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=self.env.docname), node)
        return node.children


class TopLevel(ApiPage):
    """``{gatezoo-toplevel}``: ``gatezoo.__all__``, each name linked to where it is documented."""

    required_arguments = 0

    def run(self) -> list[nodes.Node]:
        config = self.env.config
        where = documented_paths(config)
        top = [p for p in public_names(config) if p.namespace == "gatezoo"]
        lines = [".. list-table::", "   :widths: 30 40 30", "   :header-rows: 1",
                 "   :class: api-summary", "", "   * - name", "     - summary",
                 "     - documented at"]
        own = []
        for p in top:
            path = where[_key(p)]
            if path == p.path:
                own.append(p)
            lines += [f"   * - ``gz.{p.name}``", f"     - {summary(p) or ' '}",
                      f"     - :py:obj:`{path}`"]
        lines.append("")
        for p in own:
            lines += entry_lines(p, p.path)
        return self._parse(lines)


# -- every public path of a documented object resolves ---------------------------------------


def _resolve_alias(app: Sphinx, env, node, contnode):
    """``missing-reference``: a reference to another public path of a documented object
    (``gatezoo.VectorGate`` for ``gatezoo.models.VectorGate``) resolves to its entry."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("gatezoo"):
        return None
    obj = _import(target)
    if obj is _MISSING:
        return None
    name = target.rsplit(".", 1)[-1]
    path = documented_paths(app.config).get((name, id(obj)))
    if path is None or path == target:
        return None
    domain = env.get_domain("py")
    new = node.deepcopy()
    new["reftarget"] = path
    return domain.resolve_xref(env, node["refdoc"], app.builder, node.get("reftype", "obj"),
                               path, new, contnode)


_MISSING = object()


def _import(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, _MISSING)
            if obj is _MISSING:
                return _MISSING
        return obj
    return _MISSING


def setup(app: Sphinx) -> dict:
    app.add_config_value("gatezoo_api_namespaces", [], "env")
    app.add_config_value("gatezoo_api_pages", {}, "env")
    app.add_directive("gatezoo-api", ApiPage)
    app.add_directive("gatezoo-toplevel", TopLevel)
    app.connect("missing-reference", _resolve_alias)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
