"""Gaussian smoothing of volumes, equal to nilearn 0.14.1's ``smooth_array``.

The function works on one in-memory array (3-D, or 4-D with time last): it
is meant to be mapped over chunks of a 4-D run that are complete in space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d

from daskmask._warnings import warn_user

#: FWHM of a Gaussian divided by its standard deviation, sqrt(8 ln 2).
FWHM_TO_SIGMA_RATIO = np.sqrt(8 * np.log(2))

#: Weight of each of the 6 face neighbours in the "fast" smoothing.
_FAST_NEIGHBOUR_WEIGHT = 0.2


def _fast_smooth(arr: np.ndarray) -> np.ndarray:
    """Average each voxel with its 6 face neighbours (weight 0.2 each).

    The sum is divided by the total weight of a full neighbourhood, so uniform
    regions stay uniform away from the array edges.
    """
    smoothed = arr.copy()
    weighted = _FAST_NEIGHBOUR_WEIGHT * arr
    for axis in range(3):
        lower = [slice(None)] * arr.ndim
        upper = [slice(None)] * arr.ndim
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        smoothed[tuple(lower)] += weighted[tuple(upper)]
        smoothed[tuple(upper)] += weighted[tuple(lower)]
    smoothed /= 1 + 6 * _FAST_NEIGHBOUR_WEIGHT
    return smoothed


def fwhm_to_sigmas(fwhm: float | Sequence[float | None], affine: np.ndarray) -> np.ndarray:
    """Convert a FWHM in world units into per-axis Gaussian sigmas in voxels.

    Parameters
    ----------
    fwhm : float or sequence of 3 (float or None)
        Full width at half maximum, in the units of the affine (mm). ``None``
        entries mean "no smoothing along that axis".
    affine : numpy.ndarray
        3x3 or 4x4 affine; the voxel size is the norm of each column.

    Returns
    -------
    numpy.ndarray
        Sigma per axis, in voxels.

    """
    fwhm_values = np.asarray([fwhm]).ravel()
    fwhm_values = np.asarray([0.0 if value is None else value for value in fwhm_values])
    scale = np.asarray(affine)[:3, :3]
    voxel_size = np.sqrt(np.sum(scale**2, axis=0))
    return fwhm_values / (FWHM_TO_SIGMA_RATIO * voxel_size)


def smooth_array(
    arr: np.ndarray,
    affine: np.ndarray | None,
    fwhm: float | str | Sequence[float | None] | None = None,
    ensure_finite: bool = True,
    copy: bool = True,
) -> np.ndarray:
    """Smooth the three spatial axes of an array with a Gaussian kernel.

    Parameters
    ----------
    arr : numpy.ndarray
        3-D volume or 4-D array with time last.
    affine : numpy.ndarray or None
        3x3 or 4x4 affine giving the voxel size (unused for ``"fast"``).
    fwhm : float, sequence of 3 (float or None), "fast" or None, default=None
        Full width at half maximum in mm. ``"fast"`` uses a cheap
        6-neighbour average; ``None`` does not smooth; 0 warns and does not
        smooth.
    ensure_finite : bool, default=True
        Replace NaN and infinite values by 0 before filtering (so that they do
        not spread).
    copy : bool, default=True
        Leave ``arr`` untouched. With ``copy=False`` a float input is
        filtered in place.

    Returns
    -------
    numpy.ndarray
        Smoothed array. Integer inputs become float32 (float64 for 64-bit
        integers).

    """
    if isinstance(fwhm, (int, float)) and not isinstance(fwhm, bool) and fwhm == 0.0:
        warn_user(
            f"The parameter 'fwhm' for smoothing is specified as {fwhm}. Setting it to None "
            "(no smoothing will be performed)",
        )
        fwhm = None
    if arr.dtype.kind in "iu":
        # 64-bit integers need float64 to be represented; others fit in float32.
        arr = arr.astype(np.float64 if arr.dtype.itemsize == 8 else np.float32)
    if copy:
        arr = arr.copy()
    if ensure_finite:
        # SPM writes NaNs outside the brain; they would contaminate neighbours.
        arr[~np.isfinite(arr)] = 0
    if isinstance(fwhm, str) and fwhm == "fast":
        return _fast_smooth(arr)
    if fwhm is not None:
        for axis, sigma in enumerate(fwhm_to_sigmas(fwhm, affine)):
            if sigma > 0.0:
                gaussian_filter1d(arr, sigma, output=arr, axis=axis)
    return arr
