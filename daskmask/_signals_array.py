"""The signals DataArray: (time, voxel) values with voxel coordinates and metadata.

Every producer (``NiftiMasker.transform``) and consumer (``daskmask.save``,
``inverse_transform``) shares this layout: dims ``("time", "voxel")`` (or
``("voxel",)`` for a single volume); coordinates ``i, j, k`` (voxel indices
on the mask grid, in C order of ``np.nonzero(mask)``, nilearn's feature
order) and ``x, y, z`` (world mm) along ``voxel``; JSON attrs ``affine``,
``mask_shape``, ``masker_params``, ``provenance``, ``daskmask_version``; and
the lazy mean image of the input in ``attrs["mean_image"]`` with its grid in
``attrs["mean_image_affine"]``.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from daskmask._json import json_safe
from daskmask._version import __version__


def signals_dataarray(
    values: da.Array | np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    time: Any = None,
    masker_params: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    mean_image: da.Array | np.ndarray | None = None,
    mean_image_affine: np.ndarray | None = None,
) -> xr.DataArray:
    """Wrap masked signals with their voxel coordinates and metadata.

    Parameters
    ----------
    values : dask or numpy array of shape (n_time, n_voxels) or (n_voxels,)
        The signals, columns in C order of ``np.nonzero(mask)``.
    mask : numpy.ndarray
        3D boolean mask the columns come from.
    affine : numpy.ndarray
        4x4 affine of the mask grid.
    time : array-like or None
        Time coordinate (seconds or index); None gives ``arange``.
    masker_params, provenance : dict or None
        Estimator parameters and input provenance (made JSON-safe).
    mean_image : dask.array.Array, numpy.ndarray or None
        Lazy 3D mean of the input over time.
    mean_image_affine : numpy.ndarray or None
        Affine of ``mean_image``'s grid (the input's).

    Returns
    -------
    xarray.DataArray
        Named ``"signals"``.

    """
    i, j, k = (index.astype(np.int32) for index in np.nonzero(mask))
    world = nib.affines.apply_affine(affine, np.column_stack([i, j, k]))
    coords: dict[str, Any] = {
        "voxel": np.arange(i.size),
        "i": ("voxel", i),
        "j": ("voxel", j),
        "k": ("voxel", k),
        "x": ("voxel", world[:, 0]),
        "y": ("voxel", world[:, 1]),
        "z": ("voxel", world[:, 2]),
    }
    dims: tuple[str, ...] = ("voxel",)
    if values.ndim == 2:
        dims = ("time", "voxel")
        coords["time"] = np.arange(values.shape[0]) if time is None else np.asarray(time)
    attrs: dict[str, Any] = {
        "affine": json_safe(np.asarray(affine, dtype=float)),
        "mask_shape": [int(n) for n in mask.shape],
        "masker_params": json_safe(masker_params or {}),
        "provenance": json_safe(provenance or {}),
        "daskmask_version": __version__,
    }
    if mean_image is not None:
        attrs["mean_image"] = mean_image
        if mean_image_affine is not None:
            attrs["mean_image_affine"] = json_safe(np.asarray(mean_image_affine, dtype=float))
    return xr.DataArray(values, dims=dims, coords=coords, attrs=attrs, name="signals")
