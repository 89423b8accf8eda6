"""Masks common to several runs, and the intersection of masks."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import xarray as xr

from daskmask.image.resampling import grid_of, new_img_like
from daskmask.masking._background import background_mask_from_mean, check_background_parameters
from daskmask.masking._brain import compute_brain_mask
from daskmask.masking._epi import check_epi_parameters, epi_mask_from_mean
from daskmask.masking._mean import MaskFromMean, masks_from_time_means, reference_image
from daskmask.masking._postprocess import largest_connected_component
from daskmask.masking._validation import _load_image_data, load_mask_img

__all__ = [
    "compute_multi_background_mask",
    "compute_multi_brain_mask",
    "compute_multi_epi_mask",
    "intersect_mask_arrays",
    "intersect_masks",
]

#: A threshold of exactly 1 must still keep voxels present in every mask.
_MAX_THRESHOLD = 1 - 1.0e-7


def _check_threshold(threshold: float) -> float:
    if threshold > 1:
        raise ValueError("The threshold should be smaller than 1")
    if threshold < 0:
        raise ValueError("The threshold should be greater than 0")
    return min(threshold, _MAX_THRESHOLD)


def _check_same_grid(grids: Sequence[tuple[tuple[int, ...], np.ndarray]]) -> None:
    """Raise nilearn's field-of-view ValueError listing every mismatching pair."""
    errors = []
    for (i, (shape_a, affine_a)), (j, (shape_b, affine_b)) in itertools.combinations(
        enumerate(grids), 2
    ):
        if tuple(shape_a[:3]) != tuple(shape_b[:3]):
            errors.append(f"- img_#{i} and img_#{j} do not have the same shape")
        if not np.allclose(affine_a, affine_b):
            errors.append(f"- img_#{i} and img_#{j} do not have the same affine")
    if errors:
        raise ValueError("Following field of view errors were detected:\n" + "\n".join(errors))


def intersect_mask_arrays(
    masks: Sequence[np.ndarray], threshold: float = 0.5, connected: bool = True
) -> np.ndarray:
    """Keep the voxels present in more than ``threshold`` of the masks (pure numpy).

    Parameters
    ----------
    masks : sequence of numpy.ndarray
        Boolean 3-D masks of the same shape.
    threshold : float, default=0.5
        0 gives the union, 1 the intersection; a voxel is kept when its count
        is strictly above ``threshold * len(masks)``.
    connected : bool, default=True
        Keep only the largest connected component of a non-empty result.

    Returns
    -------
    numpy.ndarray
        int8 0/1 array.

    """
    threshold = _check_threshold(threshold)
    counts = np.zeros(np.shape(masks[0]), dtype=np.int64)
    for mask in masks:
        counts += np.asarray(mask, dtype=bool)
    common = counts > threshold * len(masks)
    if connected and common.any():
        common = largest_connected_component(common)
    return common.astype(np.int8)


def intersect_masks(
    mask_imgs: Sequence[Any], threshold: float = 0.5, connected: bool = True
) -> nib.Nifti1Image:
    """Compute the threshold-level intersection of several masks.

    Same parameters and result as nilearn's ``intersect_masks``.

    Parameters
    ----------
    mask_imgs : list of paths, nibabel images or xarray.DataArray
        3-D binary masks with the same shape and affine.
    threshold : float, default=0.5
        Fraction of the masks a voxel must belong to (strictly more than
        ``threshold * n``): 0 is the union, 1 the intersection.
    connected : bool, default=True
        Keep only the largest connected component.

    Returns
    -------
    nibabel.Nifti1Image
        int8 3-D mask with the affine of the first mask.

    Raises
    ------
    ValueError
        For a threshold outside [0, 1], an empty list, different fields of
        view, or masks that are not binary.
    TypeError
        When an element is not an image.

    """
    _check_threshold(threshold)  # before anything is read, as nilearn
    if len(mask_imgs) == 0:
        raise ValueError("No mask provided for intersection")
    wrong = [
        f"mask_imgs[{i}] = {type(img).__name__}"
        for i, img in enumerate(mask_imgs)
        if not isinstance(img, (str, os.PathLike, nib.spatialimages.SpatialImage, xr.DataArray))
    ]
    if wrong:
        raise TypeError(f"All masks must be a 3D Niimg-like object. Got: {', '.join(wrong)}.")
    _check_same_grid([grid_of(img) for img in mask_imgs])
    loaded = [load_mask_img(img, allow_empty=True) for img in mask_imgs]
    common = intersect_mask_arrays([mask for mask, _ in loaded], threshold, connected)
    _, _, first = _load_image_data(mask_imgs[0])
    return new_img_like(first, common, loaded[0][1])


def _check_not_empty(imgs: Any) -> None:
    if len(imgs) == 0:
        raise TypeError(
            "An empty list was passed instead of a list of images (one per run or subject)."
        )


def _common_mask_from_time_means(
    imgs: Sequence[Any],
    mask_from_mean: MaskFromMean,
    threshold: float,
    connected: bool,
    **parameters: Any,
) -> nib.Nifti1Image:
    """Intersect the masks that ``mask_from_mean`` computes from each run's mean."""
    _check_not_empty(imgs)
    masks = masks_from_time_means(imgs, mask_from_mean, connected=connected, **parameters)
    _check_same_grid([(mask.shape, affine) for mask, affine in masks])
    common = intersect_mask_arrays([mask for mask, _ in masks], threshold, connected)
    return new_img_like(reference_image(imgs[0]), common, masks[0][1])


