"""Masked signals back to images: in memory, or streamed to a NIfTI file or object.

:func:`unmask` builds the whole image in memory, as nilearn does.
:func:`unmask_to_file` writes a ``(time, voxel)`` array of any size volume by
volume, to a local file or to an object-store URL; when the signals are a
voxel-blocked dask array (the layout of daskmask's results), they are first
reorganised into time slabs through a temporary Zarr store, so that no task
and no write buffer holds the 4D array.

Atomicity: a local file is written under a hidden temporary name and renamed
into place. An object store has no rename; the object is written by one
upload (a single PUT, or one multipart upload for a large file), which S3
(and GCS, Azure) make visible only when it completes, and which is aborted,
never completed, when the write fails. A reader therefore sees the old
object, or the new one whole, never a part.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from daskmask._fs import Location, locate, storage_errors
from daskmask._scratch import TemporaryStore
from daskmask.exceptions import StorageError
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


def _distributed() -> bool:
    """Whether the active dask scheduler is a distributed client."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    try:
        client = get_client()
    except ValueError:
        return False
    import dask.base

    return dask.base.get_scheduler() == client.get


class _ObjectScratch:
    """A temporary prefix beside an object-store output (the time slabs on a cluster)."""

    def __init__(self, output: Location) -> None:
        import secrets

        self.location = output.parent.join(f".{output.name}.slabs-{secrets.token_hex(4)}.zarr")

    def store(self) -> Any:
        from zarr.storage import FsspecStore

        with storage_errors(self.location.url):
            return FsspecStore.from_url(
                self.location.url, storage_options=self.location.storage_options
            )

    def cleanup(self) -> None:
        with contextlib.suppress(Exception), storage_errors(self.location.url):
            self.location.fs.rm(self.location.path, recursive=True)


