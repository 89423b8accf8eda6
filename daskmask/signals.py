"""The signals DataArray: the one contract between who makes signals and who uses them.

``NiftiMasker.transform`` makes it (:func:`signals_dataarray`); ``save``,
``inverse_transform``, reports and plots use it (:func:`check_signals`). Its
layout, written here once:

* name ``"signals"`` (:data:`NAME`);
* dims ``("time", "voxel")`` (:data:`DIMS`), or ``("voxel",)`` for a single
  volume (:data:`VOLUME_DIMS`);
* coordinates along ``voxel``: ``i, j, k`` (:data:`INDEX_COORDS`, int32 voxel
  indices on the mask grid, in C order of ``np.nonzero(mask)``: nilearn's
  feature order) and ``x, y, z`` (:data:`WORLD_COORDS`, world millimetres);
  ``voxel`` and ``time`` index coordinates;
* JSON attributes :data:`JSON_ATTRS`: ``affine`` (4x4 of the mask grid),
  ``mask_shape``, ``masker_params``, ``provenance``, ``daskmask_version``;
* optionally the lazy mean image of the input over time in
  ``attrs["mean_image"]`` (:data:`MEAN_ATTR`, not JSON: a dask or numpy
  array) with its grid's affine in ``attrs["mean_image_affine"]``
  (:data:`MEAN_AFFINE_ATTR`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from daskmask._json import json_safe
from daskmask._version import __version__
from daskmask.exceptions import DimensionError

#: Name of the DataArray (and of its array in a results store).
NAME = "signals"
#: Time dimension.
TIME = "time"
#: Voxel dimension.
VOXEL = "voxel"
#: Dimensions of the signals of a run.
DIMS = (TIME, VOXEL)
#: Dimensions of the signals of a single volume.
VOLUME_DIMS = (VOXEL,)
#: Voxel indices on the mask grid, along ``voxel``.
INDEX_COORDS = ("i", "j", "k")
#: World coordinates (mm) of the voxels, along ``voxel``.
WORLD_COORDS = ("x", "y", "z")
#: Attributes that are JSON (and stored as such).
JSON_ATTRS = ("affine", "mask_shape", "masker_params", "provenance", "daskmask_version")
#: The lazy, non-JSON attribute that carries the mean image of the input.
MEAN_ATTR = "mean_image"
#: Affine of the mean image's grid (the input's).
MEAN_AFFINE_ATTR = "mean_image_affine"

__all__ = [
    "DIMS",
    "INDEX_COORDS",
    "JSON_ATTRS",
    "MEAN_AFFINE_ATTR",
    "MEAN_ATTR",
    "NAME",
    "TIME",
    "VOLUME_DIMS",
    "VOXEL",
    "WORLD_COORDS",
    "check_signals",
    "signals_dataarray",
]


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
        Named :data:`NAME`, laid out as the module docstring says.

    """
    i, j, k = (index.astype(np.int32) for index in np.nonzero(mask))
    world = nib.affines.apply_affine(affine, np.column_stack([i, j, k]))
    coords: dict[str, Any] = {VOXEL: np.arange(i.size)}
    for name, values_along in zip(INDEX_COORDS, (i, j, k), strict=True):
        coords[name] = (VOXEL, values_along)
    for axis, name in enumerate(WORLD_COORDS):
        coords[name] = (VOXEL, world[:, axis])
    dims: tuple[str, ...] = VOLUME_DIMS
    if values.ndim == 2:
        dims = DIMS
        coords[TIME] = np.arange(values.shape[0]) if time is None else np.asarray(time)
    attrs: dict[str, Any] = {
        "affine": json_safe(np.asarray(affine, dtype=float)),
        "mask_shape": [int(n) for n in mask.shape],
        "masker_params": json_safe(masker_params or {}),
        "provenance": json_safe(provenance or {}),
        "daskmask_version": __version__,
    }
    if mean_image is not None:
        attrs[MEAN_ATTR] = mean_image
        if mean_image_affine is not None:
            attrs[MEAN_AFFINE_ATTR] = json_safe(np.asarray(mean_image_affine, dtype=float))
    return xr.DataArray(values, dims=dims, coords=coords, attrs=attrs, name=NAME)


def check_signals(signals: xr.DataArray, *, require_attrs: bool = False) -> xr.DataArray:
    """Check that ``signals`` follows the contract; return it unchanged.

    Parameters
    ----------
    signals : xarray.DataArray
        Signals, e.g. from ``NiftiMasker.transform`` or ``open_results``.
    require_attrs : bool, default=False
        Also require ``affine`` (4x4) and ``mask_shape`` (3 sizes) in the
        attributes (what a consumer needs that has no ``mask_img``).

    Returns
    -------
    xarray.DataArray
        ``signals``.

    Raises
    ------
    DimensionError
        If the dims are neither :data:`DIMS` nor :data:`VOLUME_DIMS`, a voxel
        coordinate is missing or lies along another dim, or a required
        attribute is missing or malformed. The message says what to pass.

    """
    if not isinstance(signals, xr.DataArray):
        raise DimensionError(
            f"Signals must be an xarray.DataArray as NiftiMasker.transform returns; got "
            f"{type(signals).__name__}."
        )
    if tuple(signals.dims) not in (DIMS, VOLUME_DIMS):
        raise DimensionError(
            f"Signals must have dims {DIMS} or {VOLUME_DIMS}, got {tuple(signals.dims)}. "
            "Rename or transpose them (DataArray.rename / .transpose)."
        )
    for name in (*INDEX_COORDS, *WORLD_COORDS):
        if name in signals.coords and signals.coords[name].dims != (VOXEL,):
            raise DimensionError(
                f"Coordinate '{name}' of the signals must lie along '{VOXEL}'; it has dims "
                f"{signals.coords[name].dims}."
            )
    if require_attrs:
        _check_attrs(signals.attrs)
    return signals


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    """Require a 4x4 ``affine`` and a 3-size ``mask_shape``."""
    try:
        affine = np.asarray(attrs.get("affine"), dtype=float)
    except (TypeError, ValueError):
        affine = np.empty(0)
    if affine.shape != (4, 4):
        raise DimensionError(
            "The signals carry no 4x4 affine of their mask grid (attrs['affine']); pass "
            "the mask image (mask_img=) or use signals from NiftiMasker.transform."
        )
    shape = attrs.get("mask_shape")
    if (
        not isinstance(shape, list | tuple)
        or len(shape) != 3
        or not all(isinstance(n, int | np.integer) and n > 0 for n in shape)
    ):
        raise DimensionError(
            f"attrs['mask_shape'] of the signals must be 3 positive sizes, got {shape!r}; "
            "pass the mask image (mask_img=) or use signals from NiftiMasker.transform."
        )
