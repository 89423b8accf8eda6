"""The object returned by :func:`daskmask.storage.open_results`."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import xarray as xr

from daskmask._fs import Location, locate
from daskmask.storage import _layout as layout


class Results:
    """A reopened results store: lazy signals with their mask, mean image and metadata.

    Parameters
    ----------
    dataset : xarray.Dataset
        The store opened lazily (dask-backed variables).
    path : pathlib.Path, str or Location
        Where the store is: a local directory or an object-store URL.

    Attributes
    ----------
    dataset : xarray.Dataset
        The underlying lazy Dataset.
    path : pathlib.Path or str
        The store directory, or the URL of a store in an object store.
    url : str
        The store's absolute path or URL.
    signals : xarray.DataArray
        Lazy signals, (time, voxel) or (voxel,), chunked as written, with the
        coordinates and JSON attributes they were saved with.
    mask_img : nibabel.Nifti1Image
        The mask (uint8) on the grid of ``affine``; read on first access.
    mean_img : nibabel.Nifti1Image or None
        The input's mean image (float32) when it was stored; read on first access.
    affine : numpy.ndarray
        4x4 affine of the mask grid.
    mask_shape : tuple of int
        Shape of the mask grid.
    masker_params : dict
        Every masker parameter, JSON-safe.
    provenance : dict
        Input ``paths``, ``sizes`` and ``header_sha256``.
    version : str
        The daskmask version that wrote the store.
    created : str
        UTC ISO time of the write.
    format_version : int
        Version of the store layout.

    """

    def __init__(self, dataset: xr.Dataset, path: Path | str | Location) -> None:
        self.dataset = dataset
        location = locate(path)
        self.url = location.url
        self.path: Path | str = Path(location.path) if location.is_local else location.url
        attrs = dataset.attrs
        self.affine = np.asarray(attrs["affine"], dtype=np.float64)
        self.mask_shape = tuple(int(n) for n in attrs["mask_shape"])
        self.masker_params: dict[str, Any] = dict(attrs.get("masker_params") or {})
        self.provenance: dict[str, Any] = dict(attrs.get("provenance") or {})
        self.version = str(attrs["daskmask_version"])
        self.created = str(attrs.get("created", ""))
        self.format_version = int(attrs["format_version"])

    @property
    def signals(self) -> xr.DataArray:
        """The lazy signals DataArray."""
        return self.dataset[layout.SIGNALS]

    @cached_property
    def mask_img(self) -> nib.Nifti1Image:
        """The mask as a NIfTI image (uint8, 1 inside)."""
        mask = np.asarray(self.dataset[layout.MASK].values, dtype=np.uint8)
        return nib.Nifti1Image(mask, self.affine)

    @cached_property
    def mean_img(self) -> nib.Nifti1Image | None:
        """The input's mean image over time, or None when the store has none."""
        if layout.MEAN_IMAGE not in self.dataset:
            return None
        variable = self.dataset[layout.MEAN_IMAGE]
        affine = np.asarray(variable.attrs.get("affine", self.affine), dtype=np.float64)
        return nib.Nifti1Image(np.asarray(variable.values, dtype=np.float32), affine)

    def __repr__(self) -> str:
        signals = self.signals
        shape = ", ".join(f"{dim}: {size}" for dim, size in signals.sizes.items())
        chunks = signals.chunks
        blocks = len(chunks[-1]) if chunks else 1
        n_voxel = signals.sizes[layout.VOXEL]
        mean = "yes" if layout.MEAN_IMAGE in self.dataset else "no"
        inputs = self.provenance.get("paths") or ["in memory"]
        return (
            f"<Results {str(self.path)!r}\n"
            f"  signals: ({shape}) {signals.dtype} in {blocks} voxel block(s)\n"
            f"  mask: {'x'.join(map(str, self.mask_shape))} grid, {n_voxel} voxels; "
            f"mean image: {mean}\n"
            f"  input: {', '.join(map(str, inputs))}\n"
            f"  daskmask {self.version}, format {self.format_version}, created {self.created}>"
        )
