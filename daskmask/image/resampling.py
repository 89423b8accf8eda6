"""Resample volumes onto another voxel grid, equal to nilearn 0.14.1.

:func:`resample_volume` is the pure per-volume kernel (numpy in, numpy out):
it is what later gets mapped over the time chunks of a 4-D run.
:func:`resample_img` and :func:`resample_to_img` are the nibabel-level
wrappers with nilearn's signatures, for 3-D images and small in-memory 4-D
images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import nibabel as nib
import numpy as np
import xarray as xr
from scipy.ndimage import affine_transform, binary_dilation

from daskmask._warnings import warn_user
from daskmask.image._grid import (
    INTERPOLATION_ORDERS,
    Interpolation,
    check_resampling_inputs,
    needs_resampling,
    plan_target_grid,
    sampling_transform,
)

__all__ = [
    "new_img_like",
    "resample_img",
    "resample_to_img",
    "resample_volume",
    "resampled_dtype",
]

#: Neighbour offsets used to extrapolate into non-finite voxels, in the order
#: their contributions are summed (the order matters for bitwise parity).
_FACE_NEIGHBOURS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


def resampled_dtype(dtype: np.dtype, interpolation: str, warn: bool = True) -> np.dtype:
    """Return the dtype of resampled data.

    Signed integers interpolated with splines become floats of the same width
    (at least float32); every other dtype is kept. Unsigned integers are kept
    too, as nilearn does (spline values are then rounded by scipy).

    Parameters
    ----------
    dtype : numpy.dtype
        Dtype of the source data.
    interpolation : str
        Interpolation method.
    warn : bool, default=True
        Emit nilearn's "Casting data from ... to ..." warning on a cast.

    Returns
    -------
    numpy.dtype
        Native-byte-order output dtype.

    """
    dtype = np.dtype(dtype)
    if interpolation == "continuous" and dtype.kind == "i":
        width = max(dtype.itemsize, 4)
        cast = np.dtype(f"float{8 * width}")
        if warn:
            warn_user(f"Casting data from {dtype.name} to {cast.name}")
        dtype = cast
    return dtype.newbyteorder("=")


def _extrapolate_into_invalid(data: np.ndarray, valid: np.ndarray, iterations: int) -> np.ndarray:
    """Fill non-finite voxels near valid ones with the mean of their valid faces.

    Each iteration grows the valid region by one voxel (6-connectivity): a
    voxel of the new shell takes the average of its finite face neighbours.
    Voxels still outside the grown region are set to 0. This keeps spline
    prefiltering from spreading NaNs over the whole volume.

    Parameters
    ----------
    data : numpy.ndarray
        3-D volume.
    valid : numpy.ndarray
        Boolean 3-D array of the voxels to trust.
    iterations : int
        Number of one-voxel growth steps.

    Returns
    -------
    numpy.ndarray
        float64 volume with finite values everywhere.

    """
    values = np.asarray(data, dtype=np.float64)
    for _ in range(iterations):
        grown = binary_dilation(valid)
        shell = grown & ~valid
        # One voxel of NaN padding so that every shell voxel has 6 neighbours.
        padded = np.full(np.add(valid.shape, 2), np.nan)
        inner = (slice(1, -1),) * 3
        padded[inner] = np.where(valid, values, np.nan)
        sx, sy, sz = np.nonzero(shell)
        neighbour_values = np.array(
            [padded[sx + 1 + dx, sy + 1 + dy, sz + 1 + dz] for dx, dy, dz in _FACE_NEIGHBOURS]
        )
        finite_count = np.sum(np.isfinite(neighbour_values), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            averages = np.nansum(neighbour_values, axis=0) / finite_count
        averages[~np.isfinite(averages)] = 0
        updated = np.zeros(valid.shape, dtype=np.float64)
        updated[shell] = averages
        updated[valid] = values[valid]
        values, valid = updated, grown
    return values


def _is_binary(data: np.ndarray) -> bool:
    return bool(np.all((data == 0) | (data == 1)))


def _resample_into(
    volume: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    target_shape: tuple[int, ...],
    order: int,
    fill_value: float,
    out: np.ndarray,
) -> None:
    """Resample one 3-D volume into ``out`` (NaN-aware)."""
    non_finite = None
    if volume.dtype.kind not in "iub":
        non_finite = ~np.isfinite(volume)
        if not non_finite.any():
            non_finite = None
    if non_finite is not None:
        warn_user(
            "NaNs or infinite values are present in the data passed to resample. This is a "
            "bad thing as they make resampling ill-defined and much slower.",
            RuntimeWarning,
        )
        volume = _extrapolate_into_invalid(volume, ~non_finite, iterations=2)
    if order != 0 and _is_binary(volume):
        warn_user(
            "Resampling binary images with continuous or linear interpolation. This might "
            "lead to unexpected results. You might consider using nearest interpolation "
            "instead.",
        )
    affine_transform(
        volume,
        matrix,
        offset=offset,
        output_shape=target_shape,
        output=out,
        cval=fill_value,
        order=order,
    )
    if non_finite is not None:
        # Voxels sampled from a non-finite source voxel become NaN again.
        resampled_non_finite = affine_transform(
            non_finite, matrix, offset=offset, output_shape=target_shape, order=0
        )
        out[resampled_non_finite] = np.nan


def resample_volume(
    data: np.ndarray,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    interpolation: Interpolation = "continuous",
    fill_value: float = 0.0,
    clip: bool = True,
    clip_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Resample one 3-D volume onto a target grid.

    Pure function of its arguments (no image objects, no I/O), meant to be
    mapped over the volumes of a 4-D run.

    Parameters
    ----------
    data : numpy.ndarray
        3-D source volume.
    source_affine : numpy.ndarray
        4x4 affine of ``data``.
    target_affine : numpy.ndarray
        4x4 affine of the target grid (see
        :func:`daskmask.image._grid.plan_target_grid` for 3x3 affines).
    target_shape : sequence of 3 int
        Shape of the target grid.
    interpolation : {"continuous", "linear", "nearest"}, default="continuous"
        Cubic spline, trilinear or nearest-neighbour interpolation.
    fill_value : float, default=0.0
        Value of target voxels outside the source field of view.
    clip : bool, default=True
        Clip the result to ``[min(data, 0), max(data, 0)]`` (ignoring NaNs)
        to remove spline ringing.
    clip_range : (float, float) or None, default=None
        Clip bounds to use instead of the range of ``data``. Pass the range of
        the whole 4-D run when resampling it volume by volume, so that every
        volume is clipped as nilearn clips the whole image.

    Returns
    -------
    numpy.ndarray
        Resampled volume, Fortran-ordered, of dtype :func:`resampled_dtype`.

    """
    check_resampling_inputs(target_affine, target_shape, interpolation)
    data = np.asarray(data)
    target_affine = np.asarray(target_affine, dtype=float)
    target_shape = tuple(int(n) for n in target_shape)
    matrix, offset = sampling_transform(np.asarray(source_affine), target_affine)
    out = np.zeros(target_shape, order="F", dtype=resampled_dtype(data.dtype, interpolation))
    _resample_into(
        data, matrix, offset, target_shape, INTERPOLATION_ORDERS[interpolation], fill_value, out
    )
    if clip:
        if clip_range is None:
            clip_range = _clip_range(data)
        out.clip(clip_range[0], clip_range[1], out=out)
    return out


