"""Docs-side workarounds for docstrings that Napoleon cannot read as written.

Each rule here rewrites a docstring while autodoc reads it; the source is left alone (the docs
do not own ``gatezoo/``). Every rule names the pattern it repairs, so that it can be dropped
once the docstrings are fixed at the source; ``docs/README.md`` lists the docstrings concerned.

1. A Google-style section header with a remark in parentheses, e.g. ``Args (constructor):``,
   ``Attributes (all time-major):`` or ``Example (through :func:`gatezoo.attach`, ...):`` (it
   may span lines). Napoleon only knows the bare header, so the section's indented body would
   be read as an unexpected block quote. The rule moves the remark into a paragraph of its own
   before the bare header: ``(constructor)`` then ``Args:``.
2. Not a docstring but a signature: a Flax ``nnx.Module`` class reports ``(*args, **kwargs)``
   (the signature of ``nnx``'s metaclass ``__call__``); the rule shows its ``__init__``'s.
"""

from __future__ import annotations

import inspect
import re

from sphinx.application import Sphinx

_SECTIONS = ("Args", "Arguments", "Attributes", "Example", "Examples", "Returns", "Raises",
             "Yields", "Note", "Notes", "Warning", "Warnings")
_HEADER = re.compile(r"^(\s*)(" + "|".join(_SECTIONS) + r") \((.*)$")


def split_section_remarks(lines: list[str]) -> list[str]:
    """Rule 1 on the lines of one docstring; returns the new lines."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _HEADER.match(lines[i])
        if match:
            indent, section, rest = match.groups()
            remark = [rest]
            j = i
            while not remark[-1].rstrip().endswith("):") and j + 1 < len(lines) and \
                    lines[j + 1].strip():
                j += 1
                remark.append(lines[j].strip())
            if remark[-1].rstrip().endswith("):"):
                text = " ".join(part.strip() for part in remark).rstrip()[:-2]
                out += [f"{indent}({text})", "", f"{indent}{section}:"]
                i = j + 1
                continue
        out.append(lines[i])
        i += 1
    return out


def _process(app: Sphinx, what: str, name: str, obj, options, lines: list[str]) -> None:
    lines[:] = split_section_remarks(lines)


def _module_signature(app: Sphinx, what: str, name: str, obj, options, signature,
                      return_annotation):
    """Rule 2: an ``nnx.Module`` class gets the signature of its ``__init__``."""
    if what != "class" or not inspect.isclass(obj) or signature not in (None, "",
                                                                       "(*args, **kwargs)",
                                                                       "(*args: Any, **kwargs: Any)"):
        return None
    try:
        from flax import nnx
    except ImportError:
        return None
    if not issubclass(obj, nnx.Module) or "__init__" not in vars(obj) and not any(
            "__init__" in vars(c) for c in obj.__mro__[1:] if issubclass(c, nnx.Module)
            and c is not nnx.Module):
        return None
    from sphinx.util.inspect import stringify_signature

    try:
        sig = inspect.signature(obj.__init__, eval_str=True)
    except Exception:  # an annotation that does not evaluate: show it as written
        sig = inspect.signature(obj.__init__)
    params = list(sig.parameters.values())[1:]  # without self
    sig = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
    return stringify_signature(sig, unqualified_typehints=True), None


def setup(app: Sphinx) -> dict:
    app.connect("autodoc-process-signature", _module_signature)
    # before napoleon (priority 500) reads the sections
    app.connect("autodoc-process-docstring", _process, priority=100)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
