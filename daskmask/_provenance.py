"""What a result was made from: input files or objects, their sizes, versions and headers.

The checksum covers the NIfTI header only (348 bytes for NIfTI-1, 540 for
NIfTI-2, after decompression), so it is cheap for any file size and still
tells whether a results store was computed from this very run. Inputs are
named by path or URL; an object's version is its ETag or version id (a
file's: its modification time and inode), as recorded when it was opened.
Storage options (credentials) are never recorded.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib
from typing import Any

import numpy as np
import xarray as xr

from daskmask._fs import Location, is_url, locate, object_head

#: sizeof_hdr values of NIfTI-1 and NIfTI-2 headers, which are also their lengths.
_HEADER_SIZES = (348, 540)


def _header_of(first: bytes) -> bytes:
    """Cut the NIfTI header (NIfTI-1 or NIfTI-2, either byte order) from its first bytes."""
    size = next(
        (
            s
            for s in _HEADER_SIZES
            for order in "<>"
            if len(first) >= 4 and int(np.frombuffer(first[:4], order + "i4")[0]) == s
        ),
        348,
    )
    return first[:size]


def header_sha256(path: str | os.PathLike[str] | Location) -> str:
    """Return the sha256 hex digest of the NIfTI header of a file or object."""
    location = locate(path)
    if location.is_local:
        with open(location.path, "rb") as raw:
            first = raw.read(2)
            raw.seek(0)
            opener = gzip.open if first == b"\x1f\x8b" else open
            with opener(location.path, "rb") as stream:
                return hashlib.sha256(_header_of(stream.read(540))).hexdigest()
    head = object_head(location)
    if head.startswith(b"\x1f\x8b"):
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 540)
        except zlib.error:
            head = gzip.GzipFile(fileobj=io.BytesIO(head)).read(540)
    return hashlib.sha256(_header_of(head)).hexdigest()


def _spec_locations(data: xr.DataArray) -> dict[str, Any]:
    """Specs recorded by ``open_nifti`` (single images), by path or URL."""
    spec = data.encoding.get("nifti_spec")
    return {spec.path: spec} if spec is not None else {}


def source_paths(data: xr.DataArray) -> list[str]:
    """Return the input files or object URLs recorded by :func:`daskmask.open_nifti`.

    In-memory inputs have none; local files that no longer exist are left out.
    """
    source = data.attrs.get("source")
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    if not isinstance(source, (list, tuple)):
        return []
    return [str(p) for p in source if is_url(str(p)) or os.path.isfile(str(p))]


def input_provenance(data: xr.DataArray) -> dict[str, Any]:
    """Describe the inputs behind ``data``: paths or URLs, sizes, versions, header checksums.

    The version of an object is its ETag or version id, of a file its
    modification time and inode: those recorded when it was opened when the
    run carries its spec, else those of now.
    """
    paths = source_paths(data)
    specs = _spec_locations(data)
    sizes, versions = [], []
    for path in paths:
        spec = specs.get(path)
        if spec is not None and getattr(spec, "version", None) is not None:
            size, version = spec.version
        elif spec is not None and spec.identity is not None:
            size, mtime_ns, inode = spec.identity
            version = f"mtime_ns={mtime_ns},ino={inode}"
        else:
            stat = locate(path, _options(spec)).stat()
            size, version = stat.size, stat.version
        sizes.append(int(size))
        versions.append(str(version))
    return {
        "paths": paths,
        "sizes": sizes,
        "versions": versions,
        "header_sha256": [header_sha256(locate(p, _options(specs.get(p)))) for p in paths],
    }


def _options(spec: Any) -> dict[str, Any] | None:
    location = getattr(spec, "location", None)
    return location.storage_options if location is not None else None