def _to_time_slabs(
    signals: da.Array, slab: int, voxel_block: int, output: Location | None = None
) -> tuple[Any, Any, int]:
    """Store dask signals once in a temporary Zarr array chunked ``(slab, voxel_block)``.

    Voxel-blocked signals ``(all time, voxel blocks)`` keep their blocks (each
    dask block covers whole Zarr chunks, so the writes never race); time-chunked
    signals keep their time chunks as slabs. Returns the opened Zarr array, the
    temporary store owning it (with a ``cleanup`` method) and the slab.

    The array is in the scratch folder (a
    :class:`~daskmask._scratch.TemporaryStore`), or, when the output
    is an object-store URL and a distributed client computes, under a hidden
    prefix beside the output, which every worker and the client reach. Every
    chunk is written (even all-zero ones) and counted before it is read: a
    chunk written where this process cannot see it (workers whose scratch
    folder is not this one) is an error, never zeros.
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
    holder: Any
    if output is not None and not output.is_local and _distributed():
        holder = _ObjectScratch(output)
        target_store: Any = holder.store()
        where = holder.location.url
    else:
        holder = TemporaryStore(prefix="daskmask-unmask-")
        target_store = os.path.join(holder.root, _store.SIGNALS)
        where = target_store
    try:
        with storage_errors(where):
            target = zarr.create_array(
                store=target_store,
                shape=signals.shape,
                chunks=(slab, voxel_block),
                dtype=signals.dtype,
                compressors=_store._codec(),
                fill_value=0,
                zarr_format=3,
                config={"write_empty_chunks": True},
            )
            da.store(aligned, target, lock=False, compute=True)
            written = zarr.open_array(target_store, mode="r")
            expected = int(np.prod(written.cdata_shape))
            found = written.nchunks_initialized
        if found != expected:
            raise StorageError(
                f"Only {found} of the {expected} time-slab chunks written to {where} are "
                "visible to this process: the workers write their scratch where the client "
                "cannot read it (no shared disk). Set the dask config "
                "'daskmask.temporary-directory' to a folder every worker and the client "
                "share, or write the image to an object-store URL."
            )
    except BaseException:
        holder.cleanup()
        raise
    return written, holder, slab


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
    storage_options: Mapping[str, Any] | None = None,
    t_r: float | None = None,
    block_bytes: int | str | None = None,
    compresslevel: int = 1,
) -> Path | str:
    """Write masked signals to a ``.nii``/``.nii.gz`` file or object, volume by volume.

    The 4D array is never held in memory: numpy and zarr-backed signals are
    read ``slab`` rows at a time; voxel-blocked dask signals (daskmask's
    results) are computed once into a temporary Zarr store chunked by time
    slabs, which is then read slab by slab and removed. A local file is
    written to a temporary name and renamed at the end; an object is written
    by one upload that becomes visible only when it completes (and is
    aborted on failure). Either way an interrupted write never leaves a
    complete-looking file.

    Parameters
    ----------
    X : numpy array, dask array, zarr array or DataArray
        ``(n_time, n_voxels)`` signals (``(n_voxels,)`` writes a 3D image).
    mask_img : path, nibabel image or DataArray
        The 3D mask.
    path : str or os.PathLike
        Output file, ending in ``.nii`` or ``.nii.gz``: a local path or an
        fsspec URL (``s3://bucket/sub-01_bold.nii.gz``).
    storage_options : mapping, optional
        File-system options for a URL (credentials, ``endpoint_url``),
        merged over the dask config ``daskmask.storage-options``; by default
        the file system's usual environment.
    t_r : float or None, default=None
        Repetition time for the header; None takes the step of a
        DataArray's ``time`` coordinate, else 1.
    block_bytes : int, str or None, default=None
        Memory budget of a slab (by default the task budget of :mod:`daskmask._memory`).
    compresslevel : int, default=1
        gzip level for ``.nii.gz``.

    Returns
    -------
    pathlib.Path or str
        ``path`` (absolute), or the URL.

    Raises
    ------
    TypeError
        For signals of the wrong shape (as :func:`unmask`).
    ValueError
        For a file name that does not end in ``.nii`` or ``.nii.gz``.
    daskmask.exceptions.StorageError
        The object cannot be written (missing bucket, credentials, endpoint).

    """
    from daskmask.reading._writer import nifti_suffix, write_nifti_volumes

    location = locate(path, storage_options)
    target = Path(location.path) if location.is_local else Path(location.name)
    nifti_suffix(target)
    mask, affine = _load_mask(mask_img)
    signals = _signals_array(X)
    _check_shape(signals, int(mask.sum()))
    if signals.ndim == 1:
        image = unmask(np.asarray(signals), mask_img)
        if location.is_local:
            return _save_atomic(image, target)
        return _upload_image(image, location, compresslevel)
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
        rows, holder, slab = _to_time_slabs(signals, slab, voxel_block, location)
    options = {
        "shape": tuple(mask.shape),
        "n_timepoints": n_time,
        "dtype": dtype,
        "affine": affine,
        "t_r": _time_step(X) if t_r is None else float(t_r),
        "compresslevel": compresslevel,
    }
    volumes = _volumes(rows, flat_fortran_index(mask), mask.shape, dtype, slab)
    try:
        if location.is_local:
            return write_nifti_volumes(target, volumes, **options)
        return _stream_to_object(location, volumes, **options)
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


def _discard(stream: Any) -> None:
    """Abandon an object being uploaded: abort its multipart upload, never complete it."""
    with contextlib.suppress(Exception):
        stream.discard()
    with contextlib.suppress(Exception):
        stream.closed = True  # close() would complete the upload


def _stream_to_object(
    location: Location,
    volumes: Iterator[np.ndarray],
    *,
    shape: tuple[int, int, int],
    n_timepoints: int,
    dtype: np.dtype,
    affine: np.ndarray,
    t_r: float,
    compresslevel: int,
) -> str:
    """Stream a NIfTI-1 header and volumes into one object (gzip for ``.nii.gz``).

    The file system buffers a part (50 MiB for s3fs) and uploads it; the
    object appears when the upload completes, at ``close``.
    """
    from daskmask.reading._writer import (
        _DEFAULT_WRITE_BUFFER_BYTES,
        _open_gzip_stream,
        _write_volume_stream,
        build_header,
    )

    file_dtype = np.dtype(dtype).newbyteorder("<")
    header = build_header(shape, n_timepoints, file_dtype, np.asarray(affine, dtype=float), t_r)
    n_voxels = int(np.prod(shape))
    chunk_volumes = max(1, _DEFAULT_WRITE_BUFFER_BYTES // max(n_voxels * file_dtype.itemsize, 1))
    write_buffer = np.empty((min(chunk_volumes, n_timepoints), n_voxels), dtype=file_dtype)
    with storage_errors(location.url):
        raw = location.fs.open(location.path, "wb")
    try:
        with storage_errors(location.url):
            compressed = location.name.endswith(".gz")
            stream_context = (
                _open_gzip_stream(raw, compresslevel)
                if compressed
                else contextlib.nullcontext(raw)
            )
            with stream_context as stream:
                header.write_to(stream)
                _write_volume_stream(
                    stream, volumes, write_buffer, shape=shape, n_timepoints=n_timepoints
                )
            raw.close()  # completes the upload: the object appears now, whole
    except BaseException:
        _discard(raw)
        raise
    return location.url


def _upload_image(image: nib.Nifti1Image, location: Location, compresslevel: int) -> str:
    """Write a (3D) image held in memory as one object (one PUT: atomic)."""
    data = image.to_bytes()
    if location.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=compresslevel, mtime=0)
    with storage_errors(location.url):
        location.fs.pipe_file(location.path, data)
    return location.url


def load_image_file(
    path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> nib.Nifti1Image:
    """Open a NIfTI file lazily: nibabel for a local path, a streamed object for a URL.

    An object is read through the file system's buffered reader (ranged
    requests); its data are read when the image's data are.
    """
    location = locate(path, storage_options)
    if location.is_local:
        return nib.load(location.path)
    stream: Any = location.open("rb")
    if location.name.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    with storage_errors(location.url):
        return nib.Nifti1Image.from_stream(stream)


__all__ = ["load_image_file", "unmask", "unmask_to_file"]