def compute_multi_epi_mask(
    epi_imgs: Sequence[Any],
    lower_cutoff: float = 0.2,
    upper_cutoff: float = 0.85,
    connected: bool = True,
    opening: bool | int = 2,
    threshold: float = 0.5,
    target_affine: np.ndarray | Sequence | None = None,
    target_shape: Sequence[int] | None = None,
    exclude_zeros: bool = False,
    n_jobs: int = 1,
    memory: Any = None,
    verbose: int = 0,
) -> nib.Nifti1Image:
    """Compute a common EPI mask for several runs or subjects.

    One EPI mask per element (see :func:`compute_epi_mask`), then
    :func:`intersect_masks`. All the time-means are computed in a single
    ``dask.compute`` call.

    Parameters
    ----------
    epi_imgs : list
        One element per run or subject: a 4-D image, or a list of 3-D images.
    lower_cutoff, upper_cutoff, connected, opening, exclude_zeros
        See :func:`compute_epi_mask`.
    threshold : float, default=0.5
        Fraction of the runs a voxel must be in (see :func:`intersect_masks`).
    target_affine, target_shape
        Grid on which every mask is computed.
    n_jobs : int, default=1
        Accepted for nilearn compatibility; dask parallelises the work.
    memory : object, default=None
        Accepted for nilearn compatibility and ignored.
    verbose : int, default=0
        Accepted for nilearn compatibility.

    Returns
    -------
    nibabel.Nifti1Image
        int8 3-D mask.

    Raises
    ------
    TypeError
        For an empty list.
    ValueError
        When the runs' masks do not share a grid (give a target grid).

    Notes
    -----
    nilearn raises a TypeError with a garbled message for an empty list
    (a bad format specification); daskmask's message says what is wrong.

    """
    check_epi_parameters(lower_cutoff, upper_cutoff, connected, opening)
    return _common_mask_from_time_means(
        epi_imgs,
        epi_mask_from_mean,
        threshold,
        connected,
        lower_cutoff=lower_cutoff,
        upper_cutoff=upper_cutoff,
        opening=opening,
        exclude_zeros=exclude_zeros,
        target_affine=target_affine,
        target_shape=target_shape,
    )


def compute_multi_background_mask(
    data_imgs: Sequence[Any],
    border_size: int = 2,
    connected: bool = True,
    opening: bool | int = 2,
    threshold: float = 0.5,
    target_affine: np.ndarray | Sequence | None = None,
    target_shape: Sequence[int] | None = None,
    n_jobs: int = 1,
    memory: Any = None,
    verbose: int = 0,
) -> nib.Nifti1Image:
    """Compute a common background mask for several runs or subjects.

    One background mask per element (see :func:`compute_background_mask`),
    then :func:`intersect_masks`. All the time-means are computed in a single
    ``dask.compute`` call. Note the defaults differ from the single-run
    function: ``connected=True`` and ``opening=2``.

    Parameters
    ----------
    data_imgs : list
        One element per run or subject: a 4-D image, or a list of 3-D images.
    border_size, connected, opening
        See :func:`compute_background_mask`.
    threshold : float, default=0.5
        Fraction of the runs a voxel must be in (see :func:`intersect_masks`).
    target_affine, target_shape
        Grid on which every mask is computed.
    n_jobs : int, default=1
        Accepted for nilearn compatibility; dask parallelises the work.
    memory : object, default=None
        Accepted for nilearn compatibility and ignored.
    verbose : int, default=0
        Accepted for nilearn compatibility.

    Returns
    -------
    nibabel.Nifti1Image
        int8 3-D mask.

    Raises
    ------
    TypeError
        For an empty list.
    ValueError
        When the runs' masks do not share a grid (give a target grid).

    """
    check_background_parameters(border_size, connected, opening)
    return _common_mask_from_time_means(
        data_imgs,
        background_mask_from_mean,
        threshold,
        connected,
        border_size=border_size,
        opening=opening,
        target_affine=target_affine,
        target_shape=target_shape,
    )


def compute_multi_brain_mask(
    target_imgs: Sequence[Any],
    threshold: float = 0.5,
    connected: bool = True,
    opening: bool | int = 2,
    memory: Any = None,
    verbose: int = 0,
    mask_type: str = "whole-brain",
) -> nib.Nifti1Image:
    """Compute a template mask for several images sharing one grid.

    The images must have the same shape and affine; the mask is computed on
    that grid once (see :func:`compute_brain_mask`). No voxel data is read.

    Parameters
    ----------
    target_imgs : list
        Images (3-D, 4-D, or lists of 3-D) with a common grid.
    threshold, connected, opening, memory, verbose, mask_type
        See :func:`compute_brain_mask`.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 3-D mask.

    Raises
    ------
    TypeError
        For an empty list.
    ValueError
        When the images do not share a field of view.

    """
    _check_not_empty(target_imgs)
    grids = [grid_of(img) for img in target_imgs]
    reference_shape, reference_affine = grids[0]
    for index, (shape, affine) in enumerate(grids[1:], start=1):
        if tuple(shape[:3]) != tuple(reference_shape[:3]) or not np.allclose(
            affine, reference_affine
        ):
            raise ValueError(
                f"Field of view of image #{index} is different from reference FOV.\n"
                f"Reference affine:\n{reference_affine!r}\nImage affine:\n{affine!r}\n"
                f"Reference shape:\n{tuple(reference_shape[:3])!r}\n"
                f"Image shape:\n{tuple(shape[:3])!r}\n"
            )
    return compute_brain_mask(
        target_imgs[0],
        threshold=threshold,
        connected=connected,
        opening=opening,
        memory=memory,
        verbose=verbose,
        mask_type=mask_type,
    )
