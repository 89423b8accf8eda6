"""Linear detrending of columns, as a projection on a centred ramp."""

from __future__ import annotations

import numpy as np

_EPS64 = float(np.finfo(np.float64).eps)
#: Bytes of the row temporaries of the trend removal (fits in a core's cache).
_ROWS_BYTES = 1 << 20


def linear_ramp(n_samples: int, dtype: np.dtype) -> np.ndarray:
    """Centred ``arange(n_samples)`` of unit norm, in ``dtype``."""
    ramp = np.arange(n_samples, dtype=dtype)
    ramp -= ramp.mean()
    norm = np.sqrt((ramp**2).sum())
    if not norm < _EPS64:
        ramp /= norm
    return ramp


def detrend(x: np.ndarray, copy: bool = True) -> np.ndarray:
    """Remove the mean and the linear trend of every column of ``x``.

    Parameters
    ----------
    x : numpy.ndarray
        Float array ``(n_samples, n_features)``; with one sample it is
        returned unchanged.
    copy : bool
        Work on a copy (otherwise ``x`` is modified in place).

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``x``. Computed in ``x``'s dtype.

    """
    if copy:
        x = x.copy()
    if x.shape[0] == 1:
        return x
    x -= x.mean(axis=0)
    ramp = linear_ramp(x.shape[0], x.dtype)
    # Not np.dot: OpenBLAS splits a gemv between its threads and rounds the
    # columns at the split points differently, so the bits of a block would
    # depend on the BLAS threads of the process that cleans it (a recomputed
    # block on a restarted worker, a cluster against the threaded scheduler).
    # einsum sums every column in time order, whatever the threads (in float64,
    # which also keeps the slopes as accurate as BLAS's blocked float32 sums).
    slopes = np.einsum("t,tv->v", ramp, x, dtype=np.float64).astype(x.dtype, copy=False)
    # x -= outer(ramp, slopes), a few rows at a time: the same float
    # operations (hence the same bits as nilearn) without a temporary of the
    # size of x, whose allocation and extra pass cost more than the arithmetic.
    step = max(1, _ROWS_BYTES // max(1, x.shape[1] * x.itemsize))
    for start in range(0, x.shape[0], step):
        x[start : start + step] -= ramp[start : start + step, np.newaxis] * slopes
    return x