def _clip_range(data: np.ndarray) -> tuple[Any, Any]:
    """Return ``(min(data, 0), max(data, 0))`` ignoring NaNs (0 is the padding value)."""
    return min(np.nanmin(data), 0), max(np.nanmax(data), 0)


def new_img_like(
    ref_img: nib.spatialimages.SpatialImage | None,
    data: np.ndarray,
    affine: np.ndarray,
    copy_header: bool = True,
) -> nib.Nifti1Image:
    """Build a NIfTI image of ``data`` carrying the header of a reference image.

    Booleans are stored as uint8, and the header's data dtype is the dtype of
    ``data`` (nilearn keeps the reference's on-disk dtype, so a mask computed
    from int16 data would be saved as int16). The copied header has its scaling reset and
    ``cal_min``/``cal_max`` set to the data range, so the new data is not
    rescaled when read back.

    Parameters
    ----------
    ref_img : nibabel image or None
        Image whose header is copied (``None``: a fresh header).
    data : numpy.ndarray
        New data.
    affine : numpy.ndarray
        4x4 affine of the new image.
    copy_header : bool, default=True
        Copy ``ref_img``'s header.

    Returns
    -------
    nibabel.Nifti1Image
        The new image (a ``Nifti2Image`` when the reference is one).

    """
    if data.dtype == bool:
        data = data.astype(np.uint8)
    header = None
    if copy_header and ref_img is not None and ref_img.header is not None:
        header = ref_img.header.copy()
        for key in ("scl_slope", "scl_inter", "glmax"):
            if key in header:
                header[key] = 0.0
        if "cal_max" in header:
            header["cal_max"] = np.max(data) if data.size else 0.0
        if "cal_min" in header:
            header["cal_min"] = np.min(data) if data.size else 0.0
    image_class = nib.Nifti1Image
    if isinstance(ref_img, nib.Nifti2Image):
        image_class = nib.Nifti2Image
    if header is not None and not isinstance(header, image_class.header_class):
        header = image_class.header_class.from_header(header)
    image = image_class(data, affine, header=header)
    # A copied header keeps the reference's on-disk dtype; store the new data's
    # dtype instead so that saving does not convert it (nilearn keeps the old one).
    image.set_data_dtype(data.dtype)
    return image


