"""Resolve what users pass as images (paths, globs, lists, nibabel images) and open them.

Opening reads headers only. Voxel data are read later, by dask tasks, through
the picklable arrays of :mod:`daskmask.reading._array`.
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import stat
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from dask.base import tokenize
from nibabel.arrayproxy import ArrayProxy
from nibabel.spatialimages import SpatialImage

from daskmask._fs import FileStat, Location, has_glob, is_url, locate, object_head
from daskmask.exceptions import (
    DimensionError,
    NiftiFileNotFoundError,
    NiftiReadError,
    ObjectNotFoundError,
)
from daskmask.reading._array import (
    NiftiArrayWrapper,
    ProxySpec,
    StackedNiftiArray,
    dask_array_from,
    scaled_dtype,
    spec_from_proxy,
)
from daskmask.reading._chunks import ChunksLike, plan_time_chunks, volumes_per_chunk
from daskmask.reading._integrity import MAX_DEFLATE_RATIO
from daskmask.reading._metadata import (
    TIME_DIM,
    build_attrs,
    build_coords,
    dims_for,
    header_metadata,
    image_stem,
)

#: Anything :func:`open_nifti` accepts.
NiftiLike = str | os.PathLike | SpatialImage | xr.DataArray | Sequence[Any]

_TYPE_ERROR = "input should be a NiftiLike object or an iterable of NiftiLike object. Got: {}"

#: Suffixes of files nibabel decompresses on the fly (no size check at open).
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst")

_GLOB_CHARACTERS = frozenset("*?[]")

GZIP_MAGIC = b"\x1f\x8b"

#: The two files of an Analyze/NIfTI pair: each suffix and its partner's.
_PAIR_SUFFIXES = {".hdr": ".img", ".img": ".hdr", ".hdr.gz": ".img.gz", ".img.gz": ".hdr.gz"}

#: Names of the kinds of non-regular files, for error messages.
_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
#: Sizes of the NIfTI-1 and NIfTI-2 headers in bytes (their ``sizeof_hdr``).
NIFTI1_HEADER_BYTES, NIFTI2_HEADER_BYTES = 348, 540


@dataclass(frozen=True)
class OpenedImage:
    """One input image with its header read and its data not yet read.

    Exactly one of ``spec`` (data in a file) and ``array`` (data in memory,
    a NumPy or dask array) is set.
    """

    #: Path of the file, or a placeholder such as "<in-memory Nifti1Image>".
    label: str
    #: ``t_r``, ``xyz_units``, ``time_units`` and ``nifti_version``.
    metadata: dict[str, Any]
    #: The 4x4 affine as nibabel gives it.
    affine: np.ndarray
    #: Shape with trailing singleton dimensions beyond the 4th removed.
    shape: tuple[int, ...]
    #: Data type stored on disk (before scaling).
    on_disk_dtype: np.dtype
    #: Where the data live on disk, for file-backed images.
    spec: ProxySpec | None = None
    #: The data, for in-memory images.
    array: Any = None

    @property
    def name(self) -> str | None:
        """File stem for file-backed images, None otherwise."""
        return image_stem(self.spec.path) if self.spec is not None else None


def open_nifti(
    source: NiftiLike,
    chunks: ChunksLike = "auto",
    storage_options: Mapping[str, Any] | None = None,
    *,
    concat: Literal["time"] | None = None,
) -> xr.DataArray:
    """Open NIfTI image(s) as a lazy, time-chunked :class:`xarray.DataArray`.

    Only headers are read; voxel data are read by dask tasks, one task per
    chunk, in whichever process computes them.

    Parameters
    ----------
    source : str, os.PathLike, nibabel image, xarray.DataArray or sequence
        A path to a ``.nii``/``.nii.gz`` (NIfTI-1 or NIfTI-2, or an
        ``.hdr``/``.img`` pair), ``~`` expanded; a URL of a ``.nii`` or
        ``.nii.gz`` object (any fsspec protocol: ``s3://``, ``gs://``,
        ``az://``, ``http(s)://``, ``memory://``; ``file://`` is a local path);
        a glob pattern, local or on a URL (matches sorted ascending, always
        treated as a list); a nibabel image (read lazily from
        its file when it has one, using the in-memory object's affine and
        header); a DataArray returned by ``open_nifti`` (returned unchanged,
        or rechunked along time when ``chunks`` is not ``"auto"``); or a list
        or tuple of any of these: 3D volumes are stacked into one 4D run; 4D
        runs are one run each, so a list holding a 4D image is refused
        (5D) unless ``concat="time"``.
    chunks : "auto", int, str or dict, default="auto"
        Volumes per chunk along time; spatial dimensions are never split.
        See :func:`~daskmask.reading._chunks.plan_time_chunks`.
    storage_options : dict, optional
        Options of the URL's file system (credentials, ``endpoint_url``...),
        merged over the dask config ``daskmask.storage-options`` and the
        environment (see :func:`daskmask._fs.locate`). They travel with the
        lazy array to the processes that read it.
    concat : {"time"} or None, default=None
        ``"time"``: concatenate the elements of a list (or the matches of a
        glob) along time, 4D runs included, into one 4D array. None: a list
        may hold 3D volumes only (stacked into a 4D run), as nilearn's
        images of one run. To process several runs, each on its own, use
        :class:`daskmask.MultiNiftiMasker`.

    Returns
    -------
    xarray.DataArray
        Dask-backed, with dims ``("x", "y", "z", "time")`` (4D),
        ``("x", "y", "z")`` (3D) or ``("x", "y")`` (2D); integer voxel
        coordinates, ``time`` in seconds when the repetition time is known
        (else volume indices); attrs ``affine``, ``t_r``, ``xyz_units``,
        ``time_units``, ``source``, ``nifti_version`` and ``on_disk_dtype``.
        The values and dtype equal nibabel's ``np.asanyarray(img.dataobj)``.

    Raises
    ------
    NiftiFileNotFoundError
        A path does not exist, is a symbolic link loop, or is half of an
        ``.hdr``/``.img`` pair whose other half is missing; a glob pattern
        matches nothing.
    NiftiReadError
        A file is not a readable image or not a regular file (a FIFO, a
        device), a ``.nii`` is shorter than its header says, a ``.gz`` is too
        small to hold what its header promises, or the affine is singular or
        not finite. Corrupt ``.nii.gz`` data raise it when computed (a full
        read checks the gzip trailer's CRC32; see
        :class:`~daskmask.reading._array.GzipSlabReader`).
    InputChangedError
        When computed, if a file changed (size, modification time or inode)
        after it was opened, or an object's size or ETag/version id changed.
    StorageError
        An object cannot be reached: missing object or bucket
        (:class:`~daskmask.exceptions.ObjectNotFoundError`), no or wrong
        credentials (:class:`~daskmask.exceptions.StorageAccessError`), an
        endpoint that does not answer
        (:class:`~daskmask.exceptions.StorageUnreachableError`).
    DimensionError
        An image has more than 4 non-singleton dimensions, a nested list
        was given, or a list (or glob) holds a 4D image and ``concat`` is
        None.
    ValueError
        An image has a zero-length dimension, or list elements do not share
        a field of view (shape and affine).
    TypeError
        ``source`` is of an unsupported type or an empty list.

    Notes
    -----
    An object is opened with small ranged reads (its header, and the first
    compressed bytes of a ``.nii.gz``); each time chunk is then one ranged
    request, made by the process that computes it, after one HEAD request
    that checks the object is still the version opened. A remote ``.nii.gz``
    read lazily is decoded once by each process that reads it (``fit`` with a
    mean-based mask strategy decodes it once, on a worker).

    Differences from nilearn's ``check_niimg``: an existing file whose name
    contains glob characters is opened as that file instead of being treated
    as a pattern; an empty list raises ``TypeError`` (nilearn: a bare
    ``IndexError``); the repetition time is read from the header (see
    :func:`~daskmask.reading._metadata.repetition_time`). As in nilearn, a
    nibabel image whose data were already loaded into its ``_data_cache``
    (as nilearn's ``get_data`` does) is read from that cache, not its file.

    """
    if concat not in (None, "time"):
        raise ValueError(f"concat must be None or 'time', got {concat!r}.")
    if isinstance(source, xr.DataArray):
        return _rechunk_existing(source, chunks)
    elements, is_list = _resolve(source, storage_options)
    images = [_open_element(element) for element in elements]
    if not is_list:
        return _single_image_array(images[0], chunks)
    if concat is None:
        _refuse_list_of_runs(images)
    return _stacked_array(images, chunks)


def _refuse_list_of_runs(images: Sequence[OpenedImage]) -> None:
    """Refuse a list holding 4D runs: that is 5D, as nilearn says, unless asked to concatenate.

    Concatenating runs in time silently would clean them as one run (one
    detrend, one filter, confounds of the wrong length), which nilearn refuses
    too; it stays available on request.
    """
    runs = [index for index, image in enumerate(images) if len(image.shape) == 4]
    if not runs:
        return
    first = images[runs[0]]
    raise DimensionError(
        "Input data has incompatible dimensionality: Expected dimension is 4D and you "
        f"provided a list of {len(images)} images of which {len(runs)} 4D (image "
        f"#{runs[0]}, '{first.label}', has shape {first.shape}): that is 5D. To process "
        "each run on its own, use daskmask.MultiNiftiMasker (a list of runs gives a "
        "list of signals); to join the runs into one along time, open them with "
        "daskmask.open_nifti(runs, concat='time')."
    )


def _resolve(
    source: Any, storage_options: Mapping[str, Any] | None = None
) -> tuple[list[Any], bool]:
    """Expand paths, URLs and globs; return the elements and whether it was a list.

    URLs become :class:`~daskmask._fs.Location` elements (with their options).
    """
    if isinstance(source, Location) or is_url(source):
        location = locate(source, storage_options)
        if has_glob(location.path) and not _object_exists(location):
            matches = location.glob()
            if not matches:
                raise NiftiFileNotFoundError(
                    f"No objects matching the entered niimg expression: '{location.url}'. "
                    "Check the pattern, or escape the wildcard characters if they are "
                    "part of a name."
                )
            return list(matches), True
        return [location], False
    if isinstance(source, str | os.PathLike):
        path = os.path.expanduser(os.fspath(source))
        if isinstance(path, str) and not os.path.exists(path) and _has_glob(path):
            matches = [match.path for match in locate(path).glob()]
            if not matches:
                raise NiftiFileNotFoundError(
                    f"No files matching the entered niimg expression: '{path}'. "
                    "Check the pattern, or escape the wildcard characters if they are "
                    "part of a file name."
                )
            return matches, True
        return [path], False
    if isinstance(source, SpatialImage):
        return [source], False
    if isinstance(source, list | tuple):
        if len(source) == 0:
            raise TypeError(_TYPE_ERROR.format("an empty list") + " (give at least one image).")
        elements: list[Any] = []
        for element in source:
            if isinstance(element, list | tuple):
                raise DimensionError(
                    "Input data has incompatible dimensionality: open_nifti returns at most "
                    "4D and you provided a list of lists of images (5D). Open each inner "
                    "list separately."
                )
            if isinstance(element, str | os.PathLike | Location):
                expanded, _ = _resolve(element, storage_options)
                elements.extend(expanded)
            else:
                elements.append(element)
        return elements, True
    raise TypeError(_TYPE_ERROR.format(type(source).__name__))


def _has_glob(path: str) -> bool:
    return any(character in _GLOB_CHARACTERS for character in path)


def _object_exists(location: Location) -> bool:
    """Whether an object exists (an object whose name has glob characters is opened as is)."""
    try:
        return location.stat().is_file
    except ObjectNotFoundError:
        return False


def _open_element(element: Any) -> OpenedImage:
    """Open one path, URL, nibabel image or DataArray (headers only)."""
    if isinstance(element, Location):
        return open_location(element)
    if isinstance(element, str | os.PathLike):
        return open_path(os.fspath(element))
    if isinstance(element, SpatialImage):
        return _from_nibabel(element)
    if isinstance(element, xr.DataArray):
        return _from_data_array(element)
    raise TypeError(_TYPE_ERROR.format(type(element).__name__))


def open_path(path: str) -> OpenedImage:
    """Open one NIfTI file by path, reading its header only.

    Parameters
    ----------
    path : str
        Path of the file (already ``~`` expanded).

    Returns
    -------
    OpenedImage
        The file-backed image description.

    Raises
    ------
    NiftiFileNotFoundError
        If the file does not exist, is a symbolic link loop or a dangling
        link, or is half of an ``.hdr``/``.img`` pair whose other half is
        missing.
    NiftiReadError
        If it is a directory or another non-regular file (a FIFO, a device:
        refused without opening it, so nothing blocks), not a readable image,
        truncated, or a ``.gz`` too small to hold the data its header
        promises, or if its affine is singular or not finite.
    DimensionError, ValueError
        If the image has more than 4 non-singleton dimensions or is empty.

    """
    absolute = os.path.abspath(path)
    _check_regular_file(path, absolute)
    _check_pair(path, absolute)
    try:
        image = nib.load(absolute)
    except Exception as error:  # nibabel raises many types for unreadable files
        reason = _header_problem(absolute) or f"{type(error).__name__}: {error}"
        raise NiftiReadError(f"Cannot read '{path}' as a NIfTI image: {reason}") from None
    if not isinstance(image, SpatialImage):
        raise NiftiReadError(
            f"'{path}' is a {type(image).__name__}, not a volumetric (NIfTI) image."
        )
    return _from_nibabel(image)


#: Largest header (with extensions) read from an object: a ``vox_offset``
#: beyond it is refused rather than fetched.
MAX_REMOTE_HEADER_BYTES = 16 << 20
#: Byte offset of ``vox_offset`` and its type, by header size (NIfTI-1, NIfTI-2).
_VOX_OFFSET = {NIFTI1_HEADER_BYTES: (108, "f"), NIFTI2_HEADER_BYTES: (168, "q")}
#: Magic of single-file NIfTI (``n+1``/``n+2``) and of pairs (``ni1``/``ni2``).
_SINGLE_MAGIC = {NIFTI1_HEADER_BYTES: (344, b"n+1\x00"), NIFTI2_HEADER_BYTES: (4, b"n+2\x00")}


def open_location(location: Location) -> OpenedImage:
    """Open one ``.nii`` or ``.nii.gz`` object by URL, reading its header only.

    One HEAD request (size and ETag/version id, recorded in the spec) and one
    small ranged read of the first bytes (a few more when the header's
    extensions or the compressed header need them). A local location is
    opened as a path.

    Parameters
    ----------
    location : daskmask._fs.Location
        The object.

    Returns
    -------
    OpenedImage

    Raises
    ------
    StorageError
        The object, its bucket or the endpoint cannot be reached (typed
        subclasses, naming the URL and the fix).
    NiftiReadError
        Not a single-file NIfTI-1/NIfTI-2 image, a corrupt gzip stream, or an
        object shorter than its header promises.

    """
    if location.is_local:
        return open_path(location.path)
    image, stat, compressed = remote_header_image(location)
    return _from_remote_image(image, location, stat, compressed)


def remote_header_image(location: Location) -> tuple[SpatialImage, FileStat, bool]:
    """Read an object's NIfTI header (small ranged reads) as a nibabel image.

    Parameters
    ----------
    location : daskmask._fs.Location
        The object (not local).

    Returns
    -------
    image : nibabel.Nifti1Image or nibabel.Nifti2Image
        Header, affine and shape; its ``dataobj`` holds no voxel data.
    stat : daskmask._fs.FileStat
        Size and version of the object (one fresh HEAD request).
    compressed : bool
        Whether the object is gzip-compressed.

    Raises
    ------
    StorageError, NiftiReadError
        As :func:`open_location`.

    """
    url = location.url
    stat = location.stat(refresh=True)
    if not stat.is_file:
        raise NiftiReadError(f"'{url}' is a folder (a prefix), not a NIfTI object.")
    head = object_head(location, stat)
    compressed = head.startswith(GZIP_MAGIC)
    decoded = _remote_prefix(location, stat, head, compressed, NIFTI2_HEADER_BYTES)
    header_size, byte_order = _header_kind(decoded, url)
    position, kind = _VOX_OFFSET[header_size]
    if len(decoded) < position + 8:
        decoded = decoded + bytes(position + 8 - len(decoded))  # refused below
    (vox_offset,) = struct.unpack_from(byte_order + kind, decoded, position)
    needed = max(int(vox_offset), header_size + 4)
    if needed > MAX_REMOTE_HEADER_BYTES:
        raise NiftiReadError(
            f"Cannot read '{url}' as a NIfTI image: its header puts the data at byte "
            f"{int(vox_offset)}, beyond the {MAX_REMOTE_HEADER_BYTES} bytes of header and "
            "extensions daskmask reads from an object. Fix the header (vox_offset)."
        )
    decoded = _remote_prefix(location, stat, head, compressed, needed)
    if len(decoded) < header_size:
        raise NiftiReadError(
            f"Cannot read '{url}' as a NIfTI image: the object holds only {len(decoded)} "
            f"bytes (after decompression), fewer than its {header_size}-byte header. "
            "Re-create or re-upload it."
        )
    klass = nib.Nifti1Image if header_size == NIFTI1_HEADER_BYTES else nib.Nifti2Image
    try:
        image = klass.from_bytes(decoded[:needed])
    except Exception as error:  # nibabel raises many types for unreadable headers
        raise NiftiReadError(
            f"Cannot read '{url}' as a NIfTI image: {type(error).__name__}: {error}"
        ) from None
    return image, stat, compressed


def _header_kind(first_bytes: bytes, url: str) -> tuple[int, str]:
    """Return ``(header size, byte order)`` of a single-file NIfTI header, or refuse."""
    if len(first_bytes) >= 4:
        for byte_order in "<>":
            (sizeof_hdr,) = struct.unpack(byte_order + "i", first_bytes[:4])
            if sizeof_hdr in _SINGLE_MAGIC and len(first_bytes) >= sizeof_hdr:
                position, magic = _SINGLE_MAGIC[sizeof_hdr]
                if first_bytes[position : position + 4] == magic:
                    return sizeof_hdr, byte_order
                raise NiftiReadError(
                    f"Cannot read '{url}': only single-file NIfTI objects (.nii, .nii.gz) "
                    "are read from object storage, not Analyze or .hdr/.img pairs. Convert "
                    "it to .nii (nibabel: nib.save(nib.load(path), 'run.nii.gz'))."
                )
    raise NiftiReadError(
        f"Cannot read '{url}' as a NIfTI image: its first {len(first_bytes)} bytes (after "
        "decompression) are not a NIfTI-1 or NIfTI-2 header. Check the URL; re-create or "
        "re-upload the file if it is truncated."
    )


def _remote_prefix(
    location: Location, stat: FileStat, head: bytes, compressed: bool, wanted: int
) -> bytes:
    """Return at least ``wanted`` leading (decoded) bytes of an object, or all of them."""
    if not compressed:
        if len(head) >= wanted or len(head) == stat.size:
            return head
        return location.read_range(0, min(wanted, stat.size))
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    decoded, position, step, pending = bytearray(), 0, len(head), head
    try:
        while len(decoded) < wanted and not inflater.eof:
            if not pending:
                if position >= stat.size:
                    break
                step = min(step * 2, 8 << 20)
                pending = location.read_range(position, min(step, stat.size - position))
            position += len(pending)
            data = pending
            pending = b""
            while data and len(decoded) < wanted and not inflater.eof:
                decoded += inflater.decompress(data, wanted - len(decoded))
                data = inflater.unconsumed_tail
    except zlib.error as error:
        raise NiftiReadError(
            f"Cannot read '{location.url}' as a NIfTI image: the gzip stream is corrupt "
            f"(zlib.error: {error}). Re-create or re-upload the file."
        ) from None
    return bytes(decoded)


def _from_remote_image(
    image: SpatialImage, location: Location, stat: FileStat, compressed: bool
) -> OpenedImage:
    """Describe an object whose header nibabel parsed from its first bytes."""
    url = location.url
    proxy = image.dataobj
    shape = _squeezed_shape(tuple(image.shape), url)
    on_disk_dtype = np.dtype(image.get_data_dtype())
    affine = np.asarray(image.affine, dtype=np.float64)
    _check_affine(affine, url)
    metadata = header_metadata(image.header, len(shape))
    spec = ProxySpec(
        path=url,
        shape=tuple(int(size) for size in shape),
        on_disk_dtype=np.dtype(proxy.dtype),
        offset=int(proxy.offset),
        slope=proxy.slope,
        inter=proxy.inter,
        order=proxy.order,
        identity=None,
        gzip=compressed,
        location=location,
        version=(stat.size, stat.version),
    )
    _check_readable(spec, url, on_disk_dtype)
    return OpenedImage(url, metadata, affine, shape, on_disk_dtype, spec=spec)


def _check_regular_file(path: str, absolute: str) -> None:
    """Refuse what is missing, loops, or is not a regular file, without opening it."""
    try:
        status = os.stat(absolute)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NiftiFileNotFoundError(
                f"Cannot open '{path}': it is a symbolic link loop (ELOOP: too many levels "
                "of symbolic links). Point the link at the NIfTI file itself."
            ) from None
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(absolute):
                raise NiftiFileNotFoundError(
                    f"File not found: '{path}' is a symbolic link to "
                    f"'{os.readlink(absolute)}', which does not exist."
                ) from None
            raise NiftiFileNotFoundError(f"File not found: '{path}'") from None
        raise NiftiReadError(f"Cannot open '{path}': {error.strerror}.") from None
    if stat.S_ISDIR(status.st_mode):
        raise NiftiReadError(f"'{path}' is a directory, not a NIfTI file.")
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(status.st_mode)), "special")
        raise NiftiReadError(
            f"'{path}' is not a regular file (it is {kind}). open_nifti reads NIfTI files "
            "by path, several times and from several processes; save the data to a "
            ".nii or .nii.gz file first."
        )


def _check_pair(path: str, absolute: str) -> None:
    """Name the missing half of an ``.hdr``/``.img`` pair before nibabel trips on it."""
    lower = absolute.lower()
    suffix = next(
        (s for s in sorted(_PAIR_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), None
    )
    if suffix is None:
        return
    stem, given = absolute[: -len(suffix)], absolute[-len(suffix) :]
    partner = _PAIR_SUFFIXES[suffix]
    # nibabel looks for the partner in the case of the given suffix first.
    candidates = [stem + (partner.upper() if given.isupper() else partner)]
    candidates += [stem + partner, stem + partner.upper()]
    if any(os.path.isfile(candidate) for candidate in candidates):
        return
    role = "image (.img)" if partner.startswith(".img") else "header (.hdr)"
    raise NiftiFileNotFoundError(
        f"File not found: '{candidates[0]}', the {role} file of the Analyze/NIfTI pair "
        f"'{path}'. A .hdr file needs its .img beside it (same name) and an .img its "
        ".hdr; copy the missing file next to it."
    )


def _header_problem(path: str) -> str | None:
    """Explain why a file's header cannot be read, when the cause is below nibabel.

    nibabel reports a corrupt gzip stream or a too-short file as "Cannot work
    out file type"; the underlying reason is more useful to the user.
    """
    try:
        with open(path, "rb") as raw:
            first_bytes = raw.read(NIFTI2_HEADER_BYTES)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    if first_bytes.startswith(GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as inflated:
                first_bytes = inflated.read(NIFTI2_HEADER_BYTES)
        except (OSError, EOFError, zlib.error) as error:
            return f"the gzip stream is corrupt ({type(error).__name__}: {error})"
    if len(first_bytes) < NIFTI1_HEADER_BYTES:
        return (
            f"the file holds only {len(first_bytes)} bytes (after decompression), fewer "
            f"than the {NIFTI1_HEADER_BYTES} bytes of a NIfTI-1 header"
        )
    return None


def _from_nibabel(image: SpatialImage) -> OpenedImage:
    dataobj = image.dataobj
    # Data already loaded into the image's ``_data_cache`` (nilearn's get_data
    # fills it) may have been modified in place; use them, as nilearn does.
    cached = getattr(image, "_data_cache", None)
    if cached is not None:
        dataobj = cached
    file_backed = isinstance(dataobj, ArrayProxy) and isinstance(
        dataobj.file_like, str | os.PathLike
    )
    label = (
        os.path.abspath(os.fspath(dataobj.file_like))
        if file_backed
        else f"<in-memory {type(image).__name__}>"
    )
    shape = _squeezed_shape(tuple(image.shape), label)
    on_disk_dtype = np.dtype(image.get_data_dtype())
    affine = np.asarray(image.affine, dtype=np.float64)
    _check_affine(affine, label)
    metadata = header_metadata(image.header, len(shape))
    if file_backed:
        try:
            spec = spec_from_proxy(dataobj, shape)
        except FileNotFoundError:
            raise NiftiFileNotFoundError(
                f"File not found: '{label}', the data file of "
                f"{type(image).__name__} {image.get_filename()!r}."
            ) from None
        _check_readable(spec, label, on_disk_dtype)
        return OpenedImage(label, metadata, affine, shape, on_disk_dtype, spec=spec)
    # Data already in memory (or in an in-memory file object): no file to defer to.
    array = np.asanyarray(dataobj).reshape(shape)
    return OpenedImage(label, metadata, affine, shape, on_disk_dtype, array=array)


def _from_data_array(array: xr.DataArray) -> OpenedImage:
    if "affine" not in array.attrs or array.dims != dims_for(array.ndim):
        raise TypeError(
            _TYPE_ERROR.format(
                f"DataArray with dims {array.dims} (expected one returned by open_nifti)"
            )
        )
    label = array.attrs.get("source", "<DataArray>")
    data = array.data if isinstance(array.data, da.Array) else np.asarray(array.data)
    on_disk = np.dtype(array.attrs.get("on_disk_dtype", array.dtype))
    metadata = {
        key: array.attrs.get(key, default)
        for key, default in (
            ("t_r", None),
            ("xyz_units", "unknown"),
            ("time_units", "unknown"),
            ("nifti_version", None),
        )
    }
    affine = np.asarray(array.attrs["affine"], dtype=np.float64)
    return OpenedImage(str(label), metadata, affine, array.shape, on_disk, array=data)


def _squeezed_shape(shape: tuple[int, ...], label: str) -> tuple[int, ...]:
    """Drop trailing singleton dims beyond the 4th; reject empty and >4D images."""
    if len(shape) > 4:
        if any(size != 1 for size in shape[4:]):
            raise DimensionError(
                f"Input data has incompatible dimensionality: '{label}' has shape {shape}; "
                "only 2D, 3D and 4D images (extra dimensions of length 1 are dropped) "
                "are supported."
            )
        shape = shape[:4]
    if 0 in shape:
        raise ValueError(f"The image is empty. '{label}' has shape {shape}.")
    return shape


def _check_affine(affine: np.ndarray, label: str) -> None:
    """Refuse an affine that no resampling or mask can use: not finite, or singular."""
    problem = None
    if not np.all(np.isfinite(affine)):
        problem = "contains NaN or infinite values"
    elif np.linalg.matrix_rank(affine[:3, :3]) < 3:
        problem = "is singular (its 3x3 part maps the voxel grid onto a plane, line or point)"
    if problem is not None:
        raise NiftiReadError(
            f"The affine of '{label}' {problem}:\n{affine!r}\nIts voxels have no position "
            "in space. Fix the header's sform/qform (and pixdim), e.g. with nibabel's "
            "img.set_sform(affine) and img.set_qform(affine), then save the file again."
        )


def _check_readable(spec: ProxySpec, label: str, on_disk_dtype: Any) -> None:
    """Refuse, before any data is read, a file cut short or a scaling nibabel cannot apply."""
    _check_not_truncated(spec)
    try:
        scaled_dtype(spec)
    except (TypeError, ValueError) as error:
        raise NiftiReadError(
            f"Cannot apply scl_slope={spec.slope!r} / scl_inter={spec.inter!r} of "
            f"'{label}' to its {on_disk_dtype} data ({error}); nibabel cannot read it "
            "either. Reset the scaling fields of the header."
        ) from None


def _check_not_truncated(spec: ProxySpec) -> None:
    """Compare a file's size with what its header promises.

    A ``.gz`` cannot be checked without decoding it, but deflate decodes to
    at most :data:`MAX_DEFLATE_RATIO` bytes per compressed byte: a header that
    promises more (a 100-byte file claiming 2**28 volumes) is refused here,
    before any coordinate, chunk or buffer of the promised size is made.
    """
    promised = math.prod(spec.shape) * np.dtype(spec.on_disk_dtype).itemsize
    if spec.version is not None:
        size = spec.version[0]
    elif spec.identity is not None:
        size = spec.identity[0]
    else:
        size = os.path.getsize(spec.path)
    if spec.gzip:
        if spec.offset + promised > MAX_DEFLATE_RATIO * size:
            raise NiftiReadError(
                f"'{spec.path}' cannot hold the data its header promises: "
                f"{promised} bytes after offset {spec.offset}, but a gzip file of {size} "
                f"bytes decodes to at most {MAX_DEFLATE_RATIO * size} bytes. The header "
                "is wrong or the file is truncated; re-create or re-download it."
            )
        return
    if spec.location is None and spec.path.lower().endswith(_COMPRESSED_SUFFIXES):
        return
    if size < spec.offset + promised:
        held = max(0, size - spec.offset)
        raise NiftiReadError(
            f"'{spec.path}' is truncated: the header promises {promised} bytes of data "
            f"after offset {spec.offset} but the file holds only {held}. Re-create or "
            "re-download the file."
        )


def _file_stats(specs: Sequence[ProxySpec]) -> list[tuple[int, ...]]:
    """File versions recorded at open, for the graph names.

    ``(size, mtime, inode)`` of a file, ``(size, version)`` of an object.
    """
    return [tuple(spec.identity or spec.version or ()) for spec in specs]


def _element_dask_array(image: OpenedImage, chunks: tuple[tuple[int, ...], ...]) -> da.Array:
    """Return a dask array over one image's data, chunked as given."""
    if image.spec is not None:
        return dask_array_from(NiftiArrayWrapper(image.spec), chunks, _file_stats([image.spec]))
    if isinstance(image.array, da.Array):
        return image.array.rechunk(chunks)
    name = "nifti-memory-" + tokenize(image.array, chunks)
    return da.from_array(image.array, chunks=chunks, name=name)


def _single_image_array(image: OpenedImage, chunks: ChunksLike) -> xr.DataArray:
    dtype = _element_dtype(image)
    plan = plan_time_chunks(image.shape, dtype.itemsize, chunks)
    data = _element_dask_array(image, plan)
    array = _to_data_array(data, image, image.label, image.name)
    if image.spec is not None:
        # What the decode-once pass of fit checks the file against.
        array.encoding["nifti_spec"] = image.spec
    return array


def _element_dtype(image: OpenedImage) -> np.dtype:
    if image.spec is not None:
        return NiftiArrayWrapper(image.spec).dtype
    return np.dtype(image.array.dtype)


def _stacked_array(images: list[OpenedImage], chunks: ChunksLike) -> xr.DataArray:
    reference = images[0]
    for index, image in enumerate(images):
        if len(image.shape) not in (3, 4):
            raise DimensionError(
                f"Input data has incompatible dimensionality: image #{index} "
                f"('{image.label}') has shape {image.shape}; a list must hold 3D or 4D "
                "images."
            )
        same_shape = image.shape[:3] == reference.shape[:3]
        if not same_shape or not np.allclose(image.affine, reference.affine):
            raise ValueError(
                f"Field of view of image #{index} is different from reference FOV.\n"
                f"Reference affine:\n{reference.affine!r}\nImage affine:\n{image.affine!r}\n"
                f"Reference shape:\n{reference.shape[:3]!r}\nImage shape:\n{image.shape[:3]!r}"
            )
    n_volumes = sum(image.shape[3] if len(image.shape) == 4 else 1 for image in images)
    shape = (*reference.shape[:3], n_volumes)
    if all(image.spec is not None for image in images):
        specs = [image.spec for image in images]
        stacked = StackedNiftiArray([NiftiArrayWrapper(spec) for spec in specs])
        plan = plan_time_chunks(shape, stacked.dtype.itemsize, chunks)
        data = dask_array_from(stacked, plan, _file_stats(specs))
    else:
        dtype = np.result_type(*(_element_dtype(image) for image in images))
        plan = plan_time_chunks(shape, dtype.itemsize, chunks)
        pieces = []
        for image in images:
            element_shape = image.shape if len(image.shape) == 4 else (*image.shape, 1)
            piece = _element_dask_array(image, tuple((size,) for size in image.shape))
            pieces.append(piece.reshape(element_shape))
        data = da.concatenate(pieces, axis=3).astype(dtype).rechunk(plan)
    labels = [image.label for image in images]
    return _to_data_array(data, reference, labels, None)


def _to_data_array(
    data: da.Array, reference: OpenedImage, source: str | list[str], name: str | None
) -> xr.DataArray:
    attrs = build_attrs(reference.metadata, reference.affine, source, reference.on_disk_dtype)
    if data.ndim == 4 and len(reference.shape) < 4:
        attrs["t_r"] = None  # stacked 3D volumes carry no repetition time
    return xr.DataArray(
        data,
        dims=dims_for(data.ndim),
        coords=build_coords(data.shape, attrs["t_r"]),
        attrs=attrs,
        name=name,
    )


def _rechunk_existing(array: xr.DataArray, chunks: ChunksLike) -> xr.DataArray:
    """Return a DataArray from open_nifti unchanged, or rechunked along time."""
    if isinstance(chunks, str) and chunks == "auto":
        return array
    if TIME_DIM not in array.dims:
        plan_time_chunks(array.shape, array.dtype.itemsize, chunks)  # validates chunks
        return array
    per_chunk = volumes_per_chunk(array.shape, array.dtype.itemsize, chunks)
    return array.chunk({TIME_DIM: per_chunk})
