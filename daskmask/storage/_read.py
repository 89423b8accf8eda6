"""Reopen a results store lazily, after checking that it is complete and whole.

Every way a store can be damaged ends in a typed error naming the store,
what is wrong and what to do: :class:`StoreNotFoundError`,
:class:`NotAStoreError` (not a daskmask store, or a newer format),
:class:`IncompleteStoreError` (no completion marker) or
:class:`CorruptStoreError` (bad metadata or attributes, missing or changed
chunks), never a raw ``JSONDecodeError``, ``KeyError`` or ``TypeError``.
The same checks run on a local folder and on an object-store prefix (through
:mod:`daskmask.storage._backends`); errors of the storage library are typed
:class:`~daskmask.exceptions.StorageError` subclasses naming the URL.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import xarray as xr

from daskmask._fs import Location, locate, storage_errors
from daskmask.exceptions import DaskmaskError
from daskmask.storage import _layout as layout
from daskmask.storage._backends import StoreBackend, backend_for
from daskmask.storage._errors import (
    CorruptStoreError,
    IncompleteStoreError,
    NotAStoreError,
    StoreNotFoundError,
)
from daskmask.storage._integrity import REWRITE, check_arrays, check_manifest
from daskmask.storage._results import Results
from daskmask.storage._tree import StoreTree


def _corrupt(path: object, what: str, array: str | None = None) -> CorruptStoreError:
    return CorruptStoreError(
        f"The results store {path} is damaged: {what}. {REWRITE}", path=str(path), array=array
    )


def _incomplete(path: object) -> IncompleteStoreError:
    return IncompleteStoreError(
        f"The results store {path} is incomplete: its write failed or was interrupted "
        "before it was marked complete. Write it again: daskmask.save(signals, "
        f"{str(path)!r}, overwrite=True)."
    )


def _root_attributes(location: Location, backend: StoreBackend, tree: StoreTree) -> dict:
    """Return the root attributes of the Zarr group at ``location``, or raise a store error."""
    path = str(tree)
    if not tree.exists() and not backend.recover(location):
        raise StoreNotFoundError(f"No results store at {path}.")
    metadata_file = tree.describe("zarr.json")
    if not tree.is_container() or not tree.is_file("zarr.json"):
        if tree.is_container() and tree.holds_arrays_only():
            # the arrays of a store without its root: a write or removal cut short
            raise _incomplete(path)
        raise NotAStoreError(f"{path} is not a daskmask results store (no Zarr v3 group).")
    raw = tree.read("zarr.json")
    # a damaged root of one of ours is corrupt; anything else is simply not ours
    ours = b"daskmask_version" in raw
    try:
        metadata = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        if ours:
            raise _corrupt(
                path, f"its root metadata {metadata_file} is not valid JSON ({error})"
            ) from None
        raise NotAStoreError(
            f"{path} is not a daskmask results store: {metadata_file} is not valid JSON."
        ) from None
    if (
        not isinstance(metadata, dict)
        or metadata.get("zarr_format") != 3
        or metadata.get("node_type") != "group"
    ):
        if ours:
            raise _corrupt(path, f"its root metadata {metadata_file} is not a Zarr v3 group")
        raise NotAStoreError(f"{path} is not a daskmask results store (no Zarr v3 group).")
    attrs = metadata.get("attributes", {})
    if not isinstance(attrs, dict):
        raise _corrupt(path, f"the root 'attributes' are {type(attrs).__name__}, not an object")
    return attrs


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_attributes(path: object, attrs: Mapping[str, Any]) -> int:
    """Check the root attributes' presence and types; return the format version."""
    if "format_version" not in attrs or "daskmask_version" not in attrs:
        raise NotAStoreError(f"{path} is a Zarr store but not a daskmask results store.")
    version = attrs["format_version"]
    if not _is_count(version, 1):
        raise _corrupt(
            path, f"root attribute 'format_version' is {version!r}, not an integer >= 1"
        )
    complete = attrs.get(layout.COMPLETE, False)
    if not isinstance(complete, bool):
        raise _corrupt(path, f"root attribute 'complete' is {complete!r}, not true or false")
    if not complete:
        raise _incomplete(path)
    if version > layout.FORMAT_VERSION:
        raise NotAStoreError(
            f"{path} has format version {version}; this daskmask reads "
            f"version {layout.FORMAT_VERSION} or older. Upgrade daskmask."
        )
    affine = attrs.get("affine")
    if not (
        isinstance(affine, list)
        and len(affine) == 4
        and all(isinstance(row, list) and len(row) == 4 for row in affine)
        and all(_is_number(v) for row in affine for v in row)
    ):
        raise _corrupt(path, f"root attribute 'affine' is {affine!r}, not 4 rows of 4 numbers")
    shape = attrs.get("mask_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_count(n) for n in shape)):
        raise _corrupt(path, f"root attribute 'mask_shape' is {shape!r}, not 3 sizes")
    for name in ("masker_params", "provenance"):
        if not isinstance(attrs.get(name) or {}, dict):
            raise _corrupt(path, f"root attribute '{name}' is {attrs[name]!r}, not an object")
    for name in ("daskmask_version", "created"):
        if not isinstance(attrs.get(name, ""), str):
            raise _corrupt(path, f"root attribute '{name}' is {attrs[name]!r}, not a string")
    return version


def _check_dataset(path: object, dataset: xr.Dataset, attrs: Mapping[str, Any]) -> None:
    """Check that the arrays fit together: signals, mask on the grid, voxel coordinates."""
    for name in (layout.SIGNALS, layout.MASK):
        if name not in dataset:
            raise NotAStoreError(f"The results store {path} has no '{name}' array.")
    signals = dataset[layout.SIGNALS]
    if signals.dims not in ((layout.TIME, layout.VOXEL), (layout.VOXEL,)):
        raise _corrupt(path, f"'signals' has dims {signals.dims}, not (time, voxel) or (voxel,)")
    mask = dataset[layout.MASK]
    if mask.dims != layout.GRID_DIMS or list(mask.shape) != list(attrs["mask_shape"]):
        raise _corrupt(
            path,
            f"'mask' has dims {mask.dims} and shape {mask.shape}, not {layout.GRID_DIMS} "
            f"and the root 'mask_shape' {attrs['mask_shape']}",
            array=layout.MASK,
        )
    for name in (*layout.INDEX_COORDS, *layout.WORLD_COORDS):
        if name in dataset.coords and dataset[name].dims != (layout.VOXEL,):
            raise _corrupt(path, f"coordinate '{name}' has dims {dataset[name].dims}", name)
    if layout.MEAN_IMAGE in dataset:
        mean = dataset[layout.MEAN_IMAGE]
        affine = mean.attrs.get("affine", attrs["affine"])
        if mean.ndim != 3 or not (
            isinstance(affine, list)
            and len(affine) == 4
            and all(isinstance(row, list) and len(row) == 4 for row in affine)
            and all(_is_number(v) for row in affine for v in row)
        ):
            raise _corrupt(
                path,
                f"'mean_image' has {mean.ndim} dims and affine {affine!r}, not 3 dims and 4 "
                "rows of 4 numbers",
                array=layout.MEAN_IMAGE,
            )


def open_results(
    path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> Results:
    """Open a results store written by :func:`daskmask.storage.save`, lazily.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory, or the URL of a store in an object store
        (``s3://bucket/sub-01.zarr``, any fsspec URL).
    storage_options : mapping, optional
        File-system options for a URL (credentials, ``endpoint_url``, ...),
        merged over the dask config ``daskmask.storage-options``; by default
        the file system's usual environment.

    Returns
    -------
    Results
        Signals, mask, mean image, parameters and provenance. Only metadata,
        the list of chunk files and the small index coordinates are read; the
        signals stay in the store until computed, and every chunk read is
        checked against its CRC-32C.

    Raises
    ------
    StoreNotFoundError
        ``path`` does not exist (also a ``FileNotFoundError``).
    NotAStoreError
        ``path`` is not a daskmask store, or one of a newer format.
    IncompleteStoreError
        The store has no completion marker: its write failed or was
        interrupted (in an object store: also an overwrite cut short, once
        the old store was invalidated). Save it again with ``overwrite=True``.
    CorruptStoreError
        Metadata or root attributes are malformed, or an array or chunk
        written is missing. Also raised later, when the lazy arrays are
        computed, by a chunk that is missing or fails its checksum.
    daskmask.exceptions.StorageError
        An object store cannot be read: missing bucket, missing or wrong
        credentials, an endpoint that does not answer.

    Notes
    -----
    If a save that was replacing a local ``path`` was killed at the instant
    when nothing is at ``path`` (only on file systems without an atomic
    exchange of directories), the complete store it left is moved back first.
    Stores of format 1 (before manifests and checksums) open unchecked.

    """
    location = locate(path, storage_options)
    backend = backend_for(location)
    tree = backend.tree(location)
    label = str(tree)
    attrs = _root_attributes(location, backend, tree)
    version = _check_attributes(label, attrs)
    arrays: Mapping[str, Any] = {}
    if version >= layout.CHECKED_FORMAT_VERSION:
        manifest = check_manifest(attrs, label)
        for name in (layout.SIGNALS, layout.MASK):
            if name not in manifest:
                raise _corrupt(label, f"its manifest lists no '{name}' array", name)
        check_arrays(tree, manifest)
        arrays = manifest
    # format 1 (no manifest): no array is checked, the store reads as plain Zarr
    store = backend.read_store(location, arrays)
    network = contextlib.nullcontext() if location.is_local else storage_errors(location.url)
    try:
        with network:
            dataset = xr.open_zarr(
                store,
                zarr_format=3,
                consolidated=False,
                chunks={},
                mask_and_scale=False,
                decode_times=False,
                decode_timedelta=False,
            )
        _check_dataset(label, dataset, attrs)
        return Results(dataset, location)
    except (DaskmaskError, OSError):
        raise
    except Exception as error:
        # zarr and xarray raise ValueError, KeyError, TypeError... on bad metadata
        raise _corrupt(
            label, f"its Zarr metadata cannot be read ({type(error).__name__}: {error})"
        ) from error
