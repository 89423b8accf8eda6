"""Picklable, lazily indexed arrays over NIfTI files, and their dask wrapping.

A :class:`NiftiArrayWrapper` holds only the description of where the data
live (a :class:`ProxySpec`), never an open file, so it pickles to a few hundred
bytes and can travel to distributed workers. Each process re-creates the
nibabel :class:`~nibabel.arrayproxy.ArrayProxy` from the spec and keeps it in a
small per-process cache: with ``indexed_gzip`` installed the proxy keeps its
gzip seek index, so successive time chunks of a ``.nii.gz`` read in one
process cost a single decompression pass.
"""

from __future__ import annotations

import gzip
import io
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
from dask.base import tokenize
from nibabel.arrayproxy import ArrayProxy
from xarray.backends import BackendArray
from xarray.core import indexing

from daskmask.exceptions import NiftiReadError

#: Per-process cache size (number of files whose proxies stay open).
_PROXY_CACHE_SIZE = 32

#: Errors from the gzip, zlib and nibabel read paths that mean "bad file".
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    ValueError,
)
try:  # indexed_gzip raises its own error type on corrupt streams
    from indexed_gzip import ZranError as _ZranError

    _READ_ERRORS = (*_READ_ERRORS, _ZranError)
except ImportError:  # pragma: no cover - optional dependency
    pass

Key = tuple[int | slice, ...]


class ProxySpec(NamedTuple):
    """Everything needed to re-create a nibabel ArrayProxy in any process.

    ``slope`` and ``inter`` keep the exact Python/NumPy type nibabel gave
    them, because nibabel derives the scaled dtype from their dtype.
    """

    #: Absolute path of the file holding the voxel data.
    path: str
    #: Array shape (trailing singleton dimensions beyond the 4th removed).
    shape: tuple[int, ...]
    #: On-disk dtype including byte order (a dtype, not a string, so that
    #: structured RGB types keep their fields).
    on_disk_dtype: np.dtype
    #: Byte offset of the data in the (decompressed) file.
    offset: int
    #: ``scl_slope`` as nibabel applies it (1.0 when unset).
    slope: Any
    #: ``scl_inter`` as nibabel applies it (0.0 when unset).
    inter: Any
    #: Memory layout on disk, ``"F"`` for NIfTI.
    order: str


def spec_from_proxy(proxy: ArrayProxy, shape: tuple[int, ...] | None = None) -> ProxySpec:
    """Describe a nibabel ArrayProxy backed by a file path.

    Parameters
    ----------
    proxy : nibabel.arrayproxy.ArrayProxy
        The ``dataobj`` of an image loaded from a file.
    shape : tuple of int, optional
        Shape to read the data with (used to drop trailing singleton
        dimensions, which does not change the byte layout). Defaults to the
        proxy's shape.

    Returns
    -------
    ProxySpec

    """
    return ProxySpec(
        path=os.path.abspath(os.fspath(proxy.file_like)),
        shape=tuple(int(size) for size in (proxy.shape if shape is None else shape)),
        on_disk_dtype=np.dtype(proxy.dtype),
        offset=int(proxy.offset),
        slope=proxy.slope,
        inter=proxy.inter,
        order=proxy.order,
    )


def scaled_dtype(spec: ProxySpec) -> np.dtype:
    """Return the dtype nibabel gives ``np.asanyarray(img.dataobj)``, reading nothing.

    nibabel's proxy picks the output dtype from the on-disk dtype and the
    dtypes of slope and intercept, not from the values. Running its own code
    path on a one-voxel in-memory "file" therefore gives the exact dtype.
    """
    on_disk = np.dtype(spec.on_disk_dtype)
    one_voxel = io.BytesIO(bytes(on_disk.itemsize))
    probe = ArrayProxy(one_voxel, ((1,), on_disk, 0, spec.slope, spec.inter), mmap=False)
    return np.asanyarray(probe).dtype


