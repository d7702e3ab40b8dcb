"""Small statistics shared by the experiments: outlier rules and robust summaries.

Everything here works on numpy arrays on the host: the experiments compute their per-seed numbers
on the device (vmapped over seeds) and aggregate the few hundred resulting values here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "iqr_inliers",
    "median_iqr",
    "mean_std",
    "to_list",
    "as_array",
]


def iqr_inliers(values: np.ndarray, k: float = 1.5) -> np.ndarray:
    """Boolean mask of values inside ``[Q1 - k IQR, Q3 + k IQR]`` (Tukey's fences); NaN -> False."""
    v = np.asarray(values, np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return finite
    q1, q3 = np.percentile(v[finite], [25, 75])
    iqr = q3 - q1
    return finite & (v >= q1 - k * iqr) & (v <= q3 + k * iqr)


def median_iqr(values: np.ndarray, axis: int = 0) -> dict[str, np.ndarray]:
    """Median and quartiles along ``axis`` (NaNs ignored)."""
    v = np.asarray(values, np.float64)
    q25, med, q75 = np.nanpercentile(v, [25, 50, 75], axis=axis)
    return {"median": med, "q25": q25, "q75": q75}


def mean_std(values: np.ndarray, axis: int = 0) -> dict[str, np.ndarray]:
    """Mean and (population) standard deviation along ``axis`` (NaNs ignored)."""
    v = np.asarray(values, np.float64)
    return {"mean": np.nanmean(v, axis=axis), "std": np.nanstd(v, axis=axis)}


def to_list(value):
    """Recursively converts numpy arrays and scalars to JSON-friendly lists and floats.

    Non-finite floats become ``None`` so the JSON stays standard (no ``NaN`` tokens).
    """
    if isinstance(value, dict):
        return {str(k): to_list(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_list(v) for v in value]
    if isinstance(value, np.ndarray) or np.isscalar(value) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.kind in "fc":
            arr = arr.astype(np.float64)
            out = np.where(np.isfinite(arr), arr, np.nan).tolist()
            return _nan_to_none(out)
        if arr.dtype.kind == "b":
            return arr.tolist()
        if arr.dtype.kind in "iu":
            return arr.tolist()
        return arr.tolist()
    return value


def _nan_to_none(obj):
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def as_array(values: Sequence | None) -> np.ndarray:
    """Inverse of :func:`to_list` for numbers: ``None`` back to NaN."""
    if values is None:
        return np.array(np.nan)
    return np.array(_none_to_nan(values), dtype=np.float64)


def _none_to_nan(obj):
    if isinstance(obj, list):
        return [_none_to_nan(v) for v in obj]
    return np.nan if obj is None else obj
