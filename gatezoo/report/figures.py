"""A figure as data plus a picture: what a report page shows and what the tests check.

Each builder in :mod:`gatezoo.report` returns :class:`ReportFigure` objects. A figure keeps the
arrays it plots in ``data`` (so a test can compare them with the run's metrics), a caption that
says what it shows and how to read it, and the rendered PNG bytes (matplotlib, Agg backend: no
display needed).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # rendering only to files; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["ReportFigure", "render", "new_figure", "COLORS", "color_for"]

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def color_for(i: int) -> str:
    return COLORS[i % len(COLORS)]


@dataclasses.dataclass
class ReportFigure:
    """One figure of a report.

    Attributes:
      name: file stem (``figures/<name>.png``), unique within a report.
      title: a short heading.
      caption: what the figure shows and how to read it.
      data: the arrays drawn, keyed by series name (lists of floats or nested dicts).
      png: the rendered image.
    """

    name: str
    title: str
    caption: str
    data: dict[str, Any]
    png: bytes


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.2, height: float = 3.6):
    """A figure with a grid of axes, sized per panel; returns ``(fig, axes_array)``."""
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, dpi=90
    )
    return fig, axes


def render(fig, tight: bool = True) -> bytes:
    """PNG bytes of a matplotlib figure, which is then closed (no figure leaks).

    ``tight=False`` keeps a layout already made (e.g. room reserved for a figure legend)."""
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def finite(values) -> np.ndarray:
    """Float array with ``None`` as NaN."""
    return np.array([np.nan if v is None else v for v in np.ravel(values)], dtype=np.float64)