class _ProxyCache:
    """A small thread-safe LRU of ArrayProxy objects, one cache per process.

    Keyed on the spec plus the file's size and modification time, so a file
    rewritten in place is never read through a stale gzip index.
    """

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._proxies: OrderedDict[tuple[Any, ...], ArrayProxy] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ProxySpec) -> ArrayProxy:
        stat = os.stat(spec.path)
        key = (spec, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            proxy = self._proxies.get(key)
            if proxy is not None:
                self._proxies.move_to_end(key)
                return proxy
        # mmap=False: chunks must be plain in-memory arrays, not views that
        # keep the file mapped after the task returns.
        proxy = ArrayProxy(
            spec.path,
            (spec.shape, np.dtype(spec.on_disk_dtype), spec.offset, spec.slope, spec.inter),
            mmap=False,
            order=spec.order,
        )
        with self._lock:
            self._proxies[key] = proxy
            while len(self._proxies) > self._max_size:
                self._proxies.popitem(last=False)
        return proxy

    def discard(self, spec: ProxySpec) -> None:
        with self._lock:
            for key in [key for key in self._proxies if key[0] == spec]:
                del self._proxies[key]


_PROXIES = _ProxyCache(_PROXY_CACHE_SIZE)


def _describe_volumes(key: Key, shape: tuple[int, ...]) -> str:
    """Say which volumes a read key covers, for error messages."""
    if len(shape) < 4:
        return "the volume"
    time_key = key[3] if len(key) > 3 else slice(None)
    if isinstance(time_key, slice):
        selected = range(shape[3])[time_key]
        if len(selected) == 0:
            return "no volume"
        if len(selected) == 1:
            return f"volume {selected[0]}"
        return f"volumes {min(selected)}-{max(selected)}"
    return f"volume {int(time_key)}"


def _normalize_key(key: Any, ndim: int) -> Key:
    """Turn what dask or xarray pass into a full tuple of ints and slices."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(part is Ellipsis for part in key):
        position = key.index(Ellipsis)
        fill = (slice(None),) * (ndim - len(key) + 1)
        key = key[:position] + fill + key[position + 1 :]
    key = key + (slice(None),) * (ndim - len(key))
    return tuple(part if isinstance(part, slice) else int(part) for part in key)


def _result_shape(key: Key, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``array[key]`` for a basic key (ints drop their axis)."""
    return tuple(
        len(range(size)[part])
        for part, size in zip(key, shape, strict=True)
        if isinstance(part, slice)
    )


class NiftiArrayWrapper(BackendArray):
    """A lazily indexed, picklable view of the voxel data of one NIfTI file.

    Parameters
    ----------
    spec : ProxySpec
        Where and how the data are stored.

    Notes
    -----
    Reading goes through a nibabel ArrayProxy re-created from ``spec`` in
    the reading process, so scaling (``scl_slope``/``scl_inter``), byte order
    and the result dtype are exactly nibabel's. Decompression and truncation
    errors are re-raised as :class:`~daskmask.exceptions.NiftiReadError`
    naming the file and the volumes being read.

    """

    def __init__(self, spec: ProxySpec) -> None:
        self.spec = spec
        self.shape = spec.shape
        self.dtype = scaled_dtype(spec)

    def __getstate__(self) -> ProxySpec:
        return self.spec

    def __setstate__(self, spec: ProxySpec) -> None:
        self.__init__(spec)

    def __repr__(self) -> str:
        return f"NiftiArrayWrapper({self.spec.path!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, indexing.ExplicitIndexer):
            return indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.BASIC, self._read
            )
        return self._read(key)

    def _read(self, key: Any) -> np.ndarray:
        key = _normalize_key(key, len(self.shape))
        out_shape = _result_shape(key, self.shape)
        if 0 in out_shape:
            return np.empty(out_shape, dtype=self.dtype)
        try:
            data = _PROXIES.get(self.spec)[key]
        except FileNotFoundError as error:
            raise NiftiReadError(
                f"File not found: '{self.spec.path}' (it was removed after it was opened; "
                f"reading {_describe_volumes(key, self.shape)})."
            ) from error
        except _READ_ERRORS as error:
            _PROXIES.discard(self.spec)
            raise NiftiReadError(
                f"Cannot read {_describe_volumes(key, self.shape)} of '{self.spec.path}': "
                f"{type(error).__name__}: {error}. The file is truncated or corrupt; "
                "re-create or re-download it."
            ) from None
        return np.asarray(data, dtype=self.dtype)


