"""Masked signals back to images: in memory, or streamed to a NIfTI file.

:func:`unmask` builds the whole image in memory, as nilearn does.
:func:`unmask_to_file` writes a ``(time, voxel)`` array of any size volume by
volume; when the signals are a voxel-blocked dask array (the layout of
daskmask's results), they are first reorganised into time slabs through a
temporary Zarr store, so that no task and no write buffer holds the 4D array.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from daskmask.extraction import _store
from daskmask.extraction._apply_mask import flat_fortran_index
from daskmask.extraction._plan import resolve_block_bytes


def _load_mask(mask_img: Any) -> tuple[np.ndarray, np.ndarray]:
    from daskmask.masking import load_mask_img

    if isinstance(mask_img, np.ndarray):
        raise TypeError(
            "mask_img must be an image (path, nibabel image or DataArray with an affine), "
            "not a bare numpy array: the affine of the result comes from it."
        )
    return load_mask_img(mask_img)


def _signals_array(X: Any) -> Any:
    """Return a numpy or dask array from numpy, dask, zarr or xarray signals."""
    if isinstance(X, xr.DataArray):
        return X.data
    if isinstance(X, da.Array | np.ndarray):
        return X
    if type(X).__module__.startswith("zarr"):
        return da.from_zarr(X)
    return np.asanyarray(X)


def _check_shape(X: Any, n_features: int) -> None:
    if X.ndim not in (1, 2):
        raise TypeError(f"Masked data X must be 2D or 1D array; got shape: {X.shape!s}")
    if X.shape[-1] != n_features:
        expected = f"({n_features},)" if X.ndim == 1 else f"(samples, {n_features})"
        raise TypeError(f"X must be of shape {expected}; got shape {X.shape!s}.")


def unmask(X: Any, mask_img: Any, order: str = "F") -> nib.Nifti1Image | list[nib.Nifti1Image]:
    """Put masked signals back into volumes, as ``nilearn.masking.unmask``.

    Parameters
    ----------
    X : array-like, dask array, DataArray, zarr array, or list of them
        ``(n_voxels,)`` signals (gives a 3D image) or ``(n_samples, n_voxels)``
        (gives a 4D image). A list gives a list of images (a list of numbers
        is one 1D array).
    mask_img : path, nibabel image or DataArray
        The 3D mask the signals were extracted with.
    order : {"F", "C"}, default="F"
        Memory layout of the image data.

    Returns
    -------
    nibabel.Nifti1Image or list of nibabel.Nifti1Image
        Dtype of ``X``, zeros outside the mask, the mask's affine, a fresh
        header.

    Raises
    ------
    TypeError
        If ``X`` is not 1D or 2D, or its last dimension is not the number of
        voxels in the mask.

    """
    if isinstance(X, list) and X and not isinstance(X[0], int | float | np.number):
        return [unmask(x, mask_img, order=order) for x in X]
    mask, affine = _load_mask(mask_img)
    signals = _signals_array(X)
    _check_shape(signals, int(mask.sum()))
    signals = np.asarray(signals)
    if signals.ndim == 1:
        data = np.zeros(mask.shape, dtype=signals.dtype, order=order)
        data[mask] = signals
    else:
        data = np.zeros((*mask.shape, signals.shape[0]), dtype=signals.dtype, order=order)
        data[mask, :] = signals.T
    from daskmask.image import new_img_like

    return new_img_like(None, data, affine, copy_header=False)


def _time_step(X: Any) -> float:
    """Repetition time from a DataArray's time coordinate (seconds), else 1."""
    if isinstance(X, xr.DataArray) and "time" in X.coords and X.sizes.get("time", 0) > 1:
        times = np.asarray(X["time"].values, dtype=float)
        step = float(times[1] - times[0])
        if step > 0 and np.allclose(np.diff(times), step):
            return step
    return 1.0


def _is_regular(chunks: tuple[int, ...]) -> bool:
    return len(set(chunks[:-1])) <= 1 and chunks[-1] <= chunks[0]


