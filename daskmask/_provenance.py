"""What a result was made from: input files, their sizes and header checksums.

The checksum covers the NIfTI header only (348 bytes for NIfTI-1, 540 for
NIfTI-2, after decompression), so it is cheap for any file size and still
tells whether a results store was computed from this very run.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

#: sizeof_hdr values of NIfTI-1 and NIfTI-2 headers, which are also their lengths.
_HEADER_SIZES = (348, 540)


def header_sha256(path: str | os.PathLike[str]) -> str:
    """Return the sha256 hex digest of the NIfTI header of ``path``."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        first = stream.read(4)
        size = next(
            (
                s
                for s in _HEADER_SIZES
                for order in "<>"
                if int(np.frombuffer(first, order + "i4")[0]) == s
            ),
            348,
        )
        header = first + stream.read(size - 4)
    return hashlib.sha256(header).hexdigest()


def source_paths(data: xr.DataArray) -> list[str]:
    """Return the input files recorded by :func:`daskmask.open_nifti` (none if in memory)."""
    source = data.attrs.get("source")
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    if not isinstance(source, (list, tuple)):
        return []
    return [str(p) for p in source if os.path.isfile(str(p))]


def input_provenance(data: xr.DataArray) -> dict[str, Any]:
    """Describe the files behind ``data``: paths, sizes in bytes and header checksums."""
    paths = source_paths(data)
    return {
        "paths": paths,
        "sizes": [os.path.getsize(p) for p in paths],
        "header_sha256": [header_sha256(p) for p in paths],
    }