class StackedNiftiArray(BackendArray):
    """Several NIfTI files of one grid read as a single 4D array along time.

    Each part is a 3D file (one volume) or a 4D file (its volumes), so that
    one dask chunk can cover many small files instead of one task per file.

    Parameters
    ----------
    parts : sequence of NiftiArrayWrapper
        The files in time order; they must share ``shape[:3]``.

    """

    def __init__(self, parts: Sequence[NiftiArrayWrapper]) -> None:
        self.parts = tuple(parts)
        volumes = [part.shape[3] if len(part.shape) == 4 else 1 for part in self.parts]
        self._offsets = np.concatenate([[0], np.cumsum(volumes)]).astype(np.int64)
        self.shape = (*self.parts[0].shape[:3], int(self._offsets[-1]))
        self.dtype = np.result_type(*(part.dtype for part in self.parts))

    def __getstate__(self) -> tuple[ProxySpec, ...]:
        return tuple(part.spec for part in self.parts)

    def __setstate__(self, specs: tuple[ProxySpec, ...]) -> None:
        self.__init__([NiftiArrayWrapper(spec) for spec in specs])

    def __repr__(self) -> str:
        return (
            f"StackedNiftiArray({len(self.parts)} files, shape={self.shape}, dtype={self.dtype})"
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, indexing.ExplicitIndexer):
            return indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.BASIC, self._read
            )
        return self._read(key)

    def _read(self, key: Any) -> np.ndarray:
        key = _normalize_key(key, 4)
        *spatial_key, time_key = key
        if isinstance(time_key, int):
            volume = self._read_volumes(spatial_key, np.array([time_key]))
            return volume[..., 0]
        selected = np.arange(self.shape[3])[time_key]
        return self._read_volumes(spatial_key, selected)

    def _read_volumes(self, spatial_key: list[int | slice], selected: np.ndarray) -> np.ndarray:
        """Read the volumes ``selected`` (global indices, in that order)."""
        selected = np.where(selected < 0, selected + self.shape[3], selected)
        out_shape = (*_result_shape(tuple(spatial_key), self.shape[:3]), len(selected))
        out = np.empty(out_shape, dtype=self.dtype)
        if out.size == 0:
            return out
        owners = np.searchsorted(self._offsets, selected, side="right") - 1
        # Consecutive selected volumes from one file are read with one call.
        run_starts = np.flatnonzero(np.diff(owners, prepend=-1))
        run_stops = np.append(run_starts[1:], len(selected))
        for start, stop in zip(run_starts, run_stops, strict=True):
            part_index = int(owners[start])
            part = self.parts[part_index]
            local = selected[start:stop] - self._offsets[part_index]
            if len(part.shape) == 3:
                block = part[tuple(spatial_key)][..., np.newaxis]
            else:
                first, last = int(local.min()), int(local.max())
                block = part[(*spatial_key, slice(first, last + 1))][..., local - first]
            out[..., start:stop] = block
        return out


def dask_array_from(
    wrapper: NiftiArrayWrapper | StackedNiftiArray,
    chunks: tuple[tuple[int, ...], ...],
    file_stats: Sequence[tuple[int, int]],
) -> da.Array:
    """Wrap a NIfTI array in dask, one task per chunk.

    Parameters
    ----------
    wrapper : NiftiArrayWrapper or StackedNiftiArray
        The lazily indexed array.
    chunks : tuple of tuple of int
        Full dask chunks, e.g. from :func:`~daskmask.reading._chunks.plan_time_chunks`.
    file_stats : sequence of (int, int)
        ``(size, mtime_ns)`` of every file read, so that the graph name
        changes whenever a file changes.

    Returns
    -------
    dask.array.Array

    """
    specs = wrapper.__getstate__()
    name = "nifti-" + tokenize(specs, tuple(file_stats), chunks)
    meta = np.empty((0,) * len(wrapper.shape), dtype=wrapper.dtype)
    return da.from_array(
        wrapper, chunks=chunks, name=name, meta=meta, inline_array=True, asarray=False
    )