def _as_nibabel(img: Any) -> nib.spatialimages.SpatialImage:
    """Return a nibabel image for a path, a nibabel image or anything ``open_nifti`` reads."""
    if isinstance(img, nib.spatialimages.SpatialImage):
        return img
    if isinstance(img, xr.DataArray):
        return nib.Nifti1Image(np.asarray(img.data), np.asarray(img.attrs["affine"]))
    if isinstance(img, (str, os.PathLike)) and os.path.isfile(os.fspath(img)):
        return nib.load(os.fspath(img))
    # Globs, lists and DataArrays: the reading package resolves and stacks them.
    from daskmask.reading import open_nifti

    array = open_nifti(img)
    return nib.Nifti1Image(np.asarray(array.data), np.asarray(array.attrs["affine"]))


def _copy_img(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    return new_img_like(img, np.array(np.asanyarray(img.dataobj)), img.affine.copy())


def resample_img(
    img: Any,
    target_affine: np.ndarray | Sequence | None = None,
    target_shape: Sequence[int] | np.ndarray | None = None,
    interpolation: Interpolation = "continuous",
    copy: bool = True,
    order: Literal["F", "C"] = "F",
    clip: bool = True,
    fill_value: float = 0.0,
    force_resample: bool = True,
    copy_header: bool = True,
) -> nib.Nifti1Image:
    """Resample an image onto a target grid, as ``nilearn.image.resample_img``.

    Parameters
    ----------
    img : path, nibabel image or anything :func:`daskmask.reading.open_nifti` reads
        3-D image, or a 4-D image small enough for memory.
    target_affine : array-like or None, default=None
        3x3 (offset and shape then fit the data plus one voxel) or 4x4 affine.
    target_shape : sequence of 3 int or None, default=None
        Target shape; requires a 4x4 ``target_affine``.
    interpolation : {"continuous", "linear", "nearest"}, default="continuous"
        Interpolation method.
    copy : bool, default=True
        When nothing is resampled, return a copy rather than ``img`` itself.
    order : {"F", "C"}, default="F"
        Memory layout of the output array.
    clip : bool, default=True
        Clip the output to the range of the data (0 included).
    fill_value : float, default=0.0
        Value outside the source field of view.
    force_resample : bool, default=True
        Accepted for nilearn compatibility; see Notes.
    copy_header : bool, default=True
        Copy the header of ``img``.

    Returns
    -------
    nibabel.Nifti1Image
        The resampled image.

    Raises
    ------
    ValueError
        For an invalid ``target_shape`` or ``interpolation``.
    numpy.linalg.LinAlgError
        For a target affine that is not an invertible matrix.
    daskmask.exceptions.BoundingBoxError
        When the target grid contains none of the data.

    Notes
    -----
    nilearn's ``force_resample=False`` short-cut (padding/cropping instead of
    interpolating for integer translations) is not implemented: daskmask
    always interpolates, which gives the same values up to spline round-off.

    """
    check_resampling_inputs(target_affine, target_shape, interpolation)
    if isinstance(img, (str, os.PathLike)):
        # A file is read afresh: no side effect is possible, no copy needed.
        copy = False
    img = _as_nibabel(img)
    if target_affine is None and target_shape is None:
        return _copy_img(img) if copy else img

    if hasattr(img, "get_sform") and not img.get_sform(coded=True)[1]:
        warn_user(
            "The provided image has no sform in its header. Please check the provided "
            "file. Results may not be as expected.",
        )
    if not needs_resampling(img.shape, img.affine, target_affine, target_shape):
        return _copy_img(img) if copy else img

    data = np.asanyarray(img.dataobj)
    full_affine, full_shape = plan_target_grid(data.shape, img.affine, target_affine, target_shape)
    matrix, offset = sampling_transform(img.affine, full_affine)
    out_dtype = resampled_dtype(data.dtype, interpolation)
    extra_shape = data.shape[3:]
    resampled = np.zeros(full_shape + extra_shape, order=order, dtype=out_dtype)
    spline_order = INTERPOLATION_ORDERS[interpolation]
    all_space = (slice(None),) * 3
    # Interpolation is separable from the non-spatial axes: one volume at a time.
    for index in np.ndindex(*extra_shape):
        _resample_into(
            data[all_space + index],
            matrix,
            offset,
            full_shape,
            spline_order,
            fill_value,
            resampled[all_space + index],
        )
    if clip:
        low, high = _clip_range(data)
        resampled.clip(low, high, out=resampled)
    return new_img_like(img, resampled, full_affine, copy_header=copy_header)


def resample_to_img(
    source_img: Any,
    target_img: Any,
    interpolation: Interpolation = "continuous",
    copy: bool = True,
    order: Literal["F", "C"] = "F",
    clip: bool = False,
    fill_value: float = 0.0,
    force_resample: bool = True,
    copy_header: bool = True,
) -> nib.Nifti1Image:
    """Resample an image onto the grid of another, as ``nilearn.image.resample_to_img``.

    Only the shape and the affine of ``target_img`` are used; its data is not
    read.

    Parameters
    ----------
    source_img : path, nibabel image or anything :func:`daskmask.reading.open_nifti` reads
        Image to resample.
    target_img : path, nibabel image, xarray.DataArray or anything ``open_nifti`` reads
        Image giving the target grid.
    interpolation : {"continuous", "linear", "nearest"}, default="continuous"
        Interpolation method.
    copy : bool, default=True
        See :func:`resample_img`.
    order : {"F", "C"}, default="F"
        Memory layout of the output array.
    clip : bool, default=False
        Clip the output to the range of the source data (0 included).
    fill_value : float, default=0.0
        Value outside the source field of view.
    force_resample : bool, default=True
        See :func:`resample_img`.
    copy_header : bool, default=True
        Copy the header of ``source_img``.

    Returns
    -------
    nibabel.Nifti1Image
        ``source_img`` on the grid of ``target_img``.

    """
    target_shape, target_affine = grid_of(target_img)
    return resample_img(
        source_img,
        target_affine=target_affine,
        target_shape=target_shape[:3],
        interpolation=interpolation,
        copy=copy,
        order=order,
        clip=clip,
        fill_value=fill_value,
        force_resample=force_resample,
        copy_header=copy_header,
    )


def grid_of(img: Any) -> tuple[tuple[int, ...], np.ndarray]:
    """Return ``(shape, affine)`` of an image without reading its voxels.

    Parameters
    ----------
    img : path, nibabel image, xarray.DataArray or anything ``open_nifti`` reads
        The image.

    Returns
    -------
    shape : tuple of int
        Full shape (3-D or 4-D).
    affine : numpy.ndarray
        4x4 affine.

    """
    if isinstance(img, nib.spatialimages.SpatialImage):
        return tuple(img.shape), np.asarray(img.affine)
    if isinstance(img, xr.DataArray):
        return tuple(img.shape), np.asarray(img.attrs["affine"])
    if isinstance(img, (str, os.PathLike)) and os.path.isfile(os.fspath(img)):
        loaded = nib.load(os.fspath(img))
        return tuple(loaded.shape), np.asarray(loaded.affine)
    from daskmask.reading import open_nifti

    array = open_nifti(img)
    return tuple(array.shape), np.asarray(array.attrs["affine"])
