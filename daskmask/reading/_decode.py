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

**Parallel inflate.** rapidgzip (the ``fast`` extra) splits one ordinary
gzip stream into chunks that :data:`PARALLEL_THREADS` threads decode side by
side: the HCP-like run (1.0 GB compressed, 2.2 GB decoded) inflates in 2.8 s
on 2 cores (5.4 s of CPU), against 3.8-4.1 s for isal alone (3.9 s of CPU).
But this pass also writes the decoded copy and folds the mean, and on 2
cores the three compete: the whole HCP-like run took 11.4 s with rapidgzip
against 10.5 s with isal, and peaked 57-127 MiB higher (benchmarks/README.md,
"Speed round 3"). So rapidgzip inflates a local file of at least
:data:`PARALLEL_MIN_BYTES` only where the writer and the folder keep a core
each besides its threads (:data:`PARALLEL_MIN_CORES`); elsewhere, for
objects (a streamed GET cannot be read at several offsets at once) and for
small files, the sequential decoder (:func:`decoder_name`) does. The dask
config ``daskmask.gzip-decoder`` forces one (``"rapidgzip"``,
``"isal.igzip"``, ``"zlib_ng.gzip_ng"`` or ``"gzip"``; default ``"auto"``).

The pass reads the stream to its very end, so the decoder checks the CRC32 and
size of every gzip trailer (no second pass): a flipped bit anywhere in the
file raises :class:`~daskmask.exceptions.NiftiReadError`. rapidgzip checks
them too, but returns a stream cut inside a deflate block as if it had ended
there; so its pass is accepted only if it consumed the whole file and the
decoded size matches the size in the file's last trailer. Anything else (an
error of rapidgzip, a short stream, a file of several gzip members, padding
after the last member) makes the sequential decoder redo the pass from the
first byte, and its verdict is final: a damaged file raises the same error
as without rapidgzip, a valid file the parallel pass refused is decoded in a
second pass.

The pass decodes the file version :func:`~daskmask.reading.open_nifti`
recorded, and every read of the copy checks that the file is still that
version, so a run replaced on disk after ``fit`` raises
:class:`~daskmask.exceptions.InputChangedError` instead of silently giving
the old data. A full scratch disk raises
:class:`~daskmask.exceptions.ScratchSpaceError`.

