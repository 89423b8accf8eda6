"""Mean volume of a run over time, as one dask reduction.

The 4-D array is never materialised. Integer runs are summed in float64 by
a parallel tree reduction (exact); float runs are summed in their own float
dtype, volume after volume in time order, which reproduces numpy's (hence
nilearn's) result bit for bit. Several means
(one per run of a multi-run mask) are computed in a single ``dask.compute``
call so that the scheduler shares the work and reads each file once. The
active scheduler is used (a ``distributed.Client`` when one exists).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from daskmask._folding import accumulator_dtype, fold_volumes, mean_dtype
from daskmask._fs import has_glob, is_url, locate
from daskmask.image._grid import check_resampling_inputs, needs_resampling, plan_target_grid
from daskmask.image._smoothing import smooth_array
from daskmask.image.resampling import new_img_like, resample_volume

__all__ = [
    "MaskFromMean",
    "mask_img_from_time_mean",
    "masks_from_time_means",
    "mean_img",
    "mean_volume",
    "mean_volumes",
    "precomputed_mean_image",
    "prepare_mean",
]

#: ``mask_from_mean(mean, affine, **parameters) -> (mask, affine)``, as
#: :func:`~daskmask.masking.epi_mask_from_mean`.
MaskFromMean = Callable[..., tuple[np.ndarray, np.ndarray]]


def open_image(img: Any) -> xr.DataArray:
    """Return ``img`` as a lazy DataArray (DataArrays are passed through).

    Parameters
    ----------
    img : path, glob, list, nibabel image or xarray.DataArray
        Anything :func:`daskmask.reading.open_nifti` accepts.

    Returns
    -------
    xarray.DataArray
        Lazy array with ``attrs["affine"]``.

    """
    if isinstance(img, xr.DataArray):
        return img
    from daskmask.reading import open_nifti

    # nilearn's mask functions take a list of 4D runs as one run (its volumes in turn).
    return open_nifti(img, concat="time")


def describe_image(img: Any) -> str:
    """Return a short description of an image argument for error messages."""
    if isinstance(img, (str, os.PathLike)):
        return os.fspath(img)
    if isinstance(img, xr.DataArray):
        return f"DataArray of shape {img.shape}"
    if isinstance(img, nib.spatialimages.SpatialImage):
        return f"{type(img).__name__}(shape={img.shape})"
    if isinstance(img, (list, tuple)):
        inner = ", ".join(describe_image(item) for item in list(img)[:3])
        return f"[{inner}{', ...' if len(img) > 3 else ''}]"
    return type(img).__name__


def reference_image(img: Any) -> nib.spatialimages.SpatialImage | None:
    """Return a nibabel image whose header describes ``img``, without reading voxels.

    Used to copy the input's header into output masks as nilearn does.
    ``None`` when there is no header (DataArrays built from arrays).
    """
    if isinstance(img, nib.spatialimages.SpatialImage):
        return img
    if isinstance(img, str) and is_url(img):
        from daskmask.reading._sources import remote_header_image

        try:
            location = locate(img)
            if has_glob(location.path):
                location = location.glob()[0]
            return remote_header_image(location)[0]
        except Exception:  # an unreadable header only costs the header copy
            return None
    if isinstance(img, (str, os.PathLike)):
        path = os.fspath(img)
        if not os.path.isfile(path):
            matches = sorted(glob.glob(os.path.expanduser(path)))
            if not matches:
                return None
            path = matches[0]
        try:
            return nib.load(path)
        except Exception:  # an unreadable header only costs the header copy
            return None
    if isinstance(img, xr.DataArray):
        header = img.attrs.get("header")
        if isinstance(header, nib.Nifti1Header):
            return nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), None, header=header)
        return None
    if isinstance(img, Iterable) and not isinstance(img, (str, bytes)):
        for item in img:
            return reference_image(item)
    return None


# The kernels live below the reading and masking layers, which both use them.
_mean_dtype = mean_dtype
_accumulator_dtype = accumulator_dtype
_fold_volumes = fold_volumes


def _ordered_time_sum(array: da.Array, accumulator: np.dtype) -> da.Array:
    """Sum over the last axis volume after volume, in time order.

    The blocks are read in parallel but added to the running sum one after
    the other, so the floating-point result is exactly that of numpy's
    sequential reduction over a Fortran-ordered array (what nilearn computes
    for a NIfTI file). A tree of partial sums would round differently, and
    masks that compare values for exact equality after resampling (the
    background strategy) are sensitive to the last bit.
    """
    blocks = array.to_delayed()
    n_time_blocks = blocks.shape[-1]
    spatial = np.empty(blocks.shape[:-1], dtype=object)
    for index in np.ndindex(*blocks.shape[:-1]):
        running_sum = None
        for time_block in range(n_time_blocks):
            running_sum = dask.delayed(_fold_volumes, pure=True)(
                running_sum, blocks[(*index, time_block)], accumulator
            )
        shape = tuple(array.chunks[axis][i] for axis, i in enumerate(index))
        spatial[index] = da.from_delayed(running_sum, shape=shape, dtype=accumulator)
    return da.block(spatial.tolist())


def _lazy_mean(data: xr.DataArray) -> da.Array:
    """Build the dask graph of the mean over time of one run."""
    if data.ndim not in (3, 4):
        raise ValueError(
            f"Computation expects 3D or 4D images, but {data.ndim} dimensions were given "
            f"({describe_image(data)})"
        )
    array = data.data if isinstance(data.data, da.Array) else da.asarray(data.data)
    if data.ndim == 3:
        # A 3-D image is its own mean, in its own dtype (nilearn copies it).
        return array.astype(array.dtype.newbyteorder("="))
    if "time" in data.dims and data.dims.index("time") != 3:
        array = da.moveaxis(array, data.dims.index("time"), 3)
    n_volumes = array.shape[3]
    accumulator = _accumulator_dtype(array.dtype)
    if array.dtype.kind in "biu":
        # Integer sums are exact in float64 whatever the order: a parallel
        # tree reduction gives numpy's result bit for bit. A local .nii read
        # unchanged is summed straight from its bytes, into reused buffers.
        from daskmask.reading._array import time_sum

        total = time_sum(array)
        if total is None:
            total = da.sum(array, axis=3, dtype=np.float64)
    else:
        total = _ordered_time_sum(array, accumulator)
    # numpy divides by an intp count, i.e. in float64, then casts the result.
    return (total / np.intp(n_volumes)).astype(_mean_dtype(array.dtype))


def mean_volumes(arrays: Sequence[xr.DataArray]) -> list[np.ndarray]:
    """Compute the mean over time of several runs in one ``dask.compute`` call.

    Parameters
    ----------
    arrays : sequence of xarray.DataArray
        3-D or 4-D runs (dims ``x, y, z[, time]``).

    Returns
    -------
    list of numpy.ndarray
        One 3-D mean per run: float64 for integer data, the input float dtype
        otherwise; a 3-D input is returned as a copy in its own dtype.

    Raises
    ------
    ValueError
        If a run is not 3-D or 4-D.

    """
    lazy = [_lazy_mean(array) for array in arrays]
    return [np.asarray(mean) for mean in dask.compute(*lazy)]


def mean_volume(data: xr.DataArray) -> np.ndarray:
    """Compute the mean over time of one run (see :func:`mean_volumes`).

    Parameters
    ----------
    data : xarray.DataArray
        3-D or 4-D run.

    Returns
    -------
    numpy.ndarray
        The 3-D mean.

    Notes
    -----
    The result equals ``numpy.mean(data, axis=-1)`` on the Fortran-ordered
    array nibabel reads from a file, bit for bit: float32 data are summed in
    float32 in time order as numpy does. (For a C-ordered in-memory array
    numpy sums pairwise, and the last bit may then differ.)

    """
    return mean_volumes([data])[0]


def precomputed_mean_image(mean: np.ndarray, run: xr.DataArray) -> xr.DataArray:
    """Wrap an already computed mean of ``run`` as an image the mask functions take.

    A 3-D image is its own mean (:func:`mean_volume` returns it unchanged),
    so ``compute_epi_mask(precomputed_mean_image(mean, run), ...)`` gives the
    mask of ``run`` from ``mean``, with the same parameter checks, target
    grid and header as ``compute_epi_mask(run, ...)``.

    Parameters
    ----------
    mean : numpy.ndarray
        3-D mean over time of ``run`` (as :func:`mean_volume` computes it).
    run : xarray.DataArray
        The run: its ``attrs`` (affine, header) are kept.

    Returns
    -------
    xarray.DataArray
        3-D ``(x, y, z)`` array holding ``mean``.

    """
    return xr.DataArray(np.asarray(mean), dims=run.dims[:3], attrs=dict(run.attrs))


def masks_from_time_means(
    imgs: Sequence[Any], mask_from_mean: MaskFromMean, **parameters: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Compute one mask per run from its mean over time.

    The means of all the runs are computed in one ``dask.compute`` call
    (see :func:`mean_volumes`), then ``mask_from_mean`` turns each into a mask.

    Parameters
    ----------
    imgs : sequence
        One element per run: anything :func:`open_image` accepts.
    mask_from_mean : callable
        ``mask_from_mean(mean, affine, **parameters)`` returning a 3-D mask and
        its 4x4 affine, e.g. :func:`~daskmask.masking.epi_mask_from_mean`.
    **parameters
        Passed on to ``mask_from_mean``.

    Returns
    -------
    list of tuple of numpy.ndarray
        One ``(mask, affine)`` pair per run.

    """
    runs = [open_image(img) for img in imgs]
    means = mean_volumes(runs)
    return [
        mask_from_mean(mean, run.attrs["affine"], **parameters)
        for mean, run in zip(means, runs, strict=True)
    ]


