"""Reopen a results store lazily, after checking that it is complete."""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr
import zarr
from zarr.storage import LocalStore

from daskmask.storage import _layout as layout
from daskmask.storage._errors import IncompleteStoreError, NotAStoreError, StoreNotFoundError
from daskmask.storage._results import Results


def _root_attributes(path: Path) -> dict:
    """Return the root attributes of the Zarr group at ``path``, or raise NotAStoreError."""
    if not os.path.lexists(path):
        raise StoreNotFoundError(f"No results store at {path}.")
    if not path.is_dir() or not (path / "zarr.json").is_file():
        raise NotAStoreError(f"{path} is not a daskmask results store (no Zarr v3 group).")
    try:
        group = zarr.open_group(LocalStore(path, read_only=True), mode="r", zarr_format=3)
    except Exception as error:
        raise NotAStoreError(f"{path} is not a readable Zarr v3 group: {error}") from error
    return dict(group.attrs)


def open_results(path: str | os.PathLike[str]) -> Results:
    """Open a results store written by :func:`daskmask.storage.save`, lazily.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory.

    Returns
    -------
    Results
        Signals, mask, mean image, parameters and provenance. Only metadata
        and the small index coordinates are read; the signals stay on disk
        until computed.

    Raises
    ------
    StoreNotFoundError
        ``path`` does not exist (also a ``FileNotFoundError``).
    NotAStoreError
        ``path`` is not a daskmask store, or one of a newer format.
    IncompleteStoreError
        The store has no completion marker: its write failed or was
        interrupted.

    """
    path = Path(os.path.abspath(os.fspath(path)))
    attrs = _root_attributes(path)
    if "format_version" not in attrs or "daskmask_version" not in attrs:
        raise NotAStoreError(f"{path} is a Zarr store but not a daskmask results store.")
    if attrs.get(layout.COMPLETE) is not True:
        raise IncompleteStoreError(
            f"The results store {path} is incomplete: its write failed or was interrupted. "
            "Write it again."
        )
    if int(attrs["format_version"]) > layout.FORMAT_VERSION:
        raise NotAStoreError(
            f"{path} has format version {attrs['format_version']}; this daskmask reads "
            f"version {layout.FORMAT_VERSION} or older. Upgrade daskmask."
        )
    dataset = xr.open_zarr(
        LocalStore(path, read_only=True),
        zarr_format=3,
        consolidated=False,
        chunks={},
        mask_and_scale=False,
        decode_times=False,
        decode_timedelta=False,
    )
    for name in (layout.SIGNALS, layout.MASK):
        if name not in dataset:
            raise NotAStoreError(f"The results store {path} has no '{name}' array.")
    return Results(dataset, path)