An object in a store (``s3://...``) is streamed from its first byte
(:func:`~daskmask.reading._array.open_sequential`: one streamed GET where the
file system can, else large ranged requests), with the same checks. With
dask's threads (no distributed client) the pass runs in this process and
writes the decoded copy to the local scratch folder, as for a file. When a
``distributed.Client`` is active the pass runs as one task on a worker and
returns only the mean: no byte of the object goes through the client, and no
decoded copy is kept, because a worker's scratch folder may be invisible to
the other workers (Kubernetes pods, nodes of an HPC job). ``transform`` then
reads the object lazily in each worker process, which costs one decode per
worker that reads it.

**Fetch once.** An uncompressed ``.nii`` object takes the same pass with the
identity as its decoder (:func:`fetches_once` says when): ``fit`` streams it
once, folding the mean and writing the local copy, and ``transform`` reads the
copy with ``pread`` instead of asking the store for every time slab again. The
copy is keyed by URL, size and ETag/version id, checked before and after the
pass and before every read of the copy, so a changed object is never served
from it. Under a distributed client nothing of this runs on the client: the
object is read by ranged requests, on the workers, as before.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import shutil
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from dask.base import tokenize

from daskmask._folding import accumulator_dtype, fold_volumes, mean_dtype
from daskmask._fs import Location, is_url, locate
from daskmask._rawio import read_exactly, write_exactly
from daskmask._scratch import TemporaryStore, current_client
from daskmask.exceptions import NiftiReadError, ScratchSpaceError, StorageError
from daskmask.reading._array import (
    DIRECT_ALLOCATION_BYTES,
    ProxySpec,
    current_version,
    data_bytes,
    open_sequential,
    read_fully,
    read_into,
    scale,
    spec_from_proxy,
)
from daskmask.reading._integrity import (
    GZIP_DECODERS,
    check_object_unchanged,
    check_unchanged,
    file_identity,
)
from daskmask.reading._sources import object_head, open_location

__all__ = [
    "DECODER_SETTING",
    "PARALLEL_DECODER",
    "decode_once",
    "decoder_name",
    "fetches_once",
    "file_source",
    "gzip_source",
    "is_gzip_file",
    "measure_decoders",
    "pass_decoder",
    "source_key",
    "usable_cores",
]

#: Name of the raw file of decoded volumes inside the temporary directory.
DECODED = "decoded.raw"

#: Decoders by documented speed on this kind of data (architecture anchors,
#: part B: isal 0.5-0.8 GB/s, zlib-ng 0.4-0.9 GB/s, stdlib 0.2 GB/s).
_DECODERS = GZIP_DECODERS

#: ``errno`` values of a full disk or an exhausted quota.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})

#: The parallel decoder of a local ``.nii.gz`` (the ``fast`` extra).
PARALLEL_DECODER = "rapidgzip"

#: Dask config key forcing the decoder of the pass (``"auto"`` by default).
DECODER_SETTING = "daskmask.gzip-decoder"

#: Compressed size from which a local file is inflated in parallel: below it
#: (a few of rapidgzip's chunks) starting its threads does not pay.
PARALLEL_MIN_BYTES = 32 << 20

#: Compressed bytes per chunk of rapidgzip. Measured on the HCP-like run with
#: 2 threads: 4 MiB (its default) 3.3 s wall / 6.2 s CPU / 293 MiB peak,
#: 8 MiB 2.8 s / 5.4 s / 419 MiB, 16 MiB 2.6 s / 5.0 s / 721 MiB; 8 MiB keeps
#: the pass's buffers well under the result's size.
PARALLEL_CHUNK_BYTES = 8 << 20

#: Threads of rapidgzip. Its buffers grow with them (about 330 MiB for 2
#: threads with 8 MiB chunks, measured); more were not measured here.
PARALLEL_THREADS = 2

#: Cores this process must be allowed to use for ``"auto"`` to pick rapidgzip:
#: its threads, plus one for the writer and one for the folder. With 2 cores
#: the sequential decoder made the pass faster (see the module docstring).
PARALLEL_MIN_CORES = PARALLEL_THREADS + 2


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
    """Return the sequential decoder: the first one installed.

    It inflates objects and small files in :func:`decode_once`, and redoes
    any pass the parallel decoder did not finish cleanly (see
    :func:`pass_decoder`).

    Returns
    -------
    str
        ``"isal.igzip"``, ``"zlib_ng.gzip_ng"`` or ``"gzip"`` (always there).

    """
    return next(name for name in _DECODERS if _opener(name) is not None)


def usable_cores() -> int:
    """Return the number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _parallel_installed() -> bool:
    try:
        __import__(PARALLEL_DECODER)
    except ImportError:
        return False
    return True


def pass_decoder(compressed_bytes: int | None) -> str:
    """Return the decoder of the pass over a ``.nii.gz`` of ``compressed_bytes``.

    With the dask config ``daskmask.gzip-decoder`` at ``"auto"`` (the
    default): rapidgzip for a local file of at least
    :data:`PARALLEL_MIN_BYTES` when it is installed and this process may use
    :data:`PARALLEL_MIN_CORES` cores, else :func:`decoder_name`. Any other
    value forces that decoder (rapidgzip then starts
    :data:`PARALLEL_THREADS` threads whatever the cores).

    Parameters
    ----------
    compressed_bytes : int or None
        Size of the local file; None for an object streamed from a store
        (read once from its first byte: never in parallel).

    Returns
    -------
    str
        ``"rapidgzip"``, ``"isal.igzip"``, ``"zlib_ng.gzip_ng"`` or ``"gzip"``.

    Raises
    ------
    ValueError
        If the setting names no known decoder, or one that is not
        installed.

    """
    setting = dask.config.get(DECODER_SETTING, "auto")
    if setting == "auto":
        if (
            compressed_bytes is not None
            and compressed_bytes >= PARALLEL_MIN_BYTES
            and usable_cores() >= PARALLEL_MIN_CORES
            and _parallel_installed()
        ):
            return PARALLEL_DECODER
        return decoder_name()
    known = (PARALLEL_DECODER, *_DECODERS)
    if setting not in known:
        raise ValueError(
            f"The dask config {DECODER_SETTING!r} is {setting!r}, which names no gzip decoder; "
            f"set it to 'auto' or one of {', '.join(map(repr, known))}."
        )
    installed = _parallel_installed() if setting == PARALLEL_DECODER else _opener(setting)
    if not installed:
        raise ValueError(
            f"The dask config {DECODER_SETTING!r} asks for {setting!r}, which is not installed; "
            "install it (pip install 'daskmask[fast]') or set the config to 'auto'."
        )
    if setting == PARALLEL_DECODER and compressed_bytes is None:
        return decoder_name()  # a streamed object is never read at several offsets
    return setting


def measure_decoders(path: str | os.PathLike[str], block: int = 64 << 20) -> dict[str, float]:
    """Time one full inflate of ``path`` with each installed decoder.

    rapidgzip (with :data:`PARALLEL_THREADS` threads) included, with the end
    checks of the pass.

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
    buffer = memoryview(bytearray(block))
    for name in (PARALLEL_DECODER, *_DECODERS):
        if (name == PARALLEL_DECODER and not _parallel_installed()) or (
            name != PARALLEL_DECODER and _opener(name) is None
        ):
            continue
        start, total = time.perf_counter(), 0
        with open(path, "rb") as raw, _open_stream(name, raw) as stream:
            while count := stream.readinto(buffer):
                total += count
        speeds[name] = total / (time.perf_counter() - start) / 1e9
    return speeds


def source_key(
    path: str | os.PathLike[str] | Location, stat: os.stat_result | None = None
) -> tuple[Any, ...]:
    """Identify a file version: absolute path, size, modification time (ns), inode.

    An object (a :class:`~daskmask._fs.Location` with a URL) is identified by
    ``(url, size, version)``, its version (ETag or version id) asked afresh.

    Parameters
    ----------
    path : str, os.PathLike or Location
        The file or object.
    stat : os.stat_result, optional
        Its status (e.g. ``os.fstat`` of an open descriptor); read by path
        when not given.

    Returns
    -------
    tuple

    """
    if isinstance(path, Location) and not path.is_local:
        return (path.url, *current_version(path))
    absolute = os.path.abspath(os.fspath(path))
    return (absolute, *file_identity(os.stat(absolute) if stat is None else stat))


def file_source(run: xr.DataArray) -> str | Location | None:
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
    str, Location or None
        The absolute path of the file, or the location (URL and options) of
        an object.

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
    ):
        return None
    if is_url(source):
        spec = run.encoding.get("nifti_spec")
        if isinstance(spec, ProxySpec) and spec.location is not None and spec.path == source:
            return spec.location  # with the options the run was opened with
        return locate(source)
    if not os.path.isfile(source):
        return None
    return os.path.abspath(source)


