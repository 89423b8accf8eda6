"""EPI mask: threshold the mean at the least dense point of its histogram."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from daskmask._logging import log
from daskmask.masking._mean import mask_img_from_time_mean, prepare_mean
from daskmask.masking._postprocess import post_process_mask
from daskmask.masking._validation import check_morphology_parameters, check_parameter_type

__all__ = ["check_epi_parameters", "compute_epi_mask", "epi_mask_from_mean", "epi_threshold"]

_EMPTY_EPI_MASK_ADVICE = "Are you sure that input data are EPI images not detrended. "


def check_epi_parameters(
    lower_cutoff: Any, upper_cutoff: Any, connected: Any, opening: Any
) -> None:
    """Check the types of the EPI-mask parameters (floats, bool, bool or int).

    Raises
    ------
    TypeError
        E.g. for ``lower_cutoff=0`` (an int): the cutoffs are fractions.

    """
    check_parameter_type(lower_cutoff, (float, np.floating), "lower_cutoff")
    check_parameter_type(upper_cutoff, (float, np.floating), "upper_cutoff")
    check_morphology_parameters(connected, opening)


def epi_threshold(
    mean: np.ndarray, lower_cutoff: float, upper_cutoff: float, exclude_zeros: bool = False
) -> float:
    """Find the intensity at the widest gap of the sorted mean between two fractions.

    The values of ``mean`` are sorted; between the ranks
    ``floor(lower_cutoff * n)`` and ``floor(upper_cutoff * n)`` the largest
    difference between consecutive values is found (the first one on ties),
    and the threshold is the middle of that gap (T. Nichols' heuristic: the
    least dense point of the histogram separates brain from background).

    Parameters
    ----------
    mean : numpy.ndarray
        Mean volume.
    lower_cutoff, upper_cutoff : float
        Fractions of the sorted values bounding the search.
    exclude_zeros : bool, default=False
        Ignore exact zeros (zero padding of resliced images).

    Returns
    -------
    float
        The threshold.

    """
    values = np.sort(np.ravel(mean))
    if exclude_zeros:
        values = values[values != 0]
    low = int(np.floor(lower_cutoff * len(values)))
    high = min(int(np.floor(upper_cutoff * len(values))), len(values) - 1)
    gaps = values[low + 1 : high + 1] - values[low:high]
    widest = gaps.argmax()
    return 0.5 * (values[widest + low] + values[widest + low + 1])


def epi_mask_from_mean(
    mean: np.ndarray,
    affine: np.ndarray,
    lower_cutoff: float = 0.2,
    upper_cutoff: float = 0.85,
    connected: bool = True,
    opening: bool | int = 2,
    exclude_zeros: bool = False,
    ensure_finite: bool = True,
    target_affine: np.ndarray | Sequence | None = None,
    target_shape: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Compute the EPI mask from the time-mean of a run (pure numpy).

    Parameters
    ----------
    mean : numpy.ndarray
        3-D mean over time (as returned by :func:`~daskmask.masking.mean_volume`);
        not modified.
    affine : numpy.ndarray
        Its 4x4 affine.
    lower_cutoff, upper_cutoff, connected, opening, exclude_zeros, ensure_finite
        See :func:`compute_epi_mask`.
    target_affine, target_shape
        Grid on which the mask is computed (the mean is resampled there with
        cubic splines and clipping first).

    Returns
    -------
    mask : numpy.ndarray
        3-D boolean mask.
    affine : numpy.ndarray
        Its 4x4 affine.

    """
    # The 1-voxel smoothing is tied to the opening: opening=False disables both.
    mean, affine = prepare_mean(
        mean, affine, target_affine, target_shape, smooth=(1 if opening else False)
    )
    if ensure_finite:
        # SPM writes NaNs outside the brain.
        mean[~np.isfinite(mean)] = 0
    threshold = epi_threshold(mean, lower_cutoff, upper_cutoff, exclude_zeros)
    mask = mean >= threshold
    mask = post_process_mask(
        mask, opening=opening, connected=connected, warning_msg=_EMPTY_EPI_MASK_ADVICE
    )
    return mask, affine


def compute_epi_mask(
    epi_img: Any,
    lower_cutoff: float = 0.2,
    upper_cutoff: float = 0.85,
    connected: bool = True,
    opening: bool | int = 2,
    exclude_zeros: bool = False,
    ensure_finite: bool = True,
    target_affine: np.ndarray | Sequence | None = None,
    target_shape: Sequence[int] | None = None,
    memory: Any = None,
    verbose: int = 0,
) -> nib.Nifti1Image:
    """Compute a brain mask from EPI data (3-D or 4-D), as nilearn's ``compute_epi_mask``.

    The time-mean is computed out of core with dask, optionally resampled,
    smoothed with a 1-voxel FWHM Gaussian when ``opening`` is truthy, then
    thresholded at the least dense point of its histogram between the
    ``lower_cutoff`` and ``upper_cutoff`` fractions, and cleaned up
    morphologically.

    Parameters
    ----------
    epi_img : path, glob, list of paths, nibabel image or xarray.DataArray
        3-D or 4-D EPI run(s); a list of 3-D images is stacked in time.
    lower_cutoff : float, default=0.2
        Lower fraction of the sorted intensities searched for the threshold.
    upper_cutoff : float, default=0.85
        Upper fraction of the sorted intensities searched for the threshold.
    connected : bool, default=True
        Keep only the largest connected component.
    opening : bool or int, default=2
        Order of the morphological opening (0/False: none, and no smoothing).
    exclude_zeros : bool, default=False
        Ignore zeros when choosing the threshold (zero-padded data).
    ensure_finite : bool, default=True
        Replace NaN and infinite values of the mean by 0.
    target_affine : array-like or None, default=None
        Compute the mask on this grid (3x3 or 4x4 affine).
    target_shape : sequence of 3 int or None, default=None
        Shape of that grid (with a 4x4 ``target_affine``).
    memory : object, default=None
        Accepted for nilearn compatibility and ignored: daskmask does not
        cache on disk.
    verbose : int, default=0
        Print a progress line when >= 1.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 3-D mask.

    Raises
    ------
    TypeError
        For parameters of the wrong type (e.g. an int cutoff).
    ValueError
        For images that are not 3-D or 4-D, or invalid target grids.

    Warns
    -----
    daskmask.exceptions.MaskWarning
        When the mask is empty.

    """
    check_epi_parameters(lower_cutoff, upper_cutoff, connected, opening)
    log("EPI mask computation", verbose)
    return mask_img_from_time_mean(
        epi_img,
        epi_mask_from_mean,
        lower_cutoff=lower_cutoff,
        upper_cutoff=upper_cutoff,
        connected=connected,
        opening=opening,
        exclude_zeros=exclude_zeros,
        ensure_finite=ensure_finite,
        target_affine=target_affine,
        target_shape=target_shape,
    )
