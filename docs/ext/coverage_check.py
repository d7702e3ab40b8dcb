"""Fails the docs build when a public name is not documented in the API pages.

Public means: in ``gatezoo.__all__`` or in the ``__all__`` of a namespace listed in
``conf.gatezoo_api_namespaces``. Documented means: the Python domain of the built environment
holds an entry for the name's path, or for the path where the same object is documented (a
top-level name ``gatezoo.X`` re-exported from ``gatezoo.models`` is documented once, at
``gatezoo.models.X``). The check runs

* as its own builder, ``python -m sphinx -b coverage_check docs docs/_build/coverage`` (it
  writes nothing; the exit status is the verdict, and ``docs/build.sh`` runs it), and
* after every build that reads sources, in ``env-check-consistency``,

and raises, naming every undocumented name, so no ``-W`` is needed for it to fail the build.
The API pages are generated from the same lists (``gatezoo_api``), so a failure means a page
spec in ``conf.py`` lost a name, a directive was removed from a page, or autodoc could not
import an object.
"""

from __future__ import annotations

from sphinx.application import Sphinx
from sphinx.builders import Builder
from sphinx.errors import ExtensionError
from sphinx.util import logging

import gatezoo_api

logger = logging.getLogger(__name__)


def undocumented(env) -> list[str]:
    """The public paths with no entry of their own, nor of their object, in the py domain."""
    objects = env.get_domain("py").objects
    where = gatezoo_api.documented_paths(env.config)
    missing = []
    for p in gatezoo_api.public_names(env.config):
        if p.path in objects:
            continue
        target = where.get((p.name, id(p.obj)))
        if target is None or target not in objects:
            missing.append(p.path)
    return missing


def check(env) -> None:
    missing = undocumented(env)
    if missing:
        raise ExtensionError(
            f"{len(missing)} public name(s) are not documented in the API pages: "
            + ", ".join(missing)
            + ". Each namespace of conf.gatezoo_api_namespaces needs a page in "
            "conf.gatezoo_api_pages whose {gatezoo-api} directive is on a page of the site."
        )
    logger.info(f"coverage_check: all {len(gatezoo_api.public_names(env.config))} public "
                "names are documented")


class CoverageCheck(Builder):
    """``-b coverage_check``: the check alone; writes no output."""

    name = "coverage_check"
    epilog = "Every public name of gatezoo is documented."

    def init(self) -> None:
        pass

    def get_outdated_docs(self):
        return []

    def get_target_uri(self, docname: str, typ: str | None = None) -> str:
        return ""

    def prepare_writing(self, docnames) -> None:
        pass

    def write_doc(self, docname, doctree) -> None:
        pass

    def finish(self) -> None:
        check(self.env)


def _after_reading(app: Sphinx, env) -> None:
    check(env)


def setup(app: Sphinx) -> dict:
    app.add_builder(CoverageCheck)
    app.connect("env-check-consistency", _after_reading)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
