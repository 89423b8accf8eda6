"""An xarray backend engine for NIfTI files: ``xr.open_dataarray(path, engine="nifti")``.

The engine is registered under the ``xarray.backends`` entry point ``nifti``.
It shares its machinery with :func:`daskmask.reading.open_nifti` (same header
handling, same picklable array, same chunk planning), so
``xr.open_dataarray(path, engine="nifti", chunks={})`` equals
``open_nifti(path)``.
"""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zlib
from collections.abc import Iterable
from typing import Any, ClassVar

import xarray as xr
from xarray.backends import BackendEntrypoint
from xarray.core import indexing

from daskmask._fs import is_url, locate
from daskmask.reading._array import NiftiArrayWrapper
from daskmask.reading._chunks import volumes_per_chunk
from daskmask.reading._metadata import build_attrs, build_coords, dims_for
from daskmask.reading._sources import (
    GZIP_MAGIC,
    NIFTI1_HEADER_BYTES,
    NIFTI2_HEADER_BYTES,
    open_location,
    open_path,
)

#: File name endings this engine claims when the content cannot be sniffed.
_NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: Where the magic string sits and its values (single file, pair), by NIfTI version.
_NIFTI1_MAGIC_OFFSET, _NIFTI1_MAGICS = 344, (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGIC_OFFSET, _NIFTI2_MAGICS = 4, (b"n+2\x00", b"ni2\x00")


def _looks_like_nifti_header(first_bytes: bytes) -> bool:
    """Return whether bytes start with a NIfTI-1 or NIfTI-2 header (either endianness)."""
    if len(first_bytes) < NIFTI1_HEADER_BYTES:
        return False
    for byte_order in "<>":
        (sizeof_hdr,) = struct.unpack(byte_order + "i", first_bytes[:4])
        if sizeof_hdr == NIFTI1_HEADER_BYTES:
            magic = first_bytes[_NIFTI1_MAGIC_OFFSET : _NIFTI1_MAGIC_OFFSET + 4]
            return magic in _NIFTI1_MAGICS
        if sizeof_hdr == NIFTI2_HEADER_BYTES:
            magic = first_bytes[_NIFTI2_MAGIC_OFFSET : _NIFTI2_MAGIC_OFFSET + 4]
            return magic in _NIFTI2_MAGICS
    return False


def _sniff(path: str) -> bool:
    """Read the first header bytes of a file (through gzip if needed) and check them.

    Anything but a regular file is not sniffed: opening a FIFO would block.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        return False
    with open(path, "rb") as raw:
        first_bytes = raw.read(NIFTI2_HEADER_BYTES)
    if first_bytes.startswith(GZIP_MAGIC):
        with gzip.open(path, "rb") as inflated:
            first_bytes = inflated.read(NIFTI2_HEADER_BYTES)
    return _looks_like_nifti_header(first_bytes)


class NiftiBackendEntrypoint(BackendEntrypoint):
    """Open a ``.nii`` or ``.nii.gz`` file as a Dataset with one lazy 4D variable.

    The variable is named after the file stem, has dims
    ``("x", "y", "z", "time")`` (or fewer for 2D/3D images), the same
    coordinates and attributes as :func:`daskmask.reading.open_nifti`, and
    ``encoding["preferred_chunks"]`` set to whole volumes along time, so that
    ``chunks={}`` gives the same chunks as ``open_nifti(path)``.

    Examples
    --------
    >>> import xarray as xr
    >>> bold = xr.open_dataarray("sub-01_bold.nii.gz", engine="nifti", chunks={})  # doctest: +SKIP

    """

    description: ClassVar[str] = (
        "Open NIfTI-1/NIfTI-2 images (.nii, .nii.gz) lazily, chunked along time (daskmask)"
    )
    url: ClassVar[str] = "https://github.com/daskmask/daskmask"
    open_dataset_parameters: ClassVar[tuple[str, ...]] = (
        "filename_or_obj",
        "drop_variables",
        "storage_options",
    )

    def open_dataset(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> xr.Dataset:
        """Open one NIfTI file lazily (headers only).

        Parameters
        ----------
        filename_or_obj : str or os.PathLike
            Path to a NIfTI file (``~`` expanded). File objects are not
            supported: the data must be re-openable by path in every process.
        drop_variables : str or iterable of str, optional
            Variable names to leave out (the only variable is the file stem).
        storage_options : dict, optional
            File-system options of a URL (``s3://...``): credentials,
            ``endpoint_url``; as :func:`daskmask.open_nifti`.

        Returns
        -------
        xarray.Dataset
            One data variable backed by a lazily indexed
            :class:`~daskmask.reading._array.NiftiArrayWrapper`.

        Raises
        ------
        TypeError
            If ``filename_or_obj`` is not a path.
        NiftiFileNotFoundError, NiftiReadError, DimensionError, ValueError
            As :func:`daskmask.reading.open_nifti`.

        """
        if not isinstance(filename_or_obj, str | os.PathLike):
            raise TypeError(
                "The nifti engine opens files by path (str or os.PathLike) so that every "
                f"process can re-open them; got {type(filename_or_obj).__name__}."
            )
        if is_url(filename_or_obj):
            image = open_location(locate(filename_or_obj, storage_options))
        else:
            image = open_path(os.path.expanduser(os.fspath(filename_or_obj)))
        assert image.spec is not None  # paths are always file-backed
        wrapper = NiftiArrayWrapper(image.spec)
        dims = dims_for(len(image.shape))
        preferred_chunks = dict(zip(dims, image.shape, strict=True))
        if "time" in preferred_chunks:
            preferred_chunks["time"] = volumes_per_chunk(
                image.shape, wrapper.dtype.itemsize, "auto"
            )
        attrs = build_attrs(image.metadata, image.affine, image.label, image.on_disk_dtype)
        variable = xr.Variable(
            dims,
            indexing.LazilyIndexedArray(wrapper),
            attrs=attrs,
            encoding={"preferred_chunks": preferred_chunks, "source": image.label},
        )
        name = image.name or "data"
        if isinstance(drop_variables, str):
            drop_variables = [drop_variables]
        data_vars = {} if name in set(drop_variables or ()) else {name: variable}
        coords = build_coords(image.shape, attrs["t_r"])
        return xr.Dataset(data_vars, coords=coords)

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Return whether ``filename_or_obj`` is a NIfTI file (by header magic or suffix).

        Parameters
        ----------
        filename_or_obj : object
            What the user passed to :func:`xarray.open_dataset`.

        Returns
        -------
        bool
            True for paths whose content starts with a NIfTI-1/NIfTI-2 header
            (also inside gzip), or, when the file cannot be read, whose name
            ends in ``.nii`` or ``.nii.gz``.

        """
        if not isinstance(filename_or_obj, str | os.PathLike):
            return False
        if is_url(filename_or_obj):  # no request just to guess: by name
            return str(filename_or_obj).lower().endswith(_NIFTI_SUFFIXES)
        path = os.path.expanduser(os.fspath(filename_or_obj))
        if not isinstance(path, str):
            return False
        try:
            if _sniff(path):
                return True
        except (OSError, EOFError, zlib.error):
            pass
        return path.lower().endswith(_NIFTI_SUFFIXES)