def mask_img_from_time_mean(
    img: Any, mask_from_mean: MaskFromMean, **parameters: Any
) -> nib.Nifti1Image:
    """Compute the mask image of one run from its mean over time.

    Parameters
    ----------
    img : path, glob, list of paths, nibabel image or xarray.DataArray
        3-D or 4-D run; a list of 3-D images is stacked in time.
    mask_from_mean : callable
        See :func:`masks_from_time_means`.
    **parameters
        Passed on to ``mask_from_mean``.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 3-D mask, with the header of ``img`` when it has one.

    """
    [(mask, affine)] = masks_from_time_means([img], mask_from_mean, **parameters)
    return new_img_like(reference_image(img), mask, affine)


def prepare_mean(
    mean: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray | Sequence | None = None,
    target_shape: Sequence[int] | None = None,
    smooth: float | bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a mean volume to a target grid and optionally smooth it.

    This is the part of nilearn's ``compute_mean`` that follows the
    reduction: cubic-spline resampling with clipping, then, if ``smooth``,
    a Gaussian of FWHM ``smooth`` *voxels* that ignores NaNs and puts them
    back afterwards.

    Parameters
    ----------
    mean : numpy.ndarray
        3-D mean volume (not modified).
    affine : numpy.ndarray
        Its 4x4 affine.
    target_affine : array-like or None, default=None
        Target affine (3x3 or 4x4).
    target_shape : sequence of 3 int or None, default=None
        Target shape.
    smooth : float or bool, default=False
        FWHM in voxels; falsy for no smoothing.

    Returns
    -------
    mean : numpy.ndarray
        The prepared mean (a new array).
    affine : numpy.ndarray
        Its 4x4 affine.

    """
    check_resampling_inputs(target_affine, target_shape)
    source_affine = np.asarray(affine)
    if needs_resampling(mean.shape, source_affine, target_affine, target_shape):
        affine, shape = plan_target_grid(mean.shape, source_affine, target_affine, target_shape)
        mean = resample_volume(mean, source_affine, affine, shape, "continuous", clip=True)
    else:
        affine = source_affine
        mean = np.array(mean)
    if smooth:
        nan_voxels = np.isnan(mean)
        mean = smooth_array(mean, np.eye(4), fwhm=smooth, ensure_finite=True, copy=False)
        mean[nan_voxels] = np.nan
    return mean, affine


def mean_img(
    imgs: Any,
    target_affine: np.ndarray | Sequence | None = None,
    target_shape: Sequence[int] | None = None,
    verbose: int = 0,
    n_jobs: int = 1,
    copy_header: bool = True,
) -> nib.Nifti1Image:
    """Average images over time, as ``nilearn.image.mean_img``.

    A single image (3-D or 4-D) gives its mean over time. A list gives the
    average of the per-element means (so a list of 4-D runs weighs every run
    equally, whatever its length), each element being resampled to the grid
    of the first one.

    Parameters
    ----------
    imgs : path, glob, nibabel image, xarray.DataArray or list of them
        Images to average.
    target_affine : array-like or None, default=None
        Resample the mean to this affine (3x3 or 4x4).
    target_shape : sequence of 3 int or None, default=None
        Resample the mean to this shape (with a 4x4 ``target_affine``).
    verbose : int, default=0
        Accepted for nilearn compatibility; nothing is printed.
    n_jobs : int, default=1
        Accepted for nilearn compatibility; dask parallelises the reductions
        with the active scheduler.
    copy_header : bool, default=True
        Copy the header of the first image.

    Returns
    -------
    nibabel.Nifti1Image
        The mean image (float64 for integer data, else the data's float
        dtype).

    Notes
    -----
    Every per-element mean is computed in a single ``dask.compute`` call and
    the running sum is accumulated in float64: nilearn accumulates a list of
    3-D integer images in their own integer dtype, which can overflow.

    """
    if isinstance(imgs, (str, os.PathLike, xr.DataArray, nib.spatialimages.SpatialImage)) or (
        not isinstance(imgs, Iterable)
    ):
        imgs = [imgs]
    imgs = list(imgs)
    if not imgs:
        raise ValueError("mean_img needs at least one image; an empty list was given.")
    arrays = [open_image(img) for img in imgs]
    means = mean_volumes(arrays)
    first, first_affine = prepare_mean(
        means[0], arrays[0].attrs["affine"], target_affine, target_shape
    )
    if target_affine is None or target_shape is None:
        # The other elements are brought onto the grid of the first one.
        target_affine, target_shape = first_affine, first.shape[:3]
    total = first.astype(np.float64)
    for mean, array in zip(means[1:], arrays[1:], strict=True):
        this_mean, _ = prepare_mean(mean, array.attrs["affine"], target_affine, target_shape)
        total += this_mean
    result = (total / float(len(means))).astype(_mean_dtype(first.dtype))
    return new_img_like(
        reference_image(imgs[0]), result, np.asarray(target_affine), copy_header=copy_header
    )
