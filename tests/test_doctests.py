"""Every docstring example in the package runs as a doctest.

Modules are found by walking the package, so a new module's examples run without being listed.
An example that cannot run (``# doctest: +SKIP``, or a commented-out ``>>> # ...`` line) is an
error, except in the modules of ``NOT_RUNNABLE`` below: the one place that names them, with the
reason. Each entry must still hold such an example, so a module whose examples have been made
runnable leaves the list.
"""

import doctest
import importlib
import pkgutil
import re

import pytest

import gatezoo

NOT_RUNNABLE: dict[str, str] = {}


# doctest drops a ">>> # ..." line (a comment is no example), so those are found in the text
_COMMENTED = re.compile(r"^\s*>>> #", re.MULTILINE)


def _idle(test: doctest.DocTest) -> list[str]:
    """Where ``test`` holds examples that cannot run: ``+SKIP`` or ``>>> #``."""
    idle = [f"{test.name}:{e.lineno}" for e in test.examples if e.options.get(doctest.SKIP)]
    if _COMMENTED.search(test.docstring or ""):
        idle.append(f"{test.name} ('>>> #' lines)")
    return idle


def _examples_by_module() -> dict[str, list[doctest.DocTest]]:
    found = {}
    for info in pkgutil.walk_packages(gatezoo.__path__, "gatezoo."):
        if info.name == "gatezoo.__main__":  # importing it runs the command line
            continue
        module = importlib.import_module(info.name)
        tests = [t for t in doctest.DocTestFinder().find(module, info.name)
                 if t.examples or _idle(t)]
        if tests:
            found[info.name] = tests
    return found


EXAMPLES = _examples_by_module()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docstring_examples_run(name):
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in EXAMPLES[name]:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    idle = [where for test in EXAMPLES[name] for where in _idle(test)]
    if name in NOT_RUNNABLE:
        assert idle, f"{name} has only runnable examples now: remove it from NOT_RUNNABLE"
    else:
        assert not idle, f"examples that cannot run (+SKIP or '>>> #'): {idle}"


def test_not_runnable_names_existing_modules():
    assert set(NOT_RUNNABLE) <= set(EXAMPLES)
