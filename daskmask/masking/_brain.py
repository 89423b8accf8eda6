"""Template masks: the MNI152 brain, grey- or white-matter template on the data's grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from daskmask._logging import log
from daskmask.image.resampling import grid_of, new_img_like
from daskmask.masking._mean import reference_image
from daskmask.masking._postprocess import post_process_mask
from daskmask.masking._templates import check_mask_type, resample_template
from daskmask.masking._validation import check_morphology_parameters, check_parameter_type

__all__ = ["brain_mask_from_grid", "compute_brain_mask"]


def brain_mask_from_grid(
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    threshold: float = 0.5,
    connected: bool = True,
    opening: bool | int = 2,
    mask_type: str = "whole-brain",
) -> np.ndarray:
    """Compute a template mask on a grid (pure, reads no data but the template).

    Parameters
    ----------
    target_affine : numpy.ndarray
        4x4 affine of the grid.
    target_shape : sequence of 3 int
        Shape of the grid.
    threshold, connected, opening, mask_type
        See :func:`compute_brain_mask`.

    Returns
    -------
    numpy.ndarray
        3-D boolean mask.

    """
    check_mask_type(mask_type)
    template = resample_template(mask_type, target_affine, target_shape[:3])
    mask = template >= threshold
    return np.asarray(
        post_process_mask(
            mask,
            opening=opening,
            connected=connected,
            warning_msg=(
                f"{mask_type} mask is empty, lower the threshold or check your input FOV"
            ),
        ),
        dtype=bool,
    )


def _check_brain_parameters(threshold: Any, connected: Any, opening: Any) -> None:
    check_parameter_type(threshold, (float, int, np.floating, np.integer), "threshold")
    check_morphology_parameters(connected, opening)


def compute_brain_mask(
    target_img: Any,
    threshold: float = 0.5,
    connected: bool = True,
    opening: bool | int = 2,
    memory: Any = None,
    verbose: int = 0,
    mask_type: str = "whole-brain",
) -> nib.Nifti1Image:
    """Compute the whole-brain, grey-matter or white-matter mask of an image's grid.

    The 1 mm MNI152 template selected by ``mask_type`` is resampled onto the
    grid of ``target_img`` (cubic spline, no clipping), thresholded, and
    cleaned up morphologically, as nilearn's ``compute_brain_mask``. Only
    the shape and the affine of ``target_img`` are used: its voxels are never
    read.

    Parameters
    ----------
    target_img : path, glob, list of paths, nibabel image or xarray.DataArray
        Image (3-D or 4-D) giving the grid.
    threshold : float, default=0.5
        Template values (scaled to [0, 1]) at or above it are in the mask.
    connected : bool, default=True
        Keep only the largest connected component.
    opening : bool or int, default=2
        Order of the morphological opening.
    memory : object, default=None
        Accepted for nilearn compatibility and ignored (the template and its
        spline coefficients are cached in memory instead).
    verbose : int, default=0
        Print a progress line when >= 1.
    mask_type : {"whole-brain", "gm", "wm"}, default="whole-brain"
        Which template.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 3-D mask with the target's affine.

    Raises
    ------
    ValueError
        For an unknown ``mask_type``.

    Warns
    -----
    daskmask.exceptions.MaskWarning
        When the mask is empty.

    Notes
    -----
    nilearn returns int8 data when both ``opening`` and ``connected`` are
    off; daskmask always returns uint8 masks.

    """
    _check_brain_parameters(threshold, connected, opening)
    log(f"Template {mask_type} mask computation", verbose)
    check_mask_type(mask_type)
    shape, affine = grid_of(target_img)
    mask = brain_mask_from_grid(
        affine,
        shape[:3],
        threshold=threshold,
        connected=connected,
        opening=opening,
        mask_type=mask_type,
    )
    return new_img_like(reference_image(target_img), mask, affine)
