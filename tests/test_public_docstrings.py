"""Every public name of ``gatezoo`` documents itself in the optax manner: a runnable example and
its references.

The rule, for each name of ``gatezoo.__all__`` but ``__version__``:

* its own docstring (``inspect.getdoc``) holds a doctest example, a ``>>>`` line (the examples
  run in ``tests/test_doctests.py``);
* it has a ``References:`` section with a body. Where no paper or book applies (a registry
  function, a naming rule), the body is a note that begins with ``None:`` and says why, so a
  missing section is never silent.
"""

import inspect
import re

import pytest

import gatezoo

NAMES = [name for name in gatezoo.__all__ if name != "__version__"]

# "References:" at the start of a line, then an indented, non-empty first line of its body
_REFERENCES = re.compile(r"^(?P<indent>[ ]*)References:[ ]*\n(?P=indent)[ ]+(?P<body>\S.*)$",
                         re.MULTILINE)


def _doc(name: str) -> str:
    return inspect.getdoc(getattr(gatezoo, name)) or ""


def test_every_public_name_is_checked():
    assert len(NAMES) == len(set(NAMES)) and NAMES


@pytest.mark.parametrize("name", NAMES)
def test_docstring_has_an_example(name):
    assert ">>>" in _doc(name), f"gatezoo.{name}: no '>>>' example in its docstring"


@pytest.mark.parametrize("name", NAMES)
def test_docstring_has_references(name):
    found = _REFERENCES.search(_doc(name))
    assert found, (f"gatezoo.{name}: no 'References:' section with a body (write 'None: <why>' "
                   "where no reference applies)")
    body = found["body"]
    if body.startswith("None"):
        assert re.match(r"None: \S+ \S+", body), f"gatezoo.{name}: 'None:' must say why"


@pytest.mark.parametrize("name", NAMES)
def test_docstring_cites_the_theory_page_by_its_name(name):
    design_note = "THEORY" + ".md"  # spelled apart: no file of the project names it
    assert design_note not in _doc(name), f"gatezoo.{name}: cite docs/theory.md instead"
