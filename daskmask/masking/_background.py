"""Background mask: everything that differs from the value at the volume's border."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from daskmask._logging import log
from daskmask.masking._mean import mask_img_from_time_mean, prepare_mean
from daskmask.masking._postprocess import post_process_mask
from daskmask.masking._validation import check_morphology_parameters, check_parameter_type

__all__ = [
    "background_mask_from_mean",
    "border_values",
    "check_background_parameters",
    "compute_background_mask",
]

_EMPTY_BACKGROUND_MASK_ADVICE = "Are you sure that input images have a homogeneous background."


def check_background_parameters(border_size: Any, connected: Any, opening: Any) -> None:
    """Check the types of the background-mask parameters (int, bool, bool or int).

    Raises
    ------
    TypeError
        For a parameter of the wrong type (booleans are not border sizes).

    """
    check_parameter_type(border_size, (int, np.integer), "border_size")
    check_morphology_parameters(connected, opening)


def border_values(volume: np.ndarray, border_size: int) -> np.ndarray:
    """Return the values of the six border slabs of a volume, concatenated.

    Edge and corner voxels belong to several slabs and are repeated.

    Parameters
    ----------
    volume : numpy.ndarray
        3-D array.
    border_size : int
        Thickness of each slab in voxels.

    Returns
    -------
    numpy.ndarray
        1-D array of border values.

    """
    slabs = []
    for axis in range(3):
        for part in (slice(None, border_size), slice(-border_size, None)):
            index = [slice(None)] * 3
            index[axis] = part
            slabs.append(volume[tuple(index)].ravel())
    return np.concatenate(slabs)


def background_mask_from_mean(
    mean: np.ndarray,
    affine: np.ndarray,
    border_size: int = 2,
    connected: bool = False,
    opening: bool | int = False,
    target_affine: np.ndarray | Sequence | None = None,
    target_shape: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Compute the background mask from the time-mean of a run (pure numpy).

    If any border voxel of the mean is NaN, NaN is taken as the background
    (SPM convention) and the mask is every non-NaN voxel. Otherwise the
    background is the *median* of the border values and the mask is every
    voxel whose mean differs from it exactly.

    Parameters
    ----------
    mean : numpy.ndarray
        3-D mean over time; not modified.
    affine : numpy.ndarray
        Its 4x4 affine.
    border_size, connected, opening
        See :func:`compute_background_mask`.
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
    mean, affine = prepare_mean(mean, affine, target_affine, target_shape)
    border = border_values(mean, border_size)
    if np.isnan(border).any():
        mask = ~np.isnan(mean)
    else:
        mask = mean != np.median(border)
    mask = post_process_mask(
        mask, opening=opening, connected=connected, warning_msg=_EMPTY_BACKGROUND_MASK_ADVICE
    )
    return mask, affine


def compute_background_mask(
    data_imgs: Any,
    border_size: int = 2,
    connected: bool = False,
    opening: bool | int = False,
    target_affine: np.ndarray | Sequence | None = None,
    target_shape: Sequence[int] | None = None,
    memory: Any = None,
    verbose: int = 0,
) -> nib.Nifti1Image:
    """Compute a mask by guessing the background from the image border.

    Same parameters and result as nilearn's ``compute_background_mask``;
    the time-mean is computed out of core with dask.

    Parameters
    ----------
    data_imgs : path, glob, list of paths, nibabel image or xarray.DataArray
        3-D or 4-D image(s); a list of 3-D images is stacked in time.
    border_size : int, default=2
        Thickness in voxels of the border used to estimate the background.
    connected : bool, default=False
        Keep only the largest connected component.
    opening : bool or int, default=False
        Order of the morphological opening.
    target_affine : array-like or None, default=None
        Compute the mask on this grid (3x3 or 4x4 affine).
    target_shape : sequence of 3 int or None, default=None
        Shape of that grid (with a 4x4 ``target_affine``).
    memory : object, default=None
        Accepted for nilearn compatibility and ignored.
    verbose : int, default=0
        Print a progress line when >= 1.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 3-D mask.

    Warns
    -----
    daskmask.exceptions.MaskWarning
        When the mask is empty.

    """
    check_background_parameters(border_size, connected, opening)
    log("Background mask computation", verbose)
    return mask_img_from_time_mean(
        data_imgs,
        background_mask_from_mean,
        border_size=border_size,
        connected=connected,
        opening=opening,
        target_affine=target_affine,
        target_shape=target_shape,
    )
