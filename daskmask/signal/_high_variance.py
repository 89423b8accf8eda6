"""High-variance confounds (CompCor-like) from time series."""

from __future__ import annotations

import numpy as np
from scipy import linalg

from daskmask.signal._checks import check_bool
from daskmask.signal._confounds import as_float
from daskmask.signal._detrend import detrend as detrend_columns

_BATCH_FROM = 500
_N_BATCHES = 20


def _mean_of_squares(series: np.ndarray) -> np.ndarray:
    """Mean over time of the squared values of every column (batched)."""
    n_columns = series.shape[1]
    n_batches = _N_BATCHES if n_columns >= _BATCH_FROM else 1
    out = np.empty(n_columns)
    for part in np.array_split(np.arange(n_columns), n_batches):
        if part.size:
            chunk = series[:, part[0] : part[-1] + 1] ** 2
            out[part[0] : part[-1] + 1] = chunk.mean(axis=0)
    return out


def high_variance_confounds(
    series: np.ndarray,
    n_confounds: int = 5,
    percentile: float = 2.0,
    detrend: bool = True,
) -> np.ndarray:
    """Principal time courses of the columns with the highest variance.

    Parameters
    ----------
    series : numpy.ndarray
        ``(n_samples, n_features)``; a time series is a column.
    n_confounds : int, default=5
        Number of time courses to return.
    percentile : float, default=2.0
        Keep the columns whose mean of squares is above this upper percentile
        (``0 <= percentile <= 100``).
    detrend : bool, default=True
        Remove the mean and linear trend of every column first.

    Returns
    -------
    numpy.ndarray
        ``(n_samples, n_confounds)``: eigenvectors of ``X Xᵀ / n_samples``
        (``X`` the kept columns) with the largest eigenvalues, largest first.

    Notes
    -----
    Integer series are converted to floats first (nilearn squares them in
    their integer type when ``detrend=False``, which can overflow). The mean
    of squares is taken without removing the mean (after the optional
    detrending), like nilearn's implementation of the CompCor approach
    (Behzadi et al. 2007).

    """
    check_bool(detrend, "detrend")
    series = as_float(np.asarray(series))
    if detrend:
        series = detrend_columns(series)
    variance = _mean_of_squares(series)
    threshold = np.nanpercentile(variance, 100.0 - percentile)
    kept = series[:, variance > threshold]
    values, vectors = linalg.eigh(kept.dot(kept.T) / kept.shape[0])
    order = np.argsort(values)[::-1]
    return vectors[:, order[:n_confounds]].copy()
