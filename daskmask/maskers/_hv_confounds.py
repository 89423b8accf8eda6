"""High-variance confounds of a whole run, over voxel blocks, in bounded memory.

nilearn computes them on every voxel of the field of view (not only the
mask's): detrend each voxel's time series, keep the voxels whose mean of
squares is above the 98th percentile, and return the top eigenvectors of the
kept series' time x time covariance. Here the run is reorganised into voxel
blocks once; a first pass computes every voxel's mean of squares, and the
second gathers only the kept (about 2 %) voxels, so memory stays bounded by a
block plus the small kept matrix.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import linalg

from daskmask.extraction import extract_signals
from daskmask.signal._confounds import as_float
from daskmask.signal._detrend import detrend as detrend_columns
from daskmask.signal._high_variance import _mean_of_squares


def _detrended(block: np.ndarray, detrend: bool) -> np.ndarray:
    block = as_float(np.asarray(block))
    return detrend_columns(block) if detrend else block


def _block_mean_of_squares(block: np.ndarray, detrend: bool) -> np.ndarray:
    return _mean_of_squares(_detrended(block, detrend))


def _kept_columns(block: np.ndarray, keep: np.ndarray, detrend: bool) -> np.ndarray:
    return _detrended(block[:, keep], detrend)


def run_high_variance_confounds(
    run: xr.DataArray, n_confounds: int = 5, percentile: float = 2.0, detrend: bool = True
) -> np.ndarray:
    """Return the ``(n_time, n_confounds)`` high-variance confounds of a 4D run.

    Parameters
    ----------
    run : xarray.DataArray
        Lazy ``(x, y, z, time)`` run from :func:`daskmask.open_nifti`.
    n_confounds : int, default=5
        Number of confounds.
    percentile : float, default=2.0
        Keep the voxels above this upper percentile of mean of squares.
    detrend : bool, default=True
        Linearly detrend each voxel first.

    Returns
    -------
    numpy.ndarray
        The eigenvectors with the largest eigenvalues, largest first.

    """
    everything = np.ones(run.shape[:3], dtype=bool)
    series = extract_signals(run, everything, ensure_finite=False)
    variances = series.map_blocks(_block_mean_of_squares, detrend, drop_axis=0, dtype=np.float64)
    (variances,) = dask.compute(variances)
    threshold = np.nanpercentile(variances, 100.0 - percentile)
    keep = variances > threshold
    offsets = np.cumsum((0, *series.chunks[1]))
    pieces = [
        da.from_delayed(
            dask.delayed(_kept_columns)(block, keep[start:stop], detrend),
            shape=(series.shape[0], int(keep[start:stop].sum())),
            dtype=series.dtype,
        )
        for block, start, stop in zip(
            series.to_delayed()[0], offsets[:-1], offsets[1:], strict=True
        )
    ]
    (kept,) = dask.compute(da.concatenate(pieces, axis=1))
    kept = np.asarray(kept)
    values, vectors = linalg.eigh(kept.dot(kept.T) / kept.shape[0])
    order = np.argsort(values)[::-1]
    return vectors[:, order[:n_confounds]].copy()