def _to_time_slabs(signals: da.Array, slab: int, voxel_block: int) -> tuple[Any, Any, int]:
    """Store dask signals once in a temporary Zarr array chunked ``(slab, voxel_block)``.

    Voxel-blocked signals ``(all time, voxel blocks)`` keep their blocks (each
    dask block covers whole Zarr chunks, so the writes never race); time-chunked
    signals keep their time chunks as slabs. Returns the opened Zarr array, the
    :class:`~daskmask.extraction._store.TemporaryStore` owning it and the slab.
    """
    import zarr

    time_chunks, voxel_chunks = signals.chunks
    if len(voxel_chunks) > 1 and _is_regular(voxel_chunks):
        voxel_block = voxel_chunks[0]
    if len(time_chunks) > 1:
        slab = time_chunks[0] if _is_regular(time_chunks) else max(time_chunks)
    aligned = signals.rechunk({0: slab if len(time_chunks) > 1 else -1, 1: voxel_block})
    if len(voxel_chunks) == 1 and len(time_chunks) > 1:
        aligned = signals.rechunk({0: slab})
    store = _store.TemporaryStore(prefix="daskmask-unmask-")
    path = os.path.join(store.root, _store.SIGNALS)
    target = zarr.create_array(
        store=path,
        shape=signals.shape,
        chunks=(slab, voxel_block),
        dtype=signals.dtype,
        compressors=_store._codec(),
        fill_value=0,
        zarr_format=3,
    )
    da.store(aligned, target, lock=False, compute=True)
    return zarr.open_array(path, mode="r"), store, slab


def _volumes(
    rows: Any, index: np.ndarray, shape: tuple[int, int, int], dtype: np.dtype, slab: int
) -> Iterator[np.ndarray]:
    """Yield Fortran-ordered volumes, reading ``slab`` rows of ``rows`` at a time."""
    n_time = rows.shape[0]
    flat = np.zeros(int(np.prod(shape)), dtype=dtype)
    for start in range(0, n_time, slab):
        block = np.asarray(rows[start : start + slab])
        for row in block:
            flat[index] = row
            yield flat.reshape(shape, order="F")


def unmask_to_file(
    X: Any,
    mask_img: Any,
    path: str | os.PathLike[str],
    *,
    t_r: float | None = None,
    block_bytes: int | str | None = None,
    compresslevel: int = 1,
) -> Path:
    """Write masked signals to a ``.nii``/``.nii.gz`` file, volume by volume.

    The 4D array is never held in memory: numpy and zarr-backed signals are
    read ``slab`` rows at a time; voxel-blocked dask signals (daskmask's
    results) are computed once into a temporary Zarr store chunked by time
    slabs, which is then read slab by slab and removed. The file is written
    to a temporary name and renamed at the end, so an interrupted write
    never leaves a complete-looking file.

    Parameters
    ----------
    X : numpy array, dask array, zarr array or DataArray
        ``(n_time, n_voxels)`` signals (``(n_voxels,)`` writes a 3D image).
    mask_img : path, nibabel image or DataArray
        The 3D mask.
    path : str or os.PathLike
        Output file, ending in ``.nii`` or ``.nii.gz``.
    t_r : float or None, default=None
        Repetition time for the header; None takes the step of a
        DataArray's ``time`` coordinate, else 1.
    block_bytes : int, str or None, default=None
        Memory budget of a slab (by default the task budget of :mod:`daskmask._memory`).
    compresslevel : int, default=1
        gzip level for ``.nii.gz``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        For signals of the wrong shape (as :func:`unmask`).
    ValueError
        For a file name that does not end in ``.nii`` or ``.nii.gz``.

    """
    from daskmask.datasets._writer import nifti_suffix, write_nifti_volumes

    target = Path(path)
    nifti_suffix(target)
    mask, affine = _load_mask(mask_img)
    signals = _signals_array(X)
    _check_shape(signals, int(mask.sum()))
    if signals.ndim == 1:
        return _save_atomic(unmask(np.asarray(signals), mask_img), target)
    dtype = np.dtype(signals.dtype)
    if dtype.kind == "b":
        signals, dtype = signals.astype(np.uint8), np.dtype(np.uint8)
    n_time, n_voxels = signals.shape
    budget = resolve_block_bytes(block_bytes)
    row_bytes = max(1, n_voxels * dtype.itemsize + int(np.prod(mask.shape)) * dtype.itemsize)
    slab = max(1, min(n_time, budget // row_bytes))
    holder = None
    rows: Any = signals
    if isinstance(signals, da.Array):
        voxel_block = max(1, min(n_voxels, budget // max(1, n_time * dtype.itemsize)))
        rows, holder, slab = _to_time_slabs(signals, slab, voxel_block)
    try:
        return write_nifti_volumes(
            target,
            _volumes(rows, flat_fortran_index(mask), mask.shape, dtype, slab),
            shape=tuple(mask.shape),
            n_timepoints=n_time,
            dtype=dtype,
            affine=affine,
            t_r=_time_step(X) if t_r is None else float(t_r),
            compresslevel=compresslevel,
        )
    finally:
        if holder is not None:
            holder.cleanup()


def _save_atomic(image: nib.Nifti1Image, target: Path) -> Path:
    """Save an image under a temporary name, then rename it into place."""
    suffix = ".nii.gz" if target.name.endswith(".nii.gz") else ".nii"
    temporary = target.with_name(f".{target.name}.{os.getpid()}.partial{suffix}")
    try:
        nib.save(image, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


__all__ = ["unmask", "unmask_to_file"]
