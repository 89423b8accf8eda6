"""Standardization of columns: z-score (sample std) and percent signal change."""

from __future__ import annotations

from typing import Any

import numpy as np

from daskmask._warnings import warn_user

_EPS64 = float(np.finfo(np.float64).eps)
PSC_ZERO_MEAN = (
    "psc standardization strategy is meaningless for features that have a "
    "mean of 0. These time series are set to 0."
)
BOOL_STANDARDIZE = (
    "boolean values for 'standardize' will be deprecated in nilearn 0.15.0.\n"
    "Use 'zscore_sample' instead of 'True' or use 'None' instead of 'False'."
)


def normalize_standardize(standardize: Any) -> str | None:
    """Map ``True`` / ``False`` to ``"zscore_sample"`` / None with a FutureWarning."""
    if isinstance(standardize, bool):
        warn_user(BOOL_STANDARDIZE, FutureWarning)
        return "zscore_sample" if standardize else None
    return standardize


def zscore(x: np.ndarray, copy: bool = True) -> np.ndarray:
    """Centre every column and divide it by its sample std (ddof=1).

    Columns whose std is below float64 eps are only centred. Returns an
    array of ``x``'s dtype: a new one, or ``x`` itself when ``copy=False``.
    """
    if copy:
        x = x - x.mean(axis=0)
    else:
        x -= x.mean(axis=0)
    std = x.std(axis=0, ddof=1)
    std[std < _EPS64] = 1.0
    x /= std
    return x


def psc(x: np.ndarray, warn: bool = True) -> np.ndarray:
    """Percent signal change ``(x - mean) / |mean| * 100`` of every column.

    Columns whose mean is below float64 eps in magnitude are set to 0 (with a
    warning). Returns a new array of ``x``'s dtype.
    """
    mean = x.mean(axis=0)
    invalid = np.absolute(mean) < _EPS64
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (x - mean) / np.absolute(mean)
    out *= 100
    if np.any(invalid):
        if warn:
            warn_user(PSC_ZERO_MEAN)
        out[:, invalid] = 0
    return out


def standardize(x: np.ndarray, method: str | None, copy: bool = True) -> np.ndarray:
    """Apply ``method`` ("zscore_sample", "psc" or None) to the columns of ``x``.

    With one sample the signal is returned unchanged (the caller warns).
    ``copy=False`` lets the z-score work in place.
    """
    if method is None or x.shape[0] == 1:
        return x
    if method == "zscore_sample":
        return zscore(x, copy=copy)
    return psc(x)