def gzip_source(run: xr.DataArray) -> str | Location | None:
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


def fetches_once(source: str | Location | None) -> bool:
    """Whether ``fit`` should stream an uncompressed object once and keep a local copy.

    True for a ``.nii`` object (not local, not gzip-compressed) when no
    ``distributed.Client`` is active: the process that computes the mean is
    this one (dask's threads), so the copy it writes to the scratch folder
    serves ``transform`` too, and the object is downloaded once instead of
    twice. Under a client the workers read the object (ranged requests per
    time slab) and the client downloads nothing.

    Parameters
    ----------
    source : str, Location or None
        What :func:`file_source` returned for the run.

    Returns
    -------
    bool

    """
    return (
        isinstance(source, Location)
        and not source.is_local
        and current_client() is None
        and not is_gzip_file(source)
    )


def is_gzip_file(path: str | Location) -> bool:
    """Whether ``path`` (a file or an object) starts with the gzip magic bytes."""
    if isinstance(path, Location) and not path.is_local:
        # One HEAD request; the first bytes of this version are read once.
        return object_head(path).startswith(b"\x1f\x8b")
    if isinstance(path, Location):
        path = path.path
    with open(path, "rb") as raw:
        return raw.read(2) == b"\x1f\x8b"


#: Bytes a sequential decoder inflates per call in the pass.
_SEQUENTIAL_PIECE = 1 << 20


