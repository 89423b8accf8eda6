"""Streaming NIfTI-1 writer: a header, then volumes in time order, never the whole 4D array.

NIfTI data are stored in Fortran order, so the volumes of a 4D image follow each other on
disk and each one is contiguous. A run can therefore be written one volume (or a few) at a
time through a plain file or a gzip stream, with memory bounded by the write buffer.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from numpy.typing import ArrayLike, DTypeLike

# Single-file NIfTI-1: a 348-byte header plus the 4-byte "no extension" flag.
NIFTI_SINGLE_FILE_DATA_OFFSET = 352
# Volumes are grouped into writes of about this many bytes unless told otherwise.
_DEFAULT_WRITE_BUFFER_BYTES = 16 * 2**20
# python-isal's deflate levels (0-3); stdlib gzip is used for the others.
_ISAL_LEVELS = range(1, 4)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def nifti_suffix(path: Path) -> str:
    """Return ``".nii"`` or ``".nii.gz"`` for ``path``.

    Raises
    ------
    ValueError
        If the file name ends with neither.

    """
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise ValueError(
        f"Cannot write a NIfTI file to {str(path)!r}: the file name must end with '.nii' "
        "(uncompressed) or '.nii.gz' (gzip-compressed)."
    )


def build_header(
    shape: tuple[int, int, int],
    n_timepoints: int,
    dtype: np.dtype,
    affine: np.ndarray,
    t_r: float,
    description: str = "",
) -> nib.Nifti1Header:
    """Build the single-file NIfTI-1 header of a 4D run.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape.
    n_timepoints : int
        Number of volumes.
    dtype : numpy.dtype
        On-disk data type (stored little-endian).
    affine : numpy.ndarray
        ``(4, 4)`` voxel-to-world (RAS+ mm) affine, stored as both qform and sform
        (code 1, scanner coordinates).
    t_r : float
        Repetition time in seconds (``pixdim[4]``, with ``xyzt_units`` mm and sec).
    description : str
        Up to 80 ASCII characters for the ``descrip`` field.

    Returns
    -------
    nibabel.Nifti1Header

    """
    header = nib.Nifti1Header(endianness="<")
    header.set_data_dtype(dtype)
    header.set_data_shape((*shape, n_timepoints))
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    spatial_zooms = header.get_zooms()[:3]
    header.set_zooms((*spatial_zooms, t_r))
    header.set_xyzt_units(xyz="mm", t="sec")
    # EPI convention: readout (frequency) along x, phase encoding along y, slices along z.
    header.set_dim_info(freq=0, phase=1, slice=2)
    header["vox_offset"] = NIFTI_SINGLE_FILE_DATA_OFFSET
    header["descrip"] = description.encode("ascii")[:80]
    return header


def _open_gzip_stream(raw: BinaryIO, compresslevel: int) -> BinaryIO:
    """Wrap ``raw`` in a deterministic gzip writer (mtime 0, no file name in the header).

    python-isal is about three times faster than zlib; it only has levels 1 to 3 here
    (its level 0 is not "stored"), so the standard library handles the other levels.
    """
    if compresslevel in _ISAL_LEVELS:
        try:
            from isal import igzip
        except ImportError:
            pass
        else:
            return igzip.GzipFile(
                filename="", mode="wb", compresslevel=compresslevel, fileobj=raw, mtime=0
            )
    return gzip.GzipFile(filename="", mode="wb", compresslevel=compresslevel, fileobj=raw, mtime=0)


def write_nifti_volumes(
    path: str | os.PathLike[str],
    volumes: Iterable[ArrayLike],
    *,
    shape: tuple[int, int, int],
    n_timepoints: int,
    dtype: DTypeLike,
    affine: ArrayLike,
    t_r: float,
    compresslevel: int = 1,
    chunk_volumes: int | None = None,
    description: str = "",
) -> Path:
    """Stream volumes into a 4D NIfTI-1 file without holding the 4D array.

    The file is written to a hidden temporary file next to ``path`` and renamed into place
    only once every volume has been written, so an interrupted or failed write (including
    ``KeyboardInterrupt``) never leaves a file that looks complete, and an existing file at
    ``path`` is left untouched.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; ``.nii`` is written uncompressed, ``.nii.gz`` through gzip.
    volumes : iterable of array-like
        Exactly ``n_timepoints`` 3D volumes of shape ``shape`` and data type ``dtype``, in
        time order. Consumed lazily.
    shape : tuple of int
        Spatial shape of every volume.
    n_timepoints : int
        Number of volumes the iterable must yield.
    dtype : numpy dtype-like
        Data type of the volumes and of the file (no implicit casting).
    affine : array-like
        ``(4, 4)`` voxel-to-world affine.
    t_r : float
        Repetition time in seconds.
    compresslevel : int
        gzip level 0-9 for ``.nii.gz`` (ignored for ``.nii``).
    chunk_volumes : int, optional
        Volumes gathered per write. Default: as many as fit in 16 MiB (at least one). Memory
        use is this many volumes plus whatever the iterable holds.
    description : str
        Text for the header's ``descrip`` field (ASCII, truncated to 80 characters).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        Bad suffix, a volume of the wrong shape, or too few or too many volumes.
    TypeError
        A volume whose data type is not ``dtype``.

    """
    target = Path(path)
    suffix = nifti_suffix(target)
    file_dtype = np.dtype(dtype).newbyteorder("<")
    affine_array = np.asarray(affine, dtype=float)
    header = build_header(shape, n_timepoints, file_dtype, affine_array, t_r, description)

    n_voxels = int(np.prod(shape))
    volume_bytes = n_voxels * file_dtype.itemsize
    if chunk_volumes is None:
        chunk_volumes = max(1, _DEFAULT_WRITE_BUFFER_BYTES // max(volume_bytes, 1))
    chunk_volumes = min(chunk_volumes, n_timepoints)
    write_buffer = np.empty((chunk_volumes, n_voxels), dtype=file_dtype)

    # Hidden, never ends in .nii/.nii.gz, unique per writer; opened with the usual
    # permissions (mkstemp would make the final file owner-only).
    temporary = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    raw = open(temporary, "xb")  # opened before the try: never unlink a file not ours
    try:
        with raw:
            stream_context = (
                _open_gzip_stream(raw, compresslevel)
                if suffix == ".nii.gz"
                else contextlib.nullcontext(raw)
            )
            with stream_context as stream:
                header.write_to(stream)
                _write_volume_stream(
                    stream, volumes, write_buffer, shape=shape, n_timepoints=n_timepoints
                )
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def _write_volume_stream(
    stream: BinaryIO,
    volumes: Iterable[ArrayLike],
    write_buffer: np.ndarray,
    *,
    shape: tuple[int, int, int],
    n_timepoints: int,
) -> None:
    """Copy volumes into ``write_buffer`` (one row each, F order) and flush it when full."""
    file_dtype = write_buffer.dtype
    filled = 0
    n_written = 0
    for volume in volumes:
        array = np.asarray(volume)
        if n_written >= n_timepoints:
            raise ValueError(
                f"Got more than the {n_timepoints} volumes announced in the header; pass "
                "n_timepoints equal to the number of volumes the iterable yields."
            )
        if array.shape != tuple(shape):
            raise ValueError(
                f"Volume {n_written} has shape {array.shape}, expected {tuple(shape)}; every "
                "volume of a run must have the same spatial shape."
            )
        if array.dtype.newbyteorder("<") != file_dtype:
            raise TypeError(
                f"Volume {n_written} has data type {array.dtype}, expected {file_dtype}; cast "
                f"the volumes with .astype({file_dtype.name!r}) before writing."
            )
        # Fortran order: x fastest, as NIfTI stores voxels. A view for F-ordered volumes.
        write_buffer[filled] = array.ravel(order="F")
        filled += 1
        n_written += 1
        if filled == write_buffer.shape[0]:
            stream.write(write_buffer.reshape(-1).view(np.uint8))
            filled = 0
    if filled:
        stream.write(write_buffer[:filled].reshape(-1).view(np.uint8))
    if n_written != n_timepoints:
        raise ValueError(
            f"Got {n_written} volumes but the header announces {n_timepoints}; pass "
            "n_timepoints equal to the number of volumes the iterable yields."
        )
