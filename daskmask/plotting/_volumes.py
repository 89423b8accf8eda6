"""Read only what a figure shows, and put volumes on axis-aligned world grids.

A plot never loads a whole 4-D run: :func:`load_volume` reduces it to the
one 3-D volume that is drawn (its mean, computed lazily by
:func:`daskmask.mean_img`, or a single volume read alone). :class:`Grid3D`
holds a 3-D volume whose axes follow the world axes x, y, z with positive
spacing, so each view is a plain ``imshow`` in millimetres; oblique images are
resampled onto such a grid first.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import nibabel as nib
import numpy as np
import xarray as xr
from scipy import ndimage

__all__ = [
    "Grid3D",
    "find_cut_coords",
    "load_volume",
    "to_grid",
]

Reduction = Literal["mean", "middle", "first"]

#: Relative size under which an off-diagonal affine entry counts as zero.
_OBLIQUE_TOLERANCE = 1e-6


def _dataarray_to_nifti(volume: xr.DataArray) -> nib.Nifti1Image:
    data = np.asarray(volume.compute().values)
    return nib.Nifti1Image(data, np.asarray(volume.attrs["affine"], dtype=float))


def load_volume(img: Any, reduce: Reduction = "mean") -> nib.Nifti1Image:
    """Return the 3-D volume of ``img`` that a figure shows, reading only it.

    Parameters
    ----------
    img : path, nibabel image, xarray.DataArray or list of them
        A 3-D or 4-D image (anything :func:`daskmask.open_nifti` opens).
    reduce : {"mean", "middle", "first"}, default="mean"
        What a 4-D input becomes: its mean over time (one lazy reduction by
        :func:`daskmask.mean_img`), its middle volume ``t // 2`` or its first
        volume, each read alone.

    Returns
    -------
    nibabel.Nifti1Image
        A 3-D image in memory.

    Raises
    ------
    ValueError
        For an unknown ``reduce`` or an image that is not 3-D or 4-D.

    """
    if reduce not in ("mean", "middle", "first"):
        raise ValueError(f"reduce must be 'mean', 'middle' or 'first', got {reduce!r}")
    if isinstance(img, nib.spatialimages.SpatialImage) and len(img.shape) == 3:
        return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    if isinstance(img, xr.DataArray):
        run = img
    else:
        from daskmask.reading import open_nifti

        if isinstance(img, str | os.PathLike):
            img = os.fspath(img)
        run = open_nifti(img)
    if run.ndim == 3:
        return _dataarray_to_nifti(run)
    if run.ndim != 4:
        raise ValueError(f"Expected a 3D or 4D image, got {run.ndim} dimensions")
    if reduce == "mean":
        from daskmask.masking import mean_img

        return mean_img(run)
    index = run.sizes["time"] // 2 if reduce == "middle" else 0
    return _dataarray_to_nifti(run.isel(time=index))


@dataclass(frozen=True)
class Grid3D:
    """A 3-D volume whose array axes are the world axes x, y, z.

    Attributes
    ----------
    data : numpy.ndarray
        Values, shape ``(nx, ny, nz)``; index 0 is the lowest coordinate.
    origin : numpy.ndarray
        World coordinates (mm) of voxel ``(0, 0, 0)``.
    spacing : numpy.ndarray
        Positive voxel sizes (mm) along x, y, z.

    """

    data: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray

    def coords(self, axis: int) -> np.ndarray:
        """World coordinates of the voxel centres along ``axis``."""
        return self.origin[axis] + self.spacing[axis] * np.arange(self.data.shape[axis])

    def extent(self, axis: int) -> tuple[float, float]:
        """World coordinates of the outer voxel edges along ``axis``."""
        half = self.spacing[axis] / 2
        coords = self.coords(axis)
        return float(coords[0] - half), float(coords[-1] + half)

    def index(self, axis: int, value: float) -> int | None:
        """Index of the slice nearest to world ``value``, None when outside."""
        position = int(np.round((value - self.origin[axis]) / self.spacing[axis]))
        if 0 <= position < self.data.shape[axis]:
            return position
        return None

    def section(self, axis: int, value: float) -> np.ndarray | None:
        """Return the 2-D slice at world ``value`` across ``axis`` (None when outside)."""
        position = self.index(axis, value)
        if position is None:
            return None
        return np.take(self.data, position, axis=axis)

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """World coordinates of (fractional) voxel indices."""
        return self.origin + self.spacing * np.asarray(ijk, dtype=float)


def _axis_permutation(linear: np.ndarray) -> list[int] | None:
    """For each world axis, the voxel axis along it (None when oblique)."""
    scale = np.abs(linear).max()
    order = []
    for row in range(3):
        column = int(np.argmax(np.abs(linear[row])))
        others = np.delete(np.abs(linear[row]), column)
        if others.max(initial=0.0) > _OBLIQUE_TOLERANCE * scale:
            return None
        order.append(column)
    return order if sorted(order) == [0, 1, 2] else None


def to_grid(img: nib.spatialimages.SpatialImage, interpolation: str = "continuous") -> Grid3D:
    """Put a 3-D image on an axis-aligned world grid.

    Images whose affine only permutes and flips axes are reordered exactly;
    oblique images are resampled (``interpolation``) onto a grid with the
    same voxel sizes aligned with the world axes.

    Parameters
    ----------
    img : nibabel image
        A 3-D image (a trailing axis of length 1 is dropped).
    interpolation : {"continuous", "linear", "nearest"}, default="continuous"
        Used only for oblique images; use "nearest" for masks.

    Returns
    -------
    Grid3D
        The volume in world orientation.

    """
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"Expected a 3D image, got shape {data.shape}")
    affine = np.asarray(img.affine, dtype=float)
    order = _axis_permutation(affine[:3, :3])
    if order is None:
        from daskmask.image import resample_img

        sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        source = nib.Nifti1Image(data, affine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resampled = resample_img(
                source,
                target_affine=np.diag([sizes.min()] * 3),
                interpolation=interpolation,
                copy=False,
            )
        return to_grid(resampled, interpolation)
    data = np.transpose(data, order)
    origin = np.empty(3)
    spacing = np.empty(3)
    for axis, column in enumerate(order):
        step = affine[axis, column]
        spacing[axis] = abs(step)
        if step < 0:
            data = np.flip(data, axis=axis)
            origin[axis] = affine[axis, 3] + step * (img.shape[column] - 1)
        else:
            origin[axis] = affine[axis, 3]
    return Grid3D(np.ascontiguousarray(data), origin, spacing)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def find_cut_coords(grid: Grid3D) -> tuple[float, float, float]:
    """World coordinates of a good cut through a volume.

    The strongest 20 % of the non-zero values (all the voxels of a binary
    mask) are kept, their largest connected component is taken and the cut
    goes through its centre of mass (weighted by the absolute values). An
    empty volume is cut through its centre.

    Parameters
    ----------
    grid : Grid3D
        The volume.

    Returns
    -------
    tuple of 3 float
        x, y, z in millimetres.

    """
    values = np.abs(np.nan_to_num(np.asarray(grid.data, dtype=float)))
    nonzero = values[values > 0]
    if nonzero.size == 0:
        centre = (np.asarray(values.shape) - 1) / 2
        return tuple(float(v) for v in grid.voxel_to_world(centre))
    threshold = np.percentile(nonzero, 80)
    region = _largest_component(values >= threshold)
    centre = ndimage.center_of_mass(values * region)
    return tuple(float(v) for v in grid.voxel_to_world(np.asarray(centre)))