def _fill(stream: Any, target: memoryview, piece: int) -> int:
    """Fill ``target`` from ``stream``, ``piece`` bytes per read; return the bytes read."""
    filled = 0
    while filled < len(target):
        read = stream.readinto(target[filled : filled + piece])
        if not read:
            break
        filled += read
    return filled


class _UnverifiedEnd(EOFError):
    """The parallel decoder ended where the file's last trailer does not vouch for it."""


class _ParallelStream:
    """rapidgzip over an open local file, with the end checks it leaves out.

    rapidgzip checks the CRC32 and size of every gzip member whose trailer it
    reaches, but a file cut inside a deflate block can read as a shorter,
    complete stream. At the end of the stream (a read of 0 bytes) this
    checks that the whole file was consumed and that the decoded size
    matches the size (mod 2**32) in its last trailer, and raises
    :class:`_UnverifiedEnd` otherwise: truncated, but also several members
    or padding after the last one, which the sequential decoder then judges.
    """

    def __init__(self, raw_file: IO[bytes], threads: int) -> None:
        import rapidgzip  # the fast extra; pass_decoder checked it is there

        self._fd = raw_file.fileno()
        self._size = os.fstat(self._fd).st_size
        # Its own positioned reads of the descriptor (pread): the file
        # position stays at 0 for a sequential redo.
        self._file = rapidgzip.RapidgzipFile(
            self._fd, parallelization=threads, chunk_size=PARALLEL_CHUNK_BYTES
        )
        self._reader = self._file.gzipReader  # readinto without the io wrapper
        self._decoded = 0

    def __enter__(self) -> _ParallelStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Joins rapidgzip's threads and frees its chunk buffers.
        self._file.close()

    def readinto(self, target: Any) -> int:
        count = int(self._reader.readinto(target))
        self._decoded += count
        if count == 0:
            self._check_end()
        return count

    def read(self, size: int) -> bytes:
        buffer = bytearray(size)
        return bytes(buffer[: read_into(self, memoryview(buffer))])

    def _check_end(self) -> None:
        consumed = self._reader.tell_compressed()  # in bits
        if consumed != 8 * self._size:
            raise _UnverifiedEnd(
                f"the parallel decoder stopped at byte {consumed / 8:.0f} of {self._size}"
            )
        trailer = os.pread(self._fd, 4, self._size - 4) if self._size >= 4 else b""
        if int.from_bytes(trailer, "little") != self._decoded & 0xFFFFFFFF:
            raise _UnverifiedEnd(
                f"{self._decoded} bytes decoded, not the size in the last gzip trailer"
            )


def _open_stream(decoder: str | None, raw_file: IO[bytes]) -> Any:
    """Open the decoded stream of ``raw_file`` (a context manager); None: as is."""
    if decoder is None:
        return contextlib.nullcontext(raw_file)
    if decoder == PARALLEL_DECODER:
        return _ParallelStream(raw_file, PARALLEL_THREADS)
    opener = _opener(decoder)
    assert opener is not None, decoder  # pass_decoder checked it is installed
    return opener(raw_file, "rb")


