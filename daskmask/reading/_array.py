"""Picklable, lazily indexed arrays over NIfTI files, and their dask wrapping.

A :class:`NiftiArrayWrapper` holds only the description of where the data
live (a :class:`ProxySpec`), never an open file, so it pickles to a few hundred
bytes and can travel to distributed workers. Each process re-creates its
reader from the spec and keeps it in a small per-process cache: a nibabel
:class:`~nibabel.arrayproxy.ArrayProxy` for uncompressed files, and for a
``.nii.gz`` a seekable gzip reader (``indexed_gzip`` when installed) that keeps
its seek index, so successive time chunks read in one process cost a single
decompression pass.

Every read checks, with one ``stat``, that the file is still the version that
was opened (:func:`~daskmask.reading._integrity.check_unchanged`).

An object in a store (``s3://``, ``gs://``, ...; the spec's ``location``) is
read with one ranged request per time slab, in the process that needs the
slab: the slab's contiguous bytes, then nibabel's scaling. Before each read one
HEAD request (``info``, bypassing fsspec's cache) checks that the object still
has the size and ETag/version id recorded at open. A remote ``.nii.gz`` is
decoded lazily through a seekable decoder over the fsspec file (large blocks,
read-ahead): each process that reads it decodes it once. The time
slabs of a ``.nii.gz`` are read as raw bytes whose CRC32 is folded as they
stream by; once the slabs read in a process cover the whole data, the
combined CRC32 is compared with the gzip trailer (see
:class:`GzipSlabReader` for what a partial read can and cannot detect).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import io
import math
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, NamedTuple

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from nibabel.arrayproxy import ArrayProxy
from nibabel.volumeutils import apply_read_scaling
from xarray.backends import BackendArray
from xarray.core import indexing

from daskmask._folding import add_volumes, exact_sum_dtype
from daskmask._fs import (
    Location,
    close_streamed,
    open_streamed,
    storage_errors,
    take_parked_stream,
)
from daskmask._memory import task_budget_bytes, total_threads
from daskmask._rawio import read_exactly
from daskmask.exceptions import (
    InputChangedError,
    NiftiReadError,
    StorageError,
    StorageUnreachableError,
)
from daskmask.reading._integrity import (
    Identity,
    ObjectVersion,
    check_object_unchanged,
    check_unchanged,
    crc32,
    crc32_combine,
    file_identity,
    verify_gzip_stream,
)

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
    #: ``(size, mtime_ns, inode)`` of the file when it was opened (see
    #: :func:`~daskmask.reading._integrity.file_identity`); every read checks
    #: it. None: not recorded, not checked.
    identity: Identity | None = None
    #: Whether the file is a ``.gz`` (time slabs read by :class:`GzipSlabReader`).
    gzip: bool = False
    #: Where an object in a store lives (URL and file-system options); None
    #: for a local file (read through nibabel and ``pread``).
    location: Location | None = None
    #: ``(size, version)`` of the object when it was opened (version: ETag or
    #: version id); every read of an object checks it. None for local files.
    version: ObjectVersion | None = None


#: Block size of the fsspec file a remote ``.nii.gz`` is decoded from: few,
#: large sequential requests (read ahead), not one per decoder call.
REMOTE_GZIP_BLOCK_BYTES = 32 << 20


def open_remote_stream(location: Location) -> IO[bytes]:
    """Open an object for random access: large blocks, read-ahead cache (seekable)."""
    return location.open("rb", block_size=REMOTE_GZIP_BLOCK_BYTES, cache_type="readahead")


#: Bytes per ranged request of :func:`open_sequential` when the file system
#: cannot stream one response body.
SEQUENTIAL_RANGE_BYTES = 64 << 20
#: Buffer of the reader :func:`open_sequential` returns: small reads (a gzip
#: decoder's) are served from it, reads as large or larger go straight through.
_SEQUENTIAL_BUFFER_BYTES = 8 << 20


def open_sequential(location: Location, nbytes: int | None = None) -> IO[bytes]:
    """Open an object for one pass from its first byte: as few requests as possible.

    Where the file system streams a response body (``open_async``: s3fs,
    HTTP), the object is one GET whose body is read as it arrives, with the
    flow control of the connection bounding what is buffered. Otherwise it is
    read by ranged requests of :data:`SEQUENTIAL_RANGE_BYTES`, the next one
    in flight while the current one is consumed. Not seekable.

    Per-request costs decide the speed of a whole pass: moto's server reads
    the whole object for every ranged GET (70-150 MB/s with 64 MiB ranges of
    a 0.2-1 GB object, 2024's moto 5.2), and streams one GET at 700-850 MB/s.

    Parameters
    ----------
    location : daskmask._fs.Location
        The object (not local).
    nbytes : int, optional
        Bytes to read from the start (default: the whole object); a ranged
        read asks for no more.

    Returns
    -------
    file object
        Buffered, read-only. Storage failures raise
        :class:`~daskmask.exceptions.StorageError` subclasses naming the URL.

    """
    return io.BufferedReader(_SequentialObject(location, nbytes), _SEQUENTIAL_BUFFER_BYTES)


class _SequentialObject(io.RawIOBase):
    """The raw reader of :func:`open_sequential`."""

    def __init__(self, location: Location, nbytes: int | None) -> None:
        self.url = location.url
        self._location = location
        self._limit = nbytes
        self._position = 0
        # The GET that read the object's first bytes, when it is still open.
        parked = take_parked_stream(location)
        self._prefix = parked.head if parked is not None else b""
        if parked is not None:
            fs, self._stream = parked.fs, parked.stream
        else:
            with storage_errors(self.url):
                fs = location.fs
                self._stream = open_streamed(fs, location.path)
        self._fs = fs
        # The piece being consumed (the response's chunks as the network
        # delivered them, not yet copied out) and the next one in flight: the
        # network delivers piece k+1 while the caller writes or folds piece k.
        # Each byte is copied once, into the caller's buffer: gathering the
        # chunks into a fresh 8 MiB buffer first cost a copy and 2,048 page
        # faults per piece (0.5-0.9 s of CPU for a 2.2 GB object).
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._piece_end = len(self._prefix)
        self._fetcher: ThreadPoolExecutor | None = None
        self._next: Future[Any] | None = None
        if self._stream is None:
            if self._limit is None:
                self._limit = location.stat().size
            self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="daskmask-fetch")
        self._submit_next(self._piece_end)

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        view = memoryview(target).cast("B")
        if self._limit is not None:
            view = view[: max(0, self._limit - self._position)]
        if not len(view):
            return 0
        if self._position < len(self._prefix):
            count = min(len(view), len(self._prefix) - self._position)
            view[:count] = self._prefix[self._position : self._position + count]
            self._position += count
            return count
        try:
            with storage_errors(self.url):
                filled = self._fill_from_pieces(view)
        except StorageError:
            raise
        except Exception as error:  # a connection broken mid-body (aiohttp, botocore)
            raise StorageUnreachableError(
                f"{self.url}: the connection broke while reading the object "
                f"({type(error).__name__}: {error}). Check the endpoint and the network, "
                "then run again."
            ) from None
        self._position += filled
        return filled

    def _fetch(self, start: int) -> list[bytes]:
        assert self._limit is not None
        length = min(SEQUENTIAL_RANGE_BYTES, self._limit - start)
        return [self._location.read_range(start, length)] if length > 0 else []

    def _submit_next(self, start: int) -> None:
        """Put the piece starting at ``start`` in flight (the stream's next bytes, or a range)."""
        if self._stream is None:
            assert self._fetcher is not None
            self._next = self._fetcher.submit(self._fetch, start)
            return
        length = _SEQUENTIAL_BUFFER_BYTES
        if self._limit is not None:
            length = min(length, self._limit - start)
        if length <= 0:
            self._next = Future()
            self._next.set_result([])
            return
        self._next = asyncio.run_coroutine_threadsafe(
            _read_chunks(self._stream, length), self._fs.loop
        )

    def _fill_from_pieces(self, view: memoryview) -> int:
        chunks = self._chunks
        filled = 0
        while filled < len(view):
            if not chunks:
                assert self._next is not None
                piece = self._next.result()
                size = sum(len(chunk) for chunk in piece)
                if not size:
                    break
                chunks.extend(memoryview(chunk).cast("B") for chunk in piece)
                self._piece_end += size
                self._submit_next(self._piece_end)
                continue
            chunk = chunks[0]
            count = min(len(chunk), len(view) - filled)
            view[filled : filled + count] = chunk[:count]
            filled += count
            if count == len(chunk):
                chunks.popleft()
            else:
                chunks[0] = chunk[count:]
        return filled

    def close(self) -> None:
        if self.closed:
            return
        self._chunks.clear()
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=True, cancel_futures=True)
        if self._stream is not None:
            if self._next is not None and not self._next.done():
                # The piece in flight is not wanted: stop it before closing its stream.
                self._next.cancel()
                with contextlib.suppress(BaseException):
                    self._next.result(timeout=10)
            close_streamed(self._fs, self._stream)
        super().close()


async def _read_chunks(stream: Any, length: int) -> list[bytes]:
    """Read the next ``length`` bytes of an fsspec async streamed file (fewer at its end).

    Returns the chunks as the stream gave them (aiohttp hands over its
    received buffers without copying them), none once the stream has ended.
    """
    chunks: list[bytes] = []
    filled = 0
    while filled < length:
        chunk = await stream.read(length - filled)
        if not chunk:
            break
        chunks.append(chunk)
        filled += len(chunk)
    return chunks


def current_version(location: Location) -> ObjectVersion:
    """Return the ``(size, version)`` of an object now (one fresh HEAD request)."""
    stat = location.stat(refresh=True)
    return stat.size, stat.version


def spec_from_proxy(
    proxy: ArrayProxy, shape: tuple[int, ...] | None = None, identity: Identity | None = None
) -> ProxySpec:
    """Describe a nibabel ArrayProxy backed by a file path.

    Parameters
    ----------
    proxy : nibabel.arrayproxy.ArrayProxy
        The ``dataobj`` of an image loaded from a file.
    shape : tuple of int, optional
        Shape to read the data with (used to drop trailing singleton
        dimensions, which does not change the byte layout). Defaults to the
        proxy's shape.
    identity : tuple of (int, int, int), optional
        The file version to read; defaults to the file's as it is now.

    Returns
    -------
    ProxySpec

    """
    path = os.path.abspath(os.fspath(proxy.file_like))
    if identity is None:
        identity = file_identity(os.stat(path))
    return ProxySpec(
        path=path,
        shape=tuple(int(size) for size in (proxy.shape if shape is None else shape)),
        on_disk_dtype=np.dtype(proxy.dtype),
        offset=int(proxy.offset),
        slope=proxy.slope,
        inter=proxy.inter,
        order=proxy.order,
        identity=identity,
        # As nibabel, which picks its decoder by suffix.
        gzip=path.lower().endswith(".gz"),
    )


def data_bytes(spec: ProxySpec) -> tuple[int, int]:
    """Return where the voxel data start and end in the (decoded) file, in bytes."""
    size = math.prod(spec.shape) * np.dtype(spec.on_disk_dtype).itemsize
    return spec.offset, spec.offset + size


def scale(raw: np.ndarray, spec: ProxySpec, dtype: np.dtype) -> np.ndarray:
    """Apply ``scl_slope``/``scl_inter`` exactly as nibabel's ArrayProxy does.

    Parameters
    ----------
    raw : numpy.ndarray
        Values as stored on disk.
    spec : ProxySpec
        Holds the slope and intercept with nibabel's types.
    dtype : numpy.dtype
        The result dtype (:func:`scaled_dtype`).

    Returns
    -------
    numpy.ndarray

    """
    slope = np.asanyarray(spec.slope)
    inter = np.asanyarray(spec.inter)
    if np.can_cast(slope, slope.dtype):
        slope = slope.astype(slope.dtype)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    return np.asarray(apply_read_scaling(raw, slope, inter), dtype=dtype)


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


#: Reads of up to this many bytes get their buffer at once; a larger read
#: grows it as the decoded bytes arrive, so a header that promises more data
#: than the stream holds fails before the whole promise is allocated.
DIRECT_ALLOCATION_BYTES = 256 << 20
#: Size of the pieces a larger read grows by.
_GROWTH_BYTES = 64 << 20


def read_into(stream: IO[bytes], target: memoryview) -> int:
    """Fill ``target`` from ``stream``; return the bytes read (fewer only at the end)."""
    filled = 0
    while filled < len(target):
        read = stream.readinto(target[filled:])
        if not read:
            break
        filled += read
    return filled


def read_fully(stream: IO[bytes], nbytes: int) -> np.ndarray:
    """Read exactly ``nbytes`` from ``stream`` into a new ``uint8`` array.

    Up to :data:`DIRECT_ALLOCATION_BYTES` the array is allocated at once;
    beyond, it is read in pieces and joined only when every byte has arrived,
    so a stream that ends short never costs the size its header promised.

    Raises
    ------
    EOFError
        If the stream ends first (the message says how far it went).

    """
    if nbytes <= DIRECT_ALLOCATION_BYTES:
        buffer = np.empty(nbytes, np.uint8)
        filled = read_into(stream, memoryview(buffer))
        if filled != nbytes:
            raise EOFError(f"the decoded stream ends {filled} bytes into a read of {nbytes}")
        return buffer
    pieces, filled = [], 0
    while filled < nbytes:
        piece = np.empty(min(_GROWTH_BYTES, nbytes - filled), np.uint8)
        got = read_into(stream, memoryview(piece))
        filled += got
        if got != len(piece):
            raise EOFError(f"the decoded stream ends {filled} bytes into a read of {nbytes}")
        pieces.append(piece)
    return np.concatenate(pieces)


def _open_seekable_gzip(raw: IO[bytes]) -> IO[bytes]:
    """Return a seekable decoder over an open ``.gz``: ``indexed_gzip`` if installed."""
    try:
        from indexed_gzip import IndexedGzipFile
    except ImportError:  # pragma: no cover - optional dependency
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return IndexedGzipFile(fileobj=raw, drop_handles=False)


class GzipSlabReader:
    """Byte ranges of the decoded stream of one ``.nii.gz`` version, in one process.

    Keeps one open descriptor (so a file replaced on disk after this reader
    was made is not mixed in) and one seekable decoder with its seek index.
    The CRC32 of every range read is folded as it streams by (no second
    pass); once the ranges read by this process cover the whole voxel data,
    they are combined with the header's into the CRC32 of the stream and
    compared with the gzip trailer. A mismatch raises
    :class:`~daskmask.exceptions.NiftiReadError` in the read that completed
    the coverage, and in every later read of this file version.

    What can and cannot be detected:

    * A **full read** (every time chunk, in any order, by the threads of one
      process: ``.compute()``, ``.values``, ``fit``) checks the CRC32 and the
      size of the whole stream, so any flipped bit is caught.
    * A **partial read** (one slab, some volumes, a spatial subset, or a full
      read spread over several worker processes) cannot check a CRC32 that
      covers the whole stream. It detects only what the decoder notices on the
      way (an invalid deflate code, a stream that ends early) and a file
      changed since it was opened. A flipped bit inside stored (level 0) or
      validly decodable deflate data gives wrong values silently. ``gzip -t``
      or a full read detects it.

    Parameters
    ----------
    spec : ProxySpec
        The file version (its ``identity`` is checked when the file is opened).

    """

    def __init__(self, spec: ProxySpec) -> None:
        self.path = spec.path
        self._data_start, self._data_end = data_bytes(spec)
        self._location = spec.location
        self._identity: Any
        if spec.location is None:
            self._raw = open(spec.path, "rb")  # noqa: SIM115 - lives as long as the reader
            stat = os.fstat(self._raw.fileno())
            check_unchanged(spec.path, spec.identity, stat)
            self._identity = file_identity(stat)
            self._compressed_size = stat.st_size
        else:
            # The caller checked the version just before (one HEAD request).
            self._raw = open_remote_stream(spec.location)
            self._identity = spec.version
            self._compressed_size = spec.version[0] if spec.version else self._raw.size
        self._stream = _open_seekable_gzip(self._raw)
        self._lock = threading.Lock()
        self._pieces: dict[int, tuple[int, int]] = {}
        self._pieces_lock = threading.Lock()
        self._checking = False
        self.verified = False

    def read(self, start: int, nbytes: int) -> np.ndarray:
        """Return ``nbytes`` decoded bytes from offset ``start`` as ``uint8``.

        Raises
        ------
        EOFError
            If the stream ends first.
        NiftiReadError
            If this read completes a full pass whose CRC32 does not match.

        """
        with self._lock:
            self._stream.seek(start)
            data = read_fully(self._stream, nbytes)
        if not self.verified and self._data_start <= start and nbytes:
            self._record(start, nbytes, crc32(data))
        return data

    def _record(self, start: int, nbytes: int, crc: int) -> None:
        with self._pieces_lock:
            self._pieces[start] = (start + nbytes, crc)
            chain = None if self._checking else self._chain()
            if chain is None:
                return
            self._checking = True
        try:
            self._verify(chain)
        finally:
            self._checking = False

    def _chain(self) -> list[tuple[int, int]] | None:
        """``(crc, length)`` of pieces covering the data in order, or None."""
        chain, position = [], self._data_start
        while position < self._data_end:
            piece = self._pieces.get(position)
            if piece is None:
                return None
            end, crc = piece
            chain.append((crc, end - position))
            position = end
        return chain if position == self._data_end else None

    def _verify(self, chain: list[tuple[int, int]]) -> None:
        try:
            with self._lock:
                self._stream.seek(0)
                header = read_fully(self._stream, self._data_start)
            total = crc32(header)
            for crc, length in chain:
                total = crc32_combine(total, crc, length)
            trailer = self._trailer()
            expected_crc = int.from_bytes(trailer[:4], "little")
            expected_size = int.from_bytes(trailer[4:], "little")
            if total == expected_crc and self._data_end % (1 << 32) == expected_size:
                self.verified = True
                return
            # Several gzip members, bytes after the voxel data, or corruption:
            # decode the whole stream once and let the decoder's checks decide.
            if self._location is None:
                verify_gzip_stream(self.path, self._identity)
            else:
                with open_sequential(self._location) as raw:
                    verify_gzip_stream(self.path, raw=raw)
        except _READ_ERRORS as error:
            message = (
                f"'{self.path}' is corrupt (CRC mismatch): the CRC32 of its decoded data "
                f"does not match its gzip trailer ({type(error).__name__}: {error}). "
                "Re-create or re-download the file."
            )
            _CORRUPT[self.path, self._identity] = message
            raise NiftiReadError(message) from None
        self.verified = True

    def _trailer(self) -> bytes:
        """Return the last 8 bytes of the compressed file (CRC32 and size of its last member)."""
        if self._location is None:
            return os.pread(self._raw.fileno(), 8, self._compressed_size - 8)
        return self._location.read_range(self._compressed_size - 8, 8)


#: Messages of the file versions found corrupt in this process, by (path,
#: identity) for files and (URL, (size, version)) for objects.
_CORRUPT: dict[tuple[str, Any], str] = {}


class _Readers(NamedTuple):
    """What one process reads one file version with.

    ``proxy`` is None for an object in a store (read by ranges, or by
    ``gzip``).
    """

    proxy: ArrayProxy | None
    gzip: GzipSlabReader | None


class _ProxyCache:
    """A small thread-safe LRU of file readers, one cache per process.

    Keyed on the spec (which holds the file version it was opened at) plus
    the file's size and modification time. Every ``get`` stats the file once
    and raises :class:`~daskmask.exceptions.InputChangedError` if it is no
    longer the version that was opened. A forked child starts afresh: open
    descriptors and gzip indexes are not shared between processes.
    """

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._proxies: OrderedDict[tuple[Any, ...], _Readers] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def get(self, spec: ProxySpec) -> _Readers:
        if spec.location is not None:
            return self._get_remote(spec)
        stat = os.stat(spec.path)
        check_unchanged(spec.path, spec.identity, stat)
        corrupt = _CORRUPT.get((spec.path, file_identity(stat)))
        if corrupt is not None:
            raise NiftiReadError(corrupt)
        key = (spec, stat.st_size, stat.st_mtime_ns)
        readers = self._cached(key)
        if readers is not None:
            return readers
        # mmap=False: chunks must be plain in-memory arrays, not views that
        # keep the file mapped after the task returns.
        proxy = ArrayProxy(
            spec.path,
            (spec.shape, np.dtype(spec.on_disk_dtype), spec.offset, spec.slope, spec.inter),
            mmap=False,
            order=spec.order,
        )
        gzip_reader = GzipSlabReader(spec) if spec.gzip else None
        readers = _Readers(proxy, gzip_reader)
        with self._lock:
            # Readers of an older version of this path can no longer pass the
            # check above: drop them, and the descriptor they hold open.
            for stale in [
                other
                for other in self._proxies
                if other[0].path == spec.path and other[1:] != key[1:]
            ]:
                del self._proxies[stale]
            # Two threads may have made readers at once: keep the first.
            readers = self._proxies.setdefault(key, readers)
            while len(self._proxies) > self._max_size:
                self._proxies.popitem(last=False)
        return readers

    def _cached(self, key: tuple[Any, ...]) -> _Readers | None:
        """Readers cached under ``key`` in this process (a forked child starts empty)."""
        with self._lock:
            if self._pid != os.getpid():
                self._proxies.clear()
                self._pid = os.getpid()
            readers = self._proxies.get(key)
            if readers is not None:
                self._proxies.move_to_end(key)
            return readers

    def _get_remote(self, spec: ProxySpec) -> _Readers:
        """Readers of an object, after one HEAD request checking its version."""
        assert spec.location is not None
        current = current_version(spec.location)
        check_object_unchanged(spec.path, spec.version, current)
        corrupt = _CORRUPT.get((spec.path, current))
        if corrupt is not None:
            raise NiftiReadError(corrupt)
        if not spec.gzip:
            return _Readers(None, None)  # ranged reads need no per-process state
        key = (spec, *current)
        readers = self._cached(key)
        if readers is not None:
            return readers
        readers = _Readers(None, GzipSlabReader(spec))
        with self._lock:
            readers = self._proxies.setdefault(key, readers)
            while len(self._proxies) > self._max_size:
                self._proxies.popitem(last=False)
        return readers

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
        with self._read_failures(key):
            readers = _PROXIES.get(self.spec)
            span = _slab_span(key, self.shape)
            if readers.proxy is None:
                data = self._read_remote(readers.gzip, key)
            elif readers.gzip is not None and span is not None:
                data = self._read_slab(readers.gzip, *span)
            else:
                data = readers.proxy[key]
        return np.asarray(data, dtype=self.dtype)

    @contextlib.contextmanager
    def _read_failures(self, key: Key) -> Iterator[None]:
        """Turn the failures of a read of ``key`` into errors naming the file and volumes."""
        try:
            yield
        except (NiftiReadError, InputChangedError, StorageError):
            raise
        except FileNotFoundError as error:
            raise NiftiReadError(
                f"File not found: '{self.spec.path}' (it was removed after it was opened; "
                f"reading {_describe_volumes(key, self.shape)})."
            ) from error
        except _READ_ERRORS as error:
            _PROXIES.discard(self.spec)
            raise self._read_error(key, error) from None

    def sum_volumes(self, slabs: Sequence[tuple[int, int]], dtype: np.dtype) -> np.ndarray:
        """Return the exact sum of the volumes ``first:stop`` of every slab of a local ``.nii``.

        For an uncompressed local file of integers stored unscaled (see
        :func:`summable_read`). Each slab is read with ``preadv`` into one
        buffer the call allocates once and reuses, so that the pass faults
        only that buffer's pages, not fresh memory for every slab (costly on
        the benchmark's virtual machine, see :mod:`daskmask._memory`), and
        the buffer never leaves the call: only the sum does.

        Parameters
        ----------
        slabs : sequence of (int, int)
            Volume ranges ``(first, stop)``, each at most the buffer's size.
        dtype : numpy.dtype
            The sum's dtype (:func:`daskmask._folding.exact_sum_dtype`).

        Returns
        -------
        numpy.ndarray
            1-D sum over the volumes, voxels in the file's (Fortran) order.

        Raises
        ------
        NiftiReadError
            If the file was removed or ends early (the message names the volumes).
        InputChangedError
            If the file is no longer the version that was opened.

        """
        spec = self.spec
        on_disk = np.dtype(spec.on_disk_dtype)
        voxels = math.prod(self.shape[:-1])
        total = np.zeros(voxels, dtype)
        if not slabs:
            return total
        longest = max(stop - first for first, stop in slabs)
        buffer = np.empty(longest * voxels * on_disk.itemsize, np.uint8)
        whole = (slice(None),) * (len(self.shape) - 1)
        first_slab = (*whole, slice(*slabs[0]))
        with self._read_failures(first_slab):
            fd = os.open(spec.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            with self._read_failures(first_slab):
                check_unchanged(spec.path, spec.identity, os.fstat(fd))
            for first, stop in slabs:
                view = buffer[: (stop - first) * voxels * on_disk.itemsize]
                with self._read_failures((*whole, slice(first, stop))):
                    start = spec.offset + first * voxels * on_disk.itemsize
                    read_exactly(fd, memoryview(view), start)
                add_volumes(total, view.view(on_disk).reshape(stop - first, voxels))
        finally:
            os.close(fd)
        return total

    def _read_error(self, key: Key, error: BaseException) -> NiftiReadError:
        """Name the file, the volumes and the problem; remember a CRC mismatch."""
        reason = f"{type(error).__name__}: {error}"
        volumes = _describe_volumes(key, self.shape)
        if "crc" not in reason.lower():
            return NiftiReadError(
                f"Cannot read {volumes} of '{self.spec.path}': {reason}. The file is "
                "truncated or corrupt; re-create or re-download it."
            )
        # indexed_gzip checks the trailer itself when one read decodes the
        # whole stream from its start.
        message = (
            f"'{self.spec.path}' is corrupt (CRC mismatch): reading {volumes}, its decoded "
            f"data did not match its gzip trailer ({reason}). Re-create or re-download it."
        )
        if self.spec.identity is not None:
            _CORRUPT[self.spec.path, tuple(self.spec.identity)] = message
        return NiftiReadError(message)

    def _read_slab(self, reader: GzipSlabReader, first: int, stop: int, squeeze: bool) -> Any:
        """Read whole leading dimensions, ``first:stop`` along the last, as raw bytes.

        In Fortran order such a slab (whole volumes of a 4D run) is one
        contiguous byte range of the decoded stream.
        """
        on_disk = np.dtype(self.spec.on_disk_dtype)
        leading = self.shape[:-1]
        stride = math.prod(leading) * on_disk.itemsize
        raw = reader.read(self.spec.offset + first * stride, (stop - first) * stride)
        values = raw.view(on_disk).reshape((*leading, stop - first), order="F")
        if squeeze:
            values = values[..., 0]
        return scale(values, self.spec, self.dtype)

    def _read_remote(self, reader: GzipSlabReader | None, key: Key) -> np.ndarray:
        """Read an object: the whole leading dimensions over the key's last-axis range.

        One ranged request (or one decoded range of a ``.nii.gz``) fetches the
        contiguous bytes of those slabs; the rest of the key is applied in
        memory, then nibabel's scaling.
        """
        assert self.spec.location is not None
        on_disk = np.dtype(self.spec.on_disk_dtype)
        leading = self.shape[:-1]
        stride = math.prod(leading) * on_disk.itemsize
        first, stop, local = _covering_span(key, self.shape)
        start, nbytes = self.spec.offset + first * stride, (stop - first) * stride
        if reader is not None:
            raw = reader.read(start, nbytes)
        else:
            with storage_errors(self.spec.path):
                fetched = self.spec.location.read_range(start, nbytes)
            if len(fetched) != nbytes:
                raise EOFError(f"the object ends {len(fetched)} bytes into a read of {nbytes}")
            raw = np.frombuffer(fetched, np.uint8)
        values = raw.view(on_disk).reshape((*leading, stop - first), order="F")
        values = values[(*key[:-1], slice(None))][..., local]
        scaled = scale(values, self.spec, self.dtype)
        # Bytes from the network are read-only: hand out a writable array.
        return scaled if scaled.flags.writeable else scaled.copy()


def _covering_span(key: Key, shape: tuple[int, ...]) -> tuple[int, int, Any]:
    """``(first, stop, local)``: the last-axis range a key touches, and its index in it."""
    last, size = key[-1], shape[-1]
    if isinstance(last, int):
        index = range(size)[last]
        return index, index + 1, 0
    selected = range(size)[last]
    first, stop = min(selected), max(selected) + 1
    if last.indices(size)[2] == 1:
        return first, stop, slice(None)
    return first, stop, np.asarray(selected) - first


def _slab_span(key: Key, shape: tuple[int, ...]) -> tuple[int, int, bool] | None:
    """``(first, stop, squeeze)`` along the last axis if ``key`` is a contiguous slab.

    A slab keeps every other axis whole and takes a step-1 range (or one
    index, then ``squeeze``) of the last: what dask's time chunks read.
    """
    for part, size in zip(key[:-1], shape[:-1], strict=True):
        if not isinstance(part, slice) or part.indices(size) != (0, size, 1):
            return None
    last, size = key[-1], shape[-1]
    if isinstance(last, slice):
        first, stop, step = last.indices(size)
        return (first, stop, False) if step == 1 and stop > first else None
    index = range(size)[last]
    return index, index + 1, True


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
    file_stats: Sequence[tuple[int, ...]],
) -> da.Array:
    """Wrap a NIfTI array in dask, one task per chunk.

    Parameters
    ----------
    wrapper : NiftiArrayWrapper or StackedNiftiArray
        The lazily indexed array.
    chunks : tuple of tuple of int
        Full dask chunks, e.g. from :func:`~daskmask.reading._chunks.plan_time_chunks`.
    file_stats : sequence of tuple of int
        The version of every file read (``(size, mtime_ns, inode)``), so that
        the graph name changes whenever a file changes.

    Returns
    -------
    dask.array.Array

    """
    specs = wrapper.__getstate__()
    name = "nifti-" + tokenize(specs, tuple(file_stats), chunks)
    meta = np.empty((0,) * len(wrapper.shape), dtype=wrapper.dtype)
    if isinstance(wrapper, NiftiArrayWrapper):
        with _READS_LOCK:
            _READS[name] = wrapper
            _READS.move_to_end(name)
            while len(_READS) > _READS_SIZE:
                _READS.popitem(last=False)
    return da.from_array(
        wrapper, chunks=chunks, name=name, meta=meta, inline_array=True, asarray=False
    )


#: The wrappers of the dask arrays :func:`dask_array_from` made in this
#: process, by array name. A dask array's name is the token of its specs,
#: file versions and chunks, so an array of one of these names is that read,
#: unchanged; any operation on it has another name.
_READS: OrderedDict[str, NiftiArrayWrapper] = OrderedDict()
_READS_LOCK = threading.Lock()
_READS_SIZE = 256

#: Bytes one task of :func:`time_sum` reads at a time into its buffer: the
#: slabs of the minimal program of benchmarks/bench_floor.py.
SUM_SLAB_BYTES = 32 << 20


def summable_read(array: da.Array) -> NiftiArrayWrapper | None:
    """Return the wrapper of the local uncompressed integer file ``array`` reads unchanged.

    Such a file's values are its bytes (nibabel applies no scaling: the
    array's dtype is an integer one), so their sum over time can be folded
    straight from ``preadv`` reads (:meth:`NiftiArrayWrapper.sum_volumes`).
    None for any other array (compressed, remote, scaled, derived, ...).
    """
    with _READS_LOCK:
        wrapper = _READS.get(getattr(array, "name", None))
    if wrapper is None:
        return None
    spec = wrapper.spec
    if (
        spec.gzip
        or spec.location is not None
        or len(spec.shape) != 4
        or tuple(array.shape) != tuple(spec.shape)
        or np.dtype(wrapper.dtype).kind not in "iu"
        or exact_sum_dtype(spec.on_disk_dtype, spec.shape[3]) is None
        or 0 in spec.shape
    ):
        return None
    return wrapper


def time_sum(array: da.Array) -> da.Array | None:
    """Exact float64 sum over time (the last axis) of a local uncompressed integer run.

    One task per thread of the scheduler (:func:`daskmask._memory.total_threads`),
    task ``i`` of ``n`` folding the slabs ``i, i + n, ...`` of
    :data:`SUM_SLAB_BYTES` (or the task budget, when smaller) into an exact
    integer sum with one reused buffer, as the minimal program does; one
    last task adds the partial sums in float64 (exact: integers below
    2**53). The graph does not grow with the run.

    Parameters
    ----------
    array : dask.array.Array
        A run as :func:`dask_array_from` made it.

    Returns
    -------
    dask.array.Array or None
        The 3-D float64 sum, or None when ``array`` is not such a read (see
        :func:`summable_read`): the caller sums it another way.

    """
    wrapper = summable_read(array)
    if wrapper is None:
        return None
    spec = wrapper.spec
    *spatial, n_volumes = spec.shape
    dtype = exact_sum_dtype(spec.on_disk_dtype, n_volumes)
    volume_bytes = math.prod(spatial) * np.dtype(spec.on_disk_dtype).itemsize
    per_slab = max(1, min(SUM_SLAB_BYTES, task_budget_bytes()) // volume_bytes)
    slabs = [(first, min(first + per_slab, n_volumes)) for first in range(0, n_volumes, per_slab)]
    lanes = min(len(slabs), total_threads())
    token = tokenize(array.name, per_slab, lanes)
    parts = [
        dask.delayed(wrapper.sum_volumes, pure=True)(
            tuple(slabs[lane::lanes]), dtype, dask_key_name=f"nifti-time-sum-{lane}-{token}"
        )
        for lane in range(lanes)
    ]
    total = dask.delayed(_add_in_float64, pure=True)(
        parts, tuple(spatial), dask_key_name=f"nifti-time-sum-{token}"
    )
    return da.from_delayed(total, shape=tuple(spatial), dtype=np.float64)


def _add_in_float64(parts: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Add exact integer partial sums in float64, in Fortran order as the file's voxels."""
    total = parts[0].astype(np.float64)
    for part in parts[1:]:
        total += part
    return total.reshape(shape, order="F")
