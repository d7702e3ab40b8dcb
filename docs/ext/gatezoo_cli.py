"""The command-line reference, generated from the ``gatezoo`` argparse parser at build time.

``{gatezoo-cli}`` imports the parser builder named by ``conf.gatezoo_cli_parser``
(``"module:function"``) and writes the top-level options and one section per subcommand: its
usage line, description, every argument with its help (argparse's own expansion of
``%(default)s`` and the like), choices and default, and the epilog. Nothing is copied by hand,
so a flag added to ``gatezoo/cli.py`` is on the page at the next build.

Labels: ``cli`` (the page's top), ``cli-<command>`` and ``cli-<command>-<flag>`` (flag without
its dashes), e.g. ``cli-compare-lr-range``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import textwrap

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def _escape(text: str) -> str:
    return re.sub(r"([\\*`|_<>\[\]])", r"\\\1", text)


def _parser(spec: str) -> argparse.ArgumentParser:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)()


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name, "")


def _literal(text: str) -> list[str]:
    return ["::", ""] + ["   " + line for line in text.rstrip().splitlines()] + [""]


def _code(text: str, lang: str = "text") -> list[str]:
    return [f".. code-block:: {lang}", ""] + \
        ["   " + line for line in text.rstrip().splitlines()] + [""]


def _arguments(parser: argparse.ArgumentParser, command: str) -> list[str]:
    formatter = parser._get_formatter()
    lines: list[str] = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + formatter._format_args(
                action, action.dest.upper())
            term = ", ".join(f"``{opt}{metavar}``" for opt in action.option_strings)
            key = action.option_strings[-1].lstrip("-")
        else:
            term = f"``{formatter._metavar_formatter(action, action.dest)(1)[0]}``"
            key = action.dest
        help_text = formatter._expand_help(action) if action.help else ""
        facts = []
        if action.choices:
            facts.append("choices: " + ", ".join(f"``{c}``" for c in action.choices))
        if action.default not in (None, argparse.SUPPRESS, False, [], ()) and \
                "default" not in (action.help or ""):
            facts.append(f"default: ``{action.default!r}``")
        if isinstance(action, argparse._AppendAction):
            facts.append("repeatable")
        anchor = re.sub(r"[^a-z0-9]+", "-", f"cli-{command}-{key}".lower()).strip("-")
        lines += [f".. _{anchor}:", "", term]
        body = _escape(help_text) if help_text else "(no help text)"
        if facts:
            body += " (" + "; ".join(facts) + ")"
        lines += ["   " + line for line in textwrap.wrap(body, 96) or [""]] + [""]
    return lines


def _usage(parser: argparse.ArgumentParser) -> str:
    return parser.format_usage().removeprefix("usage: ").strip()


def _description(parser: argparse.ArgumentParser) -> list[str]:
    if not parser.description:
        return []
    if parser.formatter_class is argparse.RawDescriptionHelpFormatter:
        return _literal(parser.description)
    return [_escape(" ".join(parser.description.split())), ""]


class Cli(SphinxDirective):
    """``{gatezoo-cli}``: the whole command-line reference."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(__file__)
        parser = _parser(self.env.config.gatezoo_cli_parser)
        prog = parser.prog
        lines = _code(_usage(parser), "text") + _description(parser)
        lines += [".. rubric:: Options of every command", ""] + _arguments(parser, prog)
        lines += [".. rubric:: Commands", ""]
        subs = list(_subparsers(parser))
        for name, _, help_text in subs:
            lines += [f"- :ref:`{prog} {name} <cli-{name}>`: {_escape(help_text or '')}"]
        lines.append("")
        for name, sub, _ in subs:
            title = f"``{prog} {name}``"
            lines += [f".. _cli-{name}:", "", title, "-" * len(title), ""]
            lines += _code(_usage(sub), "text") + _description(sub)
            lines += _arguments(sub, name)
            if sub.epilog:
                lines += _literal(sub.epilog) if sub.formatter_class is \
                    argparse.RawDescriptionHelpFormatter else [_escape(sub.epilog), ""]
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=self.env.docname), node)
        return node.children


def setup(app: Sphinx) -> dict:
    app.add_config_value("gatezoo_cli_parser", "gatezoo.cli:_build_parser", "env")
    app.add_directive("gatezoo-cli", Cli)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