class _DecodedArray:
    """The decoded store seen as an ``(x, y, z, time)`` array, for dask.

    Holds the :class:`TemporaryStore`, so the store lives as long as any
    graph built on it; copies sent to other processes hold only its path.
    Every read checks with one ``stat`` that the source file is still the
    version that was decoded (``source``: path and identity): the copy must
    not stand in for a file that was replaced or rewritten since.
    """

    def __init__(
        self,
        store: TemporaryStore | str,
        shape: tuple[int, ...],
        dtype: Any,
        source: tuple[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)
        self.source = source

    @property
    def path(self) -> str:
        return os.path.join(os.fspath(self.store), DECODED)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        if self.source is not None and isinstance(self.source[1], Location):
            location = self.source[1]
            check_object_unchanged(location.url, self.source[2], current_version(location))
        elif self.source is not None:
            path, identity = self.source
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                raise NiftiReadError(
                    f"File not found: '{path}' (it was removed after it was fitted); open "
                    "and fit the file again."
                ) from None
            check_unchanged(path, identity, stat)
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


def decode_once(
    run: xr.DataArray, store_root: str | Path, *, chunk_volumes: int
) -> tuple[xr.DataArray, np.ndarray]:
    """Inflate a ``.nii.gz`` run once into a temporary raw copy and its mean.

    An uncompressed object (a ``.nii`` URL) takes the same pass with the
    identity as decoder: it is downloaded once into the copy (see
    :func:`fetches_once`).

    Parameters
    ----------
    run : xarray.DataArray
        A 4-D run from :func:`daskmask.open_nifti` of one ``.nii.gz`` file
        or of one object, ``.nii`` or ``.nii.gz`` (``attrs["source"]``).
    store_root : str or Path
        Directory the temporary store is created in (e.g.
        :func:`daskmask._scratch.temporary_base`).
    chunk_volumes : int
        Volumes decoded, written and folded at a time (the store's chunks).

    Returns
    -------
    decoded : xarray.DataArray
        Lazy run over the store, with the dims, coords and attrs of ``run``
        plus ``attrs["decoded_store"]``; time chunks of ``chunk_volumes``.
        The store is removed when the last object built on it is collected.
        ``encoding["decoded_with"]`` names the decoder whose pass was kept
        (:func:`pass_decoder`, or :func:`decoder_name` after a redo; None
        for an uncompressed object).
    mean : numpy.ndarray
        The mean over time, equal bit for bit to
        :func:`daskmask.masking.mean_volume` of ``run``.

    Raises
    ------
    ValueError
        If ``run`` is not a 4-D run of one ``.nii.gz`` file or one object,
        or the dask config ``daskmask.gzip-decoder`` names no installed
        decoder.
    NiftiReadError
        If the file is truncated or its gzip stream is corrupt; the whole
        stream is read, so a CRC32 or size that does not match a gzip
        trailer is detected too.
    InputChangedError
        If the file is no longer the version ``run`` was opened from (an
        object: before or after the pass).
    StorageError
        If an object cannot be read (typed subclasses naming the URL).
    ScratchSpaceError
        If the decoded copy does not fit in ``store_root`` (``ENOSPC`` or
        ``EDQUOT``).

    """
    path = file_source(run)
    if isinstance(path, Location):
        return _decode_object(run, path, store_root, chunk_volumes)
    if path is None or not is_gzip_file(path):
        raise ValueError(
            "decode_once needs a 4-D run opened by open_nifti from one .nii.gz file or "
            "from one object (.nii or .nii.gz URL)"
        )
    # Decode through this descriptor: the version checked here is the one
    # decoded, even if the path is replaced meanwhile.
    raw_file = open(path, "rb")  # noqa: SIM115 - closed by the with below
    with raw_file:
        stat = os.fstat(raw_file.fileno())
        spec = _recorded_spec(run, path)
        if spec is None:
            spec = spec_from_proxy(nib.load(path).dataobj, run.shape, file_identity(stat))
        check_unchanged(path, spec.identity, stat)
        key = source_key(path, stat)
        decoder = pass_decoder(stat.st_size)
        store, mean, decoder = _decode(run, spec, raw_file, store_root, chunk_volumes, decoder)
    array = _DecodedArray(store, tuple(run.shape), run.dtype, (path, file_identity(stat)))
    data = _decoded_dask_array(array, key, chunk_volumes)
    attrs = {**run.attrs, "decoded_store": os.path.join(store.root, DECODED)}
    result = xr.DataArray(data, dims=run.dims, coords=run.coords, attrs=attrs, name=run.name)
    result.encoding["decoded_array"] = array
    result.encoding["source_key"] = key
    result.encoding["decoded_with"] = decoder
    return result, mean


def _recorded_spec(run: xr.DataArray, path: str) -> ProxySpec | None:
    """Return the spec :func:`~daskmask.reading.open_nifti` recorded for ``run``, if any."""
    spec = run.encoding.get("nifti_spec")
    if isinstance(spec, ProxySpec) and spec.path == path and spec.shape == tuple(run.shape):
        return spec
    return None


def _decode(
    run: xr.DataArray,
    spec: ProxySpec,
    raw_file: IO[bytes],
    store_root: str | Path,
    chunk_volumes: int,
    decoder: str | None,
) -> tuple[TemporaryStore, np.ndarray, str | None]:
    """Inflate ``raw_file`` into a new store under ``store_root``.

    ``decoder`` None: ``raw_file`` is read as is (an uncompressed object). A
    parallel pass that does not end cleanly is redone by the sequential
    decoder from the first byte (see the module's docstring). Returns the
    store, the mean and the decoder whose pass was kept.
    """
    spatial, n_volumes = run.shape[:3], run.shape[3]
    needed = n_volumes * int(np.prod(spatial)) * run.dtype.itemsize
    try:
        store = TemporaryStore(prefix="daskmask-decoded-", directory=os.fspath(store_root))
    except OSError as error:
        if error.errno in _NO_SPACE:
            raise _scratch_full(error, store_root, needed) from None
        raise
    decoded_path = os.path.join(store.root, DECODED)

    def inflate(name: str | None) -> np.ndarray:
        fd = os.open(decoded_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb"):
            return _inflate(spec, raw_file, tuple(run.shape), run.dtype, chunk_volumes, fd, name)

    try:
        mean = None
        try:
            mean = inflate(decoder)
        except (OSError, EOFError, zlib.error, ValueError, RuntimeError) as error:
            if decoder != PARALLEL_DECODER or getattr(error, "errno", None) in _NO_SPACE:
                raise
        if mean is None:
            # Not a clean end of the parallel pass: the sequential decoder
            # redoes it from the first byte and decides (a damaged file
            # raises its error, a valid one is decoded). Outside the except
            # block, so the first pass's buffers are freed first.
            raw_file.seek(0)
            decoder = decoder_name()
            mean = inflate(decoder)
    except OSError as error:
        store.cleanup()
        if error.errno in _NO_SPACE:
            raise _scratch_full(error, store_root, needed) from None
        if isinstance(error, StorageError):
            raise
        raise _corrupt(spec.path, error) from None
    except (EOFError, zlib.error, ValueError) as error:
        store.cleanup()
        raise _corrupt(spec.path, error) from None
    except BaseException:
        store.cleanup()
        raise
    return store, mean, decoder


def _inflate(
    spec: ProxySpec,
    raw_file: IO[bytes],
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunk_volumes: int,
    fd: int | None,
    decoder: str | None,
) -> np.ndarray:
    """Inflate a whole gzip stream once; fold its slabs into the mean; write them to ``fd``.

    ``fd`` None: only the mean (the pass of a worker, whose scratch other
    processes may not see). The stream is read to its very end, so the
    decoder checks the CRC32 and size of every gzip member. ``decoder``
    None: an uncompressed file (``spec.gzip`` False) read as is (the
    identity decoder), up to the end of its voxel data.
    """
    dtype = np.dtype(dtype)
    chunk_volumes = max(1, min(int(chunk_volumes), shape[3]))
    spatial, n_volumes = shape[:3], shape[3]
    on_disk = np.dtype(spec.on_disk_dtype)
    stored = dtype.newbyteorder("=")
    stored_volume_bytes = int(np.prod(spatial)) * stored.itemsize
    accumulator = accumulator_dtype(dtype)
    running: list[np.ndarray | None] = [None]
    volume_bytes = int(np.prod(spatial)) * on_disk.itemsize

    def write(start: int, slab: np.ndarray) -> None:
        # C-ordered (time, z, y, x) bytes == F-ordered (x, y, z, time): one write.
        rows = np.ascontiguousarray(slab.T, dtype=stored)
        write_exactly(fd, memoryview(rows).cast("B"), start * stored_volume_bytes)

    def fold(slab: np.ndarray) -> None:
        running[0] = fold_volumes(running[0], slab, accumulator)

    pending: list[Future[None]] = []
    # The decoder runs in this thread; one helper thread writes slab n and
    # another folds it into the mean while slab n + 1 is inflated (the
    # decoders, the file writes and numpy's additions release the GIL). In
    # one helper, writing and folding took longer than a streamed object
    # arrives (HCP-like .nii: 9 s for a 2.2 GB pass, 2.2 s of it the GET).
    # A single folder keeps the slabs, hence the floating-point sum, in
    # time order.
    # Two buffers, inflated into in turn: a fresh 30-100 MB bytes object
    # per slab would be mapped and page-faulted afresh every time, which
    # doubled the time of this pass on the benchmark machine. A slab
    # larger than DIRECT_ALLOCATION_BYTES (one huge volume) is instead
    # read in pieces, so a stream shorter than its header promises fails
    # before the promised size is allocated.
    slab_bytes = chunk_volumes * volume_bytes
    # A sequential decoder fills the slab 1 MiB at a time: it inflates into
    # a small intermediate that stays in the cache before the copy (isal,
    # HCP-like run: 3.8-3.9 s against 4.0-4.1 s in 31 MiB reads).
    piece = _SEQUENTIAL_PIECE if decoder not in (None, PARALLEL_DECODER) else slab_bytes
    buffers = (
        [np.empty(slab_bytes, np.uint8) for _ in range(2)]
        if slab_bytes <= DIRECT_ALLOCATION_BYTES
        else None
    )
    with (
        _open_stream(decoder, raw_file) as stream,
        ThreadPoolExecutor(1) as folder,
        ThreadPoolExecutor(1) as writer,
    ):
        if len(stream.read(spec.offset)) != spec.offset:
            raise EOFError("the stream ends inside the header")
        for index, start in enumerate(range(0, n_volumes, chunk_volumes)):
            count = min(chunk_volumes, n_volumes - start)
            if buffers is None:
                raw_bytes = memoryview(read_fully(stream, count * volume_bytes))
            else:
                # The helpers finished with this buffer: their jobs were
                # awaited before the previous slab was handed over.
                raw_bytes = memoryview(buffers[index % 2])[: count * volume_bytes]
                if _fill(stream, raw_bytes, piece) != count * volume_bytes:
                    raise EOFError(f"the stream ends before volume {start + count - 1}")
            # C-ordered (time, z, y, x) bytes == F-ordered (x, y, z, time).
            raw = np.frombuffer(raw_bytes, dtype=on_disk).reshape(count, *spatial[::-1])
            slab = scale(raw.transpose(), spec, dtype)
            for job in pending:
                job.result()
            pending = [folder.submit(fold, slab)]
            if fd is not None:
                pending.append(writer.submit(write, start, slab))
            del raw_bytes, raw, slab
        # Read on to the end of the stream (normally just the trailer):
        # the decoder then checks the CRC32 and size of every gzip member
        # against the bytes it produced, without a second pass.
        tail = bytearray(1 << 20)
        while decoder is not None and stream.readinto(tail):
            pass
        for job in pending:
            job.result()
    # As numpy (and masking._mean): divide by an intp count, then cast.
    return np.asarray((running[0] / np.intp(n_volumes)).astype(mean_dtype(dtype)))


def _decode_object(
    run: xr.DataArray, location: Location, store_root: str | Path, chunk_volumes: int
) -> tuple[xr.DataArray | None, np.ndarray]:
    """Run the decode-once pass of an object: on a worker (mean only) or here (copy too).

    With a ``distributed.Client`` active the pass is one task on a worker,
    which streams the object and returns its mean (``decoded`` is then None:
    ``transform`` reads the object lazily). Otherwise this process is the one
    that reads: it streams the object into a decoded copy under
    ``store_root``, as for a file. The object's version is checked before
    and after the pass: a copy of an object replaced meanwhile is dropped.
    """
    spec = _recorded_spec(run, location.url)
    if spec is None or spec.location is None:
        opened = open_location(location)
        spec = opened.spec
        assert spec is not None
    if current_client() is not None:
        name = f"daskmask-decode-mean-{tokenize(spec, chunk_volumes)}"
        task = dask.delayed(object_mean, pure=False)
        mean = task(spec, tuple(run.shape), run.dtype, chunk_volumes, dask_key_name=name)
        mean = mean.compute()
        return None, mean
    assert spec.location is not None
    version = current_version(spec.location)
    check_object_unchanged(spec.path, spec.version, version)
    decoder = pass_decoder(None) if spec.gzip else None
    with _sequential(spec) as raw_file:
        store, mean, decoder = _decode(run, spec, raw_file, store_root, chunk_volumes, decoder)
    try:
        check_object_unchanged(spec.path, spec.version, current_version(spec.location))
    except BaseException:
        store.cleanup()
        raise
    key = (location.url, *version)
    array = _DecodedArray(store, tuple(run.shape), run.dtype, (location.url, location, version))
    data = _decoded_dask_array(array, key, chunk_volumes)
    attrs = {**run.attrs, "decoded_store": os.path.join(store.root, DECODED)}
    result = xr.DataArray(data, dims=run.dims, coords=run.coords, attrs=attrs, name=run.name)
    result.encoding["decoded_array"] = array
    result.encoding["source_key"] = key
    result.encoding["decoded_with"] = decoder
    return result, mean


def object_mean(
    spec: ProxySpec, shape: tuple[int, ...], dtype: Any, chunk_volumes: int
) -> np.ndarray:
    """Stream an object once and return its mean over time (a worker's task).

    Parameters
    ----------
    spec : ProxySpec
        The object (location and recorded version).
    shape : tuple of int
        The run's 4-D shape.
    dtype : numpy.dtype
        The run's (scaled) dtype.
    chunk_volumes : int
        Volumes inflated and folded at a time.

    Returns
    -------
    numpy.ndarray
        The mean, equal bit for bit to :func:`daskmask.masking.mean_volume`.

    Raises
    ------
    InputChangedError
        If the object is no longer the version recorded.
    NiftiReadError
        If the stream is corrupt or shorter than the header promises.

    """
    assert spec.location is not None
    check_object_unchanged(spec.path, spec.version, current_version(spec.location))
    try:
        with _sequential(spec) as raw_file:
            decoder = pass_decoder(None) if spec.gzip else None
            mean = _inflate(spec, raw_file, shape, np.dtype(dtype), chunk_volumes, None, decoder)
        check_object_unchanged(spec.path, spec.version, current_version(spec.location))
        return mean
    except StorageError:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise _corrupt(spec.path, error) from None


def _sequential(spec: ProxySpec) -> IO[bytes]:
    """Open an object for the pass: all of a ``.nii.gz``, up to its data's end for a ``.nii``."""
    assert spec.location is not None
    return open_sequential(spec.location, None if spec.gzip else data_bytes(spec)[1])


def _corrupt(path: str, error: BaseException) -> NiftiReadError:
    """Return the error of a stream that fails to decode or to match its trailer."""
    reason = f"{type(error).__name__}: {error}"
    if "crc" in reason.lower() or "length check" in reason.lower():
        problem = "is corrupt (CRC mismatch: its decoded data do not match its gzip trailer)"
    else:
        problem = "is truncated or corrupt"
    return NiftiReadError(
        f"Cannot decode '{path}' ({reason}): the file {problem}. Re-create or re-download it."
    )


def _scratch_full(error: OSError, store_root: str | Path, needed: int) -> ScratchSpaceError:
    """Return the error of a decoded copy that does not fit in the scratch folder."""
    folder = os.path.abspath(os.fspath(store_root))
    try:
        free = f"; {shutil.disk_usage(folder).free / 1e9:.2f} GB are free there"
    except OSError:
        free = ""
    return ScratchSpaceError(
        error.errno,
        f"The scratch folder '{folder}' is full ({os.strerror(error.errno)}) while writing "
        "the local copy of a run (a decoded .nii.gz, or a fetched object), which needs "
        f"{needed / 1e9:.2f} GB{free}. Free space there, or point the dask config "
        "'daskmask.temporary-directory' at a larger disk "
        "(dask.config.set({'daskmask.temporary-directory': '/path/with/space'})).",
    )


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
