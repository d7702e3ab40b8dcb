"""Experiments: the side-by-side grid (``compare``) and the paper's reproductions
(``appendix``, ``s1``, ``s2``; docs/theory.md §6.2-§6.4).

Each writes its results as JSON into a run folder; :mod:`gatezoo.report` turns a folder into
figures and ``report.html``. The submodules import JAX-heavy code lazily where they can, so
importing this package is cheap.
"""

from gatezoo.experiments.appendix import AppendixConfig, run_appendix
from gatezoo.experiments.compare import CompareConfig, run_compare
from gatezoo.experiments.s1 import S1Config, run_s1
from gatezoo.experiments.s2 import S2Config, run_s2

__all__ = ["AppendixConfig", "run_appendix", "CompareConfig", "run_compare", "S1Config",
           "run_s1", "S2Config", "run_s2"]
