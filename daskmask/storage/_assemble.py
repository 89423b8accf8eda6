"""Assemble the lazy Dataset that a results store holds, from signals and images.

Nothing here computes the signals or the mean image: they stay dask arrays
that :mod:`daskmask.storage._write` writes in one computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from daskmask.exceptions import DimensionError
from daskmask.storage import _layout as layout
from daskmask.storage._errors import SignalsLayoutError

_AFFINE_ATOL = 1e-6


def assemble(
    X: xr.DataArray,
    *,
    mask_img: Any = None,
    mean_img: Any = None,
    version: str,
    created: str,
) -> xr.Dataset:
    """Return the Dataset to write: signals, mask, mean image, coordinates, root attributes.

    Parameters
    ----------
    X : xarray.DataArray
        Signals with dims ``("time", "voxel")`` or ``("voxel",)``, dask- or
        numpy-backed, with the contract's coordinates and attributes
        (``attrs["mean_image"]`` may hold the lazy mean image).
    mask_img, mean_img : nibabel image or None
        Images that replace the mask rebuilt from ``i, j, k`` and the mean
        image carried by ``X``.
    version, created : str
        The daskmask version and the UTC creation time recorded at the root.

    Returns
    -------
    xarray.Dataset
        Lazy where ``X`` is lazy; signals chunked on a regular grid.

    """
    if not isinstance(X, xr.DataArray):
        raise TypeError(f"save() needs an xarray.DataArray of signals, got {type(X).__name__}.")
    if X.dims not in ((layout.TIME, layout.VOXEL), (layout.VOXEL,)):
        raise SignalsLayoutError(
            f"Signals must have dims ('time', 'voxel') or ('voxel',), got {X.dims}."
        )
    attrs = dict(X.attrs)
    lazy_mean = attrs.pop(layout.MEAN_ATTR, None)
    signal_attrs = layout.json_safe(attrs)

    affine = _resolve_affine(signal_attrs.get("affine"), mask_img)
    mask_shape = _resolve_mask_shape(signal_attrs.get("mask_shape"), mask_img)
    mask, indices = _resolve_mask(X, mask_shape, mask_img)

    signals = X.copy(deep=False)
    signals.attrs = signal_attrs
    signals.name = layout.SIGNALS
    new_coords: dict[str, Any] = {}
    if layout.VOXEL not in signals.coords:
        new_coords[layout.VOXEL] = np.arange(signals.sizes[layout.VOXEL])
    for name, values in zip(layout.INDEX_COORDS, indices, strict=True):
        if name not in signals.coords:
            new_coords[name] = (layout.VOXEL, values.astype(np.int32))
    world = layout.world_coordinates(affine, *indices)
    for name, values in zip(layout.WORLD_COORDS, world, strict=True):
        if name not in signals.coords:
            new_coords[name] = (layout.VOXEL, values)
    signals = signals.assign_coords(new_coords)
    signals = signals.copy(data=_regular_dask(signals.data))
    lazy_coords = {
        name: coord.copy(data=_regular_dask(coord.data))
        for name, coord in signals.coords.items()
        if isinstance(coord.data, da.Array) and name not in signals.dims
    }
    signals = signals.assign_coords(lazy_coords)

    data_vars: dict[str, Any] = {
        layout.SIGNALS: signals,
        layout.MASK: xr.Variable(layout.GRID_DIMS, mask),
    }
    mean = _resolve_mean(
        lazy_mean, mean_img, affine, mask_shape, signal_attrs.get(layout.MEAN_AFFINE_ATTR)
    )
    if mean is not None:
        data_vars[layout.MEAN_IMAGE] = mean
    root = layout.root_attributes(
        signal_attrs, affine=affine, mask_shape=mask_shape, version=version, created=created
    )
    return xr.Dataset(data_vars, attrs=root)


def _resolve_affine(affine: Any, mask_img: Any) -> np.ndarray:
    """Return the 4x4 affine of the mask grid from the signals' attrs or the mask image."""
    from_attrs = None if affine is None else np.asarray(affine, dtype=np.float64)
    if from_attrs is not None and from_attrs.shape != (4, 4):
        raise SignalsLayoutError(f"attrs['affine'] must be 4x4, got shape {from_attrs.shape}.")
    if mask_img is None:
        if from_attrs is None:
            raise SignalsLayoutError(
                "The signals carry no affine (attrs['affine']); pass mask_img to save()."
            )
        return from_attrs
    from_img = np.asarray(mask_img.affine, dtype=np.float64)
    if from_attrs is not None and not np.allclose(from_attrs, from_img, atol=_AFFINE_ATOL):
        raise SignalsLayoutError(
            "mask_img has another affine than the signals (attrs['affine']):\n"
            f"{from_img}\nversus\n{from_attrs}"
        )
    return from_img


