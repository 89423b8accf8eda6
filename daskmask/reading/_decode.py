"""Decode a ``.nii.gz`` run once, for both the mean image and the extraction.

Inflating gzip is the bottleneck of a compressed run (0.2 GB/s with the
standard library). :func:`decode_once` makes one sequential pass with the
fastest decoder installed, writes the decoded volumes to a temporary raw file
and folds every slab into the mean over time on the way, so that
``NiftiMasker.fit`` (the mean) and ``transform`` (the volumes) share a single
decompression.

The copy is uncompressed (so it takes the decoded size on disk) and keeps the
bytes in NIfTI order: a C-ordered ``(time, z, y, x)`` file holds exactly the
Fortran-ordered ``(x, y, z, time)`` volumes, so writing a slab is one
``pwrite`` and reading one back is one ``pread`` and a copy-free
transposition. Measured on the HCP-like run (2.2 GB of int16): the
transform read 14.8 s through a Zarr array and a rechunk, 5.0 s this way.
"""

from __future__ import annotations

import gzip
import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from dask.base import tokenize
from nibabel.volumeutils import apply_read_scaling

from daskmask._rawio import read_exactly, write_exactly
from daskmask.exceptions import NiftiReadError
from daskmask.extraction._store import TemporaryStore
from daskmask.masking._mean import _accumulator_dtype, _fold_volumes, _mean_dtype
from daskmask.reading._array import ProxySpec, spec_from_proxy

__all__ = [
    "decode_once",
    "decoder_name",
    "file_source",
    "gzip_source",
    "is_gzip_file",
    "measure_decoders",
    "source_key",
]

#: Name of the raw file of decoded volumes inside the temporary directory.
DECODED = "decoded.raw"

#: Decoders by documented speed on this kind of data (architecture anchors,
#: part B: isal 0.5-0.8 GB/s, zlib-ng 0.4-0.9 GB/s, stdlib 0.2 GB/s).
_DECODERS = ("isal.igzip", "zlib_ng.gzip_ng", "gzip")

#: Errors that mean a corrupt or truncated gzip stream, whatever the decoder.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, ValueError)


def _opener(name: str) -> Callable[..., IO[bytes]] | None:
    """Return ``open`` of the decoder module ``name``, or None if not installed."""
    if name == "gzip":
        return gzip.open
    try:
        module = __import__(name, fromlist=["open"])
    except ImportError:
        return None
    return module.open


def decoder_name() -> str:
    """Return the module :func:`decode_once` inflates with: the first one installed.

    Returns
    -------
    str
        ``"isal.igzip"``, ``"zlib_ng.gzip_ng"`` or ``"gzip"`` (always there).

    """
    return next(name for name in _DECODERS if _opener(name) is not None)


def measure_decoders(path: str | os.PathLike[str], block: int = 64 << 20) -> dict[str, float]:
    """Time one full inflate of ``path`` with each installed decoder.

    Parameters
    ----------
    path : str or os.PathLike
        A gzip file.
    block : int, default=64 MiB
        Bytes read per call.

    Returns
    -------
    dict of str to float
        Decoder name -> decoded gigabytes per second.

    """
    speeds = {}
    for name in _DECODERS:
        opener = _opener(name)
        if opener is None:
            continue
        start, total = time.perf_counter(), 0
        with opener(os.fspath(path), "rb") as stream:
            while chunk := stream.read(block):
                total += len(chunk)
        speeds[name] = total / (time.perf_counter() - start) / 1e9
    return speeds


