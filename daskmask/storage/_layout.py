"""Names, metadata and chunk plans of the results store (pure, no I/O).

A results store is one Zarr (format 3) group::

    <name>.zarr/
        zarr.json          root attributes (see ROOT_ATTRS), "manifest" and "complete" set last
        signals/           (time, voxel) or (voxel,), chunks (all time, voxel block)
        mask/              (grid_i, grid_j, grid_k) uint8
        mean_image/        float32 on the mask grid (or its own grid), optional
        time/ voxel/       index coordinates
        i/ j/ k/ x/ y/ z/  voxel coordinates along ``voxel``
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from daskmask import signals as _contract
from daskmask._json import json_safe

#: Version of the layout written by :func:`daskmask.storage.save`. Version 2 added the
#: ``manifest`` root attribute, a ``crc32c`` checksum on every chunk and the writing of
#: every chunk (see :mod:`daskmask.storage._integrity`).
FORMAT_VERSION = 2
#: The oldest layout with a manifest and checksums; older stores open unchecked.
CHECKED_FORMAT_VERSION = 2

SIGNALS = _contract.NAME
MASK = "mask"
MEAN_IMAGE = "mean_image"
TIME = _contract.TIME
VOXEL = _contract.VOXEL
#: Dimensions of the mask (and of the mean image when it is on the mask grid).
GRID_DIMS = ("grid_i", "grid_j", "grid_k")
#: Dimensions of a mean image whose grid differs from the mask grid.
MEAN_DIMS = ("mean_i", "mean_j", "mean_k")
INDEX_COORDS = _contract.INDEX_COORDS
WORLD_COORDS = _contract.WORLD_COORDS

#: The lazy, non-JSON attribute of the signals that carries the mean image.
MEAN_ATTR = _contract.MEAN_ATTR
MEAN_AFFINE_ATTR = _contract.MEAN_AFFINE_ATTR
COMPLETE = "complete"
#: Root attribute recording each array's shape, chunks, data type and chunk count.
MANIFEST = "manifest"
#: Root attributes of a store, in the order they are written.
ROOT_ATTRS = (
    *_contract.JSON_ATTRS,
    "created",
    "format_version",
    MANIFEST,
    COMPLETE,
)

#: Target size of one signals chunk when the signals are not chunked yet.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def sibling(path: Path, kind: str, token: str) -> Path:
    """Return the hidden sibling ``.<name>.<kind>-<token>`` of ``path``.

    ``kind`` is ``"partial"`` for a store being written and ``"old"`` for a
    store being replaced.
    """
    return path.with_name(f".{path.name}.{kind}-{token}")


def is_sibling_of(candidate: str, path: Path) -> bool:
    """Tell whether the file name ``candidate`` is a hidden sibling of ``path``."""
    return candidate.startswith(f".{path.name}.partial-") or candidate.startswith(
        f".{path.name}.old-"
    )


def mask_from_indices(
    i: np.ndarray, j: np.ndarray, k: np.ndarray, shape: Sequence[int]
) -> np.ndarray:
    """Rebuild a 3D uint8 mask from the voxel indices of its non-zero voxels.

    Raises
    ------
    ValueError
        If an index is outside ``shape``, a voxel appears twice, or the
        voxels are not in the C order of ``np.nonzero(mask)`` (the order of
        the signals' columns).

    """
    shape = tuple(int(n) for n in shape)
    indices = [np.asarray(a, dtype=np.int64).ravel() for a in (i, j, k)]
    if len(shape) != 3 or len({a.size for a in indices}) != 1:
        raise ValueError("Voxel indices i, j, k must have one length and the mask 3 dimensions.")
    for axis, (a, n) in enumerate(zip(indices, shape, strict=True)):
        if a.size and (a.min() < 0 or a.max() >= n):
            raise ValueError(f"Voxel indices along axis {axis} are outside a mask of {shape}.")
    flat = np.ravel_multi_index(tuple(indices), shape) if indices[0].size else indices[0]
    if flat.size > 1 and np.any(np.diff(flat) <= 0):
        raise ValueError(
            "Voxel indices are not strictly increasing in C order: the voxels are not "
            "the columns of a masked array (np.nonzero order) or appear twice."
        )
    mask = np.zeros(shape, dtype=np.uint8)
    mask.flat[flat] = 1
    return mask


def world_coordinates(affine: np.ndarray, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> tuple:
    """Return the world coordinates ``x, y, z`` (float64 mm): affine @ [i, j, k, 1]."""
    ijk1 = np.vstack([np.asarray(a, dtype=np.float64) for a in (i, j, k)] + [np.ones(len(i))])
    xyz = np.asarray(affine, dtype=np.float64) @ ijk1
    return xyz[0], xyz[1], xyz[2]


def regular_chunks(chunks: Sequence[Sequence[int]]) -> tuple[int, ...] | None:
    """Return the Zarr chunk shape of dask ``chunks``, or None if they are irregular.

    Dask chunks map onto a regular Zarr grid when, along every axis, all
    chunks but the last have one size and the last is not larger.
    """
    shape = []
    for sizes in chunks:
        sizes = tuple(int(n) for n in sizes)
        first = sizes[0] if sizes else 0
        if any(n != first for n in sizes[:-1]) or (sizes and sizes[-1] > first):
            return None
        shape.append(max(first, 1))
    return tuple(shape)


def plan_chunks(
    shape: Sequence[int], itemsize: int, target_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[int, ...]:
    """Plan the chunks of signals that are not chunked: all time, voxel blocks.

    Parameters
    ----------
    shape : sequence of int
        ``(n_time, n_voxel)`` or ``(n_voxel,)``.
    itemsize : int
        Bytes per value.
    target_bytes : int
        Largest size of one chunk (a block holds at least one voxel).

    Returns
    -------
    tuple of int
        The chunk shape: ``(n_time, block)`` or ``(block,)``.

    """
    *time, n_voxel = (int(n) for n in shape)
    column_bytes = itemsize * math.prod(time)
    block = max(1, target_bytes // max(column_bytes, 1))
    return (*(max(n, 1) for n in time), max(1, min(block, n_voxel)))


def root_attributes(
    signal_attrs: Mapping[str, Any],
    *,
    affine: np.ndarray,
    mask_shape: Sequence[int],
    version: str,
    created: str,
) -> dict[str, Any]:
    """Return the root attributes of a store, with ``complete`` still false.

    ``masker_params`` and ``provenance`` come from the signals' attributes
    (empty when absent); affine and mask shape are the resolved ones.
    """
    provenance = signal_attrs.get("provenance") or {
        "paths": [],
        "sizes": [],
        "header_sha256": [],
    }
    return {
        "affine": json_safe(np.asarray(affine, dtype=np.float64)),
        "mask_shape": [int(n) for n in mask_shape],
        "masker_params": json_safe(dict(signal_attrs.get("masker_params") or {})),
        "provenance": json_safe(provenance),
        "daskmask_version": str(version),
        "created": created,
        "format_version": FORMAT_VERSION,
        MANIFEST: {},
        COMPLETE: False,
    }