def _resolve_mask_shape(shape: Any, mask_img: Any) -> tuple[int, int, int]:
    """Return the mask grid shape from the signals' attrs or the mask image."""
    from_img = None if mask_img is None else tuple(int(n) for n in mask_img.shape)
    if from_img is not None and len(from_img) != 3:
        raise DimensionError(f"mask_img must be a 3D image, got shape {from_img}.")
    if shape is None:
        if from_img is None:
            raise SignalsLayoutError(
                "The signals carry no mask shape (attrs['mask_shape']); pass mask_img to save()."
            )
        return from_img  # type: ignore[return-value]
    from_attrs = tuple(int(n) for n in shape)
    if len(from_attrs) != 3:
        raise SignalsLayoutError(f"attrs['mask_shape'] must have 3 sizes, got {shape}.")
    if from_img is not None and from_img != from_attrs:
        raise SignalsLayoutError(
            f"mask_img has shape {from_img} but the signals' mask_shape is {from_attrs}."
        )
    return from_attrs  # type: ignore[return-value]


def _resolve_mask(
    X: xr.DataArray, shape: Sequence[int], mask_img: Any
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Return the uint8 mask and the voxel indices ``i, j, k``, checked against each other."""
    n_voxel = X.sizes[layout.VOXEL]
    have = [name in X.coords for name in layout.INDEX_COORDS]
    if any(have) and not all(have):
        raise SignalsLayoutError("The signals have some but not all of the coordinates i, j, k.")
    if all(have):
        indices = tuple(np.asarray(X.coords[name].values) for name in layout.INDEX_COORDS)
        try:
            rebuilt = layout.mask_from_indices(*indices, shape)
        except ValueError as error:
            raise SignalsLayoutError(f"Invalid voxel coordinates i, j, k: {error}") from None
        if mask_img is None:
            mask = rebuilt
        else:
            mask = (np.asarray(mask_img.dataobj) != 0).astype(np.uint8)
            if not np.array_equal(mask, rebuilt):
                raise SignalsLayoutError(
                    "mask_img does not select the voxels of the signals (coordinates i, j, k)."
                )
    elif mask_img is not None:
        mask = (np.asarray(mask_img.dataobj) != 0).astype(np.uint8)
        indices = np.nonzero(mask)
    else:
        raise SignalsLayoutError(
            "The signals have no voxel coordinates i, j, k; pass mask_img to save()."
        )
    if int(mask.sum()) != n_voxel:
        raise SignalsLayoutError(
            f"The mask has {int(mask.sum())} voxels but the signals have {n_voxel}."
        )
    return mask, indices  # type: ignore[return-value]


def _regular_dask(data: Any) -> da.Array:
    """Return ``data`` as a dask array whose chunks fit a regular Zarr chunk grid."""
    if not isinstance(data, da.Array):
        array = np.asarray(data)
        return da.from_array(array, chunks=layout.plan_chunks(array.shape, array.itemsize))
    if layout.regular_chunks(data.chunks) is None:
        return data.rechunk(tuple(sizes[0] for sizes in data.chunks))
    return data


def _resolve_mean(
    lazy_mean: Any,
    mean_img: Any,
    affine: np.ndarray,
    mask_shape: Sequence[int],
    lazy_mean_affine: Any = None,
) -> xr.Variable | None:
    """Return the float32 mean image variable (one chunk), or None when unknown.

    ``lazy_mean_affine`` (``attrs["mean_image_affine"]``) places a lazy mean
    that lives on the input's grid rather than on the mask's.
    """
    if mean_img is not None:
        data: Any = np.asarray(mean_img.get_fdata(dtype=np.float32))
        mean_affine = np.asarray(mean_img.affine, dtype=np.float64)
    elif lazy_mean is not None:
        data = lazy_mean if isinstance(lazy_mean, da.Array) else np.asarray(lazy_mean)
        known_affine = lazy_mean_affine is not None
        mean_affine = np.asarray(lazy_mean_affine, dtype=np.float64) if known_affine else affine
        if not known_affine and tuple(data.shape) != tuple(mask_shape):
            raise SignalsLayoutError(
                f"attrs['mean_image'] has shape {tuple(data.shape)}, not the mask shape "
                f"{tuple(mask_shape)}, and its affine is unknown; pass mean_img to save()."
            )
    else:
        return None
    if data.ndim != 3:
        raise DimensionError(f"The mean image must be 3D, got shape {tuple(data.shape)}.")
    if isinstance(data, da.Array):
        data = data.astype(np.float32).rechunk(data.shape)
    else:
        data = data.astype(np.float32, copy=False)
    same_grid = tuple(data.shape) == tuple(mask_shape) and np.allclose(
        mean_affine, affine, atol=_AFFINE_ATOL
    )
    dims = layout.GRID_DIMS if same_grid else layout.MEAN_DIMS
    return xr.Variable(dims, data, attrs={"affine": layout.json_safe(mean_affine)})