def source_key(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """Identify a file version: absolute path, size and modification time (ns).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    tuple of (str, int, int)

    """
    absolute = os.path.abspath(os.fspath(path))
    stat = os.stat(absolute)
    return absolute, stat.st_size, stat.st_mtime_ns


def file_source(run: xr.DataArray) -> str | None:
    """Return the NIfTI file ``run`` reads unchanged, or None.

    True only for a DataArray straight from :func:`daskmask.open_nifti` of
    one file (its dask array is the reader's, not a derived one), 4-D, with a
    numeric data type: what ``fit`` computed from such a run (its mean, its
    decoded copy) is valid for ``transform`` of the same file version.

    Parameters
    ----------
    run : xarray.DataArray
        A run.

    Returns
    -------
    str or None
        The absolute path of the file.

    """
    source = run.attrs.get("source")
    data = run.data
    if (
        not isinstance(source, str)
        or not isinstance(data, da.Array)
        or not data.name.startswith("nifti-")
        or data.name.startswith("nifti-memory-")
        or run.ndim != 4
        or run.dtype.kind not in "biufc"
        or not os.path.isfile(source)
    ):
        return None
    return os.path.abspath(source)


def gzip_source(run: xr.DataArray) -> str | None:
    """Return the ``.nii.gz`` file ``run`` reads unchanged, or None.

    As :func:`file_source`, for a gzip-compressed file only.

    Parameters
    ----------
    run : xarray.DataArray
        A run.

    Returns
    -------
    str or None
        The absolute path of the file.

    """
    source = file_source(run)
    return source if source is not None and is_gzip_file(source) else None


def is_gzip_file(path: str) -> bool:
    """Whether ``path`` starts with the gzip magic bytes."""
    with open(path, "rb") as raw:
        return raw.read(2) == b"\x1f\x8b"


def _scale(raw: np.ndarray, spec: ProxySpec, dtype: np.dtype) -> np.ndarray:
    """Apply ``scl_slope``/``scl_inter`` exactly as nibabel's ArrayProxy does."""
    slope = np.asanyarray(spec.slope)
    inter = np.asanyarray(spec.inter)
    if np.can_cast(slope, slope.dtype):
        slope = slope.astype(slope.dtype)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    return np.asarray(apply_read_scaling(raw, slope, inter), dtype=dtype)


class _DecodedArray:
    """The decoded store seen as an ``(x, y, z, time)`` array, for dask.

    Holds the :class:`TemporaryStore`, so the store lives as long as any
    graph built on it; copies sent to other processes hold only its path.
    """

    def __init__(self, store: TemporaryStore | str, shape: tuple[int, ...], dtype: Any) -> None:
        self.store = store
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)

    @property
    def path(self) -> str:
        return os.path.join(os.fspath(self.store), DECODED)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        # Read the whole volumes of the time range with one pread into a
        # C-ordered (time, z, y, x) buffer: its transpose is the Fortran-ordered
        # (x, y, z, time) slab, without a copy; then apply the spatial part.
        start, stop, step = key[3].indices(self.shape[3])
        n_volumes = max(0, stop - start)
        spatial = self.shape[:3]
        slab = np.empty((n_volumes, *spatial[::-1]), dtype=self.dtype)
        volume_bytes = int(np.prod(spatial)) * self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            read_exactly(fd, memoryview(slab).cast("B"), start * volume_bytes)
        finally:
            os.close(fd)
        volumes = slab.transpose()[..., ::step]
        return volumes[key[:3]] if any(k != slice(None) for k in key[:3]) else volumes


def _read_into(stream: IO[bytes], target: memoryview) -> int:
    """Fill ``target`` from ``stream``; return the bytes read (fewer only at the end)."""
    filled = 0
    while filled < len(target):
        read = stream.readinto(target[filled:])
        if not read:
            break
        filled += read
    return filled


