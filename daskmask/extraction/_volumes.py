"""Per-volume image operations mapped over the time chunks of a 4D run.

Every chunk of a run opened by :func:`daskmask.reading.open_nifti` holds whole
volumes (``x, y, z`` are never split), so spatial operations done chunk by
chunk are exactly the operations on the whole image: smoothing "across chunk
borders" needs no halo because the only chunk borders are along time. The
time chunks are kept unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from daskmask._warnings import warn_user
from daskmask.image import resample_volume, smooth_array
from daskmask.image._grid import Interpolation
from daskmask.image.resampling import resampled_dtype

#: nilearn's cast warning is emitted once when the graph is built, not per volume.
_CAST_WARNING = "Casting data from"


def whole_in_space(data: da.Array) -> da.Array:
    """Return ``data`` with its three spatial axes in one chunk each.

    Parameters
    ----------
    data : dask.array.Array
        3D ``(x, y, z)`` or 4D ``(x, y, z, time)`` array.

    Returns
    -------
    dask.array.Array
        The same array, rechunked only if a spatial axis was split.

    """
    if all(len(chunks) == 1 for chunks in data.chunks[:3]):
        return data
    return data.rechunk({0: -1, 1: -1, 2: -1})


def smoothed_dtype(dtype: np.dtype) -> np.dtype:
    """Return the dtype :func:`daskmask.image.smooth_array` gives for ``dtype``.

    Parameters
    ----------
    dtype : numpy.dtype
        Input dtype.

    Returns
    -------
    numpy.dtype
        float32 for integers up to 32 bits, float64 for 64-bit integers,
        ``dtype`` otherwise.

    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)
    return dtype


def _smooth_block(
    block: np.ndarray, affine: list[list[float]], fwhm: Any, ensure_finite: bool
) -> np.ndarray:
    with warnings.catch_warnings():
        # fwhm == 0 was reported once by smooth_volumes.
        warnings.filterwarnings("ignore", message="The parameter 'fwhm'")
        return smooth_array(
            block, np.asarray(affine), fwhm=fwhm, ensure_finite=ensure_finite, copy=True
        )


def smooth_volumes(
    data: da.Array,
    affine: np.ndarray,
    fwhm: float | str | Sequence[float | None] | None,
    ensure_finite: bool = True,
) -> da.Array:
    """Smooth every volume of a run with a Gaussian kernel, chunk by chunk.

    Parameters
    ----------
    data : dask.array.Array
        3D or 4D (time last) array.
    affine : numpy.ndarray
        Affine giving the voxel size (3x3 or 4x4).
    fwhm : float, sequence of 3, "fast" or None
        As :func:`daskmask.image.smooth_array` (0 warns once and does not smooth).
    ensure_finite : bool, default=True
        Replace non-finite values by 0 before smoothing.

    Returns
    -------
    dask.array.Array
        Same shape and time chunks; dtype of :func:`smoothed_dtype`.

    """
    if isinstance(fwhm, int | float) and not isinstance(fwhm, bool) and fwhm == 0.0:
        warn_user(
            f"The parameter 'fwhm' for smoothing is specified as {fwhm}. Setting it to None "
            "(no smoothing will be performed)",
        )
        fwhm = None
    data = whole_in_space(data)
    return data.map_blocks(
        _smooth_block,
        affine=np.asarray(affine, dtype=float).tolist(),
        fwhm=fwhm,
        ensure_finite=ensure_finite,
        dtype=smoothed_dtype(data.dtype),
        meta=np.empty((0,) * data.ndim, dtype=smoothed_dtype(data.dtype)),
    )


def _resample_block(
    block: np.ndarray,
    bounds: np.ndarray,
    source_affine: list[list[float]],
    target_affine: list[list[float]],
    target_shape: tuple[int, int, int],
    interpolation: Interpolation,
    fill_value: float,
    clip: bool,
    out_dtype: np.dtype,
) -> np.ndarray:
    clip_range = (bounds[0], bounds[1]) if clip else None
    source_affine = np.asarray(source_affine, dtype=float)
    target_affine = np.asarray(target_affine, dtype=float)
    volumes = block[..., np.newaxis] if block.ndim == 3 else block
    out = np.empty((*target_shape, volumes.shape[3]), dtype=out_dtype, order="F")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CAST_WARNING)
        for index in range(volumes.shape[3]):
            out[..., index] = resample_volume(
                volumes[..., index],
                source_affine,
                target_affine,
                target_shape,
                interpolation,
                fill_value,
                clip,
                clip_range,
            )
    return out[..., 0] if block.ndim == 3 else out


def run_clip_range(data: da.Array) -> da.Array:
    """Return the lazy ``[min(data, 0), max(data, 0)]`` of a whole run (NaNs ignored).

    This is the range nilearn clips a resampled image to; it is a small tree
    reduction over the time chunks.

    Parameters
    ----------
    data : dask.array.Array
        The run.

    Returns
    -------
    dask.array.Array
        Shape ``(2,)``, dtype of ``data``.

    """
    zero = np.zeros((), dtype=data.dtype)
    if data.dtype.kind in "iub":
        low, high = data.min(), data.max()
    else:
        low, high = da.nanmin(data), da.nanmax(data)
    return da.stack([da.minimum(low, zero), da.maximum(high, zero)])


def resample_volumes(
    data: da.Array,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    interpolation: Interpolation = "continuous",
    fill_value: float = 0.0,
    clip: bool = True,
) -> da.Array:
    """Resample every volume of a run onto a target grid, chunk by chunk.

    Equal to resampling the whole image at once (nilearn's ``resample_img``):
    the clip range is the range of the whole run, computed lazily in the
    same graph.

    Parameters
    ----------
    data : dask.array.Array
        3D or 4D (time last) array.
    source_affine : numpy.ndarray
        4x4 affine of ``data``.
    target_affine : numpy.ndarray
        4x4 affine of the target grid (see
        :func:`daskmask.image._grid.plan_target_grid`).
    target_shape : sequence of 3 int
        Target spatial shape.
    interpolation : {"continuous", "linear", "nearest"}, default="continuous"
        Interpolation.
    fill_value : float, default=0.0
        Value outside the source field of view.
    clip : bool, default=True
        Clip to ``[min(run, 0), max(run, 0)]``.

    Returns
    -------
    dask.array.Array
        Shape ``(*target_shape, n_time)``, the same time chunks; dtype of
        :func:`daskmask.image.resampling.resampled_dtype` (signed integers
        become floats, with nilearn's warning, once).

    """
    data = whole_in_space(data)
    target_shape = tuple(int(n) for n in target_shape)
    out_dtype = resampled_dtype(data.dtype, interpolation, warn=True)
    bounds = run_clip_range(data)
    out_chunks = tuple((n,) for n in target_shape) + data.chunks[3:]
    spatial = "xyz"
    index = spatial + ("t" if data.ndim == 4 else "")
    return da.blockwise(
        _resample_block,
        index,
        data,
        index,
        bounds,
        "b",
        # Nested lists: numpy kwargs are mangled by some distributed code paths.
        source_affine=np.asarray(source_affine, dtype=float).tolist(),
        target_affine=np.asarray(target_affine, dtype=float).tolist(),
        target_shape=target_shape,
        interpolation=interpolation,
        fill_value=fill_value,
        clip=clip,
        out_dtype=out_dtype,
        dtype=out_dtype,
        adjust_chunks={axis: out_chunks[position][0] for position, axis in enumerate(spatial)},
        concatenate=True,
        meta=np.empty((0,) * data.ndim, dtype=out_dtype),
    )