def decode_once(
    run: xr.DataArray, store_root: str | Path, *, chunk_volumes: int
) -> tuple[xr.DataArray, np.ndarray]:
    """Inflate a ``.nii.gz`` run once into a temporary raw copy and its mean.

    Parameters
    ----------
    run : xarray.DataArray
        A 4-D run from :func:`daskmask.open_nifti` of one ``.nii.gz`` file
        (``attrs["source"]``).
    store_root : str or Path
        Directory the temporary store is created in (e.g.
        :func:`daskmask.extraction._store.temporary_base`).
    chunk_volumes : int
        Volumes decoded, written and folded at a time (the store's chunks).

    Returns
    -------
    decoded : xarray.DataArray
        Lazy run over the store, with the dims, coords and attrs of ``run``
        plus ``attrs["decoded_store"]``; time chunks of ``chunk_volumes``.
        The store is removed when the last object built on it is collected.
    mean : numpy.ndarray
        The mean over time, equal bit for bit to
        :func:`daskmask.masking.mean_volume` of ``run``.

    Raises
    ------
    ValueError
        If ``run`` is not a 4-D run of one ``.nii.gz`` file.
    NiftiReadError
        If the file is truncated or its gzip stream is corrupt.

    """
    path = gzip_source(run)
    if path is None:
        raise ValueError("decode_once needs a 4-D run opened by open_nifti from one .nii.gz")
    image = nib.load(path)
    spec = spec_from_proxy(image.dataobj, run.shape)
    chunk_volumes = max(1, min(int(chunk_volumes), run.shape[3]))
    spatial, n_volumes = run.shape[:3], run.shape[3]
    on_disk = np.dtype(spec.on_disk_dtype)
    stored = run.dtype.newbyteorder("=")
    store = TemporaryStore(prefix="daskmask-decoded-", directory=os.fspath(store_root))
    decoded_path = os.path.join(store.root, DECODED)
    stored_volume_bytes = int(np.prod(spatial)) * stored.itemsize
    accumulator = _accumulator_dtype(run.dtype)
    running: list[np.ndarray | None] = [None]
    volume_bytes = int(np.prod(spatial)) * on_disk.itemsize
    opener = _opener(decoder_name())
    assert opener is not None

    def write_and_fold(fd: int, start: int, slab: np.ndarray) -> None:
        # C-ordered (time, z, y, x) bytes == F-ordered (x, y, z, time): one write.
        rows = np.ascontiguousarray(slab.T, dtype=stored)
        write_exactly(fd, memoryview(rows).cast("B"), start * stored_volume_bytes)
        running[0] = _fold_volumes(running[0], slab, accumulator)

    pending: Future[None] | None = None
    try:
        # The decoder runs in this thread; one helper thread writes slab n and
        # folds it into the mean while slab n + 1 is inflated (the decoders,
        # the file writes and numpy's additions release the GIL). A single
        # helper keeps the slabs, hence the floating-point sum, in time order.
        # Two buffers, inflated into in turn: a fresh 30-100 MB bytes object
        # per slab would be mapped and page-faulted afresh every time, which
        # doubled the time of this pass on the benchmark machine.
        buffers = [bytearray(chunk_volumes * volume_bytes) for _ in range(2)]
        fd = os.open(decoded_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with opener(path, "rb") as stream, ThreadPoolExecutor(1) as helper, os.fdopen(fd, "wb"):
            if len(stream.read(spec.offset)) != spec.offset:
                raise EOFError("the stream ends inside the header")
            for index, start in enumerate(range(0, n_volumes, chunk_volumes)):
                count = min(chunk_volumes, n_volumes - start)
                # The helper finished with this buffer: its job was awaited
                # before the previous slab was handed over.
                raw_bytes = memoryview(buffers[index % 2])[: count * volume_bytes]
                if _read_into(stream, raw_bytes) != count * volume_bytes:
                    raise EOFError(f"the stream ends before volume {start + count - 1}")
                # C-ordered (time, z, y, x) bytes == F-ordered (x, y, z, time).
                raw = np.frombuffer(raw_bytes, dtype=on_disk).reshape(count, *spatial[::-1])
                slab = _scale(raw.transpose(), spec, run.dtype)
                if pending is not None:
                    pending.result()
                pending = helper.submit(write_and_fold, fd, start, slab)
                del raw_bytes, raw, slab
            if pending is not None:
                pending.result()
    except _DECODE_ERRORS as error:
        store.cleanup()
        raise NiftiReadError(
            f"Cannot decode '{path}': {type(error).__name__}: {error}. The file is "
            "truncated or corrupt; re-create or re-download it."
        ) from None
    except BaseException:
        store.cleanup()
        raise
    # As numpy (and masking._mean): divide by an intp count, then cast.
    mean = np.asarray((running[0] / np.intp(n_volumes)).astype(_mean_dtype(run.dtype)))

    array = _DecodedArray(store, tuple(run.shape), run.dtype)
    data = _decoded_dask_array(array, source_key(path), chunk_volumes)
    attrs = {**run.attrs, "decoded_store": decoded_path}
    decoded = xr.DataArray(data, dims=run.dims, coords=run.coords, attrs=attrs, name=run.name)
    decoded.encoding["decoded_array"] = array
    decoded.encoding["source_key"] = source_key(path)
    return decoded, mean


def _decoded_dask_array(array: _DecodedArray, key: Any, chunk_volumes: int) -> da.Array:
    """Dask array over the decoded store, ``chunk_volumes`` whole volumes per chunk."""
    n_volumes = array.shape[3]
    chunk_volumes = max(1, min(int(chunk_volumes), n_volumes))
    time_chunks = tuple(
        min(chunk_volumes, n_volumes - start) for start in range(0, n_volumes, chunk_volumes)
    )
    chunks = (*((size,) for size in array.shape[:3]), time_chunks)
    name = "decoded-" + tokenize(key, os.fspath(array.store), chunks)
    meta = np.empty((0,) * 4, dtype=array.dtype)
    return da.from_array(
        array, chunks=chunks, name=name, meta=meta, inline_array=True, asarray=False
    )


def with_time_chunks(decoded: xr.DataArray, chunk_volumes: int) -> da.Array:
    """Return the decoded values of ``decoded`` read ``chunk_volumes`` volumes per task.

    Each task reads its slab straight from the store (a Fortran-ordered
    view of the stored bytes); rechunking the existing dask array instead
    would copy every slab into C order on the way.

    Parameters
    ----------
    decoded : xarray.DataArray
        A run returned by :func:`decode_once`.
    chunk_volumes : int
        Volumes per time chunk.

    Returns
    -------
    dask.array.Array

    """
    return _decoded_dask_array(
        decoded.encoding["decoded_array"], decoded.encoding["source_key"], chunk_volumes
    )
