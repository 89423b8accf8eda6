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
from dataclasses import dataclass, replace
from typing import Any, Literal

import nibabel as nib
import numpy as np
import xarray as xr
from scipy import ndimage

__all__ = [
    "Grid3D",
    "find_cut_coords",
    "find_xyz_cut_coords",
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
    support : tuple of numpy.ndarray or None
        World box ``(low, high)`` (mm) of the non-zero voxels (their whole extent) of the
        image this grid was resampled from (an oblique image), None otherwise. Interpolation
        leaves faint non-zero values (spline ringing) all around the data, up to the
        corners of the resampled box: :meth:`cropped` keeps to this box instead.

    """

    data: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    support: tuple[np.ndarray, np.ndarray] | None = None

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

    def cropped(self) -> Grid3D:
        """Return the smallest box holding the data (itself when all values are zero).

        Displays show this box: the data's own bounding box in world space, so
        that the brain fills its views. It holds every non-zero value, within
        :attr:`support` when the grid was resampled from an
        oblique image (whose empty corners and interpolation ringing would
        otherwise only shrink the brain in its views).
        """
        values = np.nan_to_num(np.asarray(self.data, dtype=float))
        nonzero = np.nonzero(values)
        if nonzero[0].size == 0:
            return self
        low = np.array([int(index.min()) for index in nonzero])
        high = np.array([int(index.max()) + 1 for index in nonzero])
        if self.support is not None:
            # The voxels whose centres lie in the source's non-zero box.
            near = np.ceil((self.support[0] - self.origin) / self.spacing)
            far = np.floor((self.support[1] - self.origin) / self.spacing) + 1
            inner_low, inner_high = np.maximum(low, near), np.minimum(high, far)
            if np.all(inner_high > inner_low):
                low, high = inner_low.astype(int), inner_high.astype(int)
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        return Grid3D(self.data[box], self.origin + self.spacing * low, self.spacing)


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
        return replace(to_grid(resampled, interpolation), support=_support_box(data, affine))
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


def _support_box(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """World box (low, high) of the non-zero voxels of an image, None when all are zero.

    The box of the voxel centres (every non-zero centre mapped: the corners of the index
    box would overestimate it for a rotated affine), widened by the half-extent of one
    voxel along each world axis, so that it holds the whole of every voxel.
    """
    nonzero = np.argwhere(np.nan_to_num(np.asarray(data, dtype=float)) != 0)
    if nonzero.size == 0:
        return None
    world = nib.affines.apply_affine(affine, nonzero)
    half_voxel = np.abs(affine[:3, :3]).sum(axis=1) / 2
    return world.min(axis=0) - half_voxel, world.max(axis=0) + half_voxel


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _low_percentile(values: np.ndarray, percent: float) -> float:
    """Return the value at rank ``int(n * percent / 100)`` of ``values`` (no interpolation).

    The cut finder ranks rather than interpolates so that its threshold is
    one of the values, as nilearn's ``fast_abs_percentile`` does.
    """
    rank = min(int(values.size * percent / 100), values.size - 1)
    return float(np.partition(values, rank)[rank])


def _cut_voxel(data: np.ndarray) -> np.ndarray:
    """Fractional voxel index of a good cut through ``data`` (nilearn's choice).

    Magnitudes count, whatever the sign. The voxels above the 80th
    percentile of the non-zero magnitudes are kept, then their largest
    connected component; within it, when more than 50 voxels exceed the
    magnitude of the component's mean, only the largest connected part of
    those is kept. The cut goes through the centre of mass of what remains,
    weighted by the magnitudes. An empty volume is cut through its centre.
    """
    values = np.nan_to_num(np.asarray(data, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    magnitude = np.abs(values)
    nonzero = magnitude[magnitude != 0]
    if nonzero.size == 0:
        return (np.asarray(values.shape, dtype=float) - 1) / 2
    # Strictly above the threshold (give or take two float64 epsilons, an
    # absolute margin): voxels tied at the threshold are left out, as nilearn does.
    threshold = _low_percentile(nonzero, 80) - 2 * np.finfo(np.float64).eps
    region = _largest_component(magnitude > threshold)
    kept = values * region
    second = np.abs(kept) > abs(kept[region].mean())
    if second.sum() > 50:
        kept = kept * _largest_component(second)
    return np.asarray(ndimage.center_of_mass(np.abs(kept)), dtype=float)


def find_xyz_cut_coords(img: nib.spatialimages.SpatialImage) -> tuple[float, float, float]:
    """World coordinates (mm) of a good cut through a 3-D image, in its own voxel grid.

    The same coordinates as ``nilearn.plotting.find_xyz_cut_coords`` for the
    same image: found on the image's voxels (before any resampling for
    display) and mapped to the world by its affine. See :func:`find_cut_coords`
    for the rule.

    Parameters
    ----------
    img : nibabel image
        A 3-D image (a trailing axis of length 1 is dropped).

    Returns
    -------
    tuple of 3 float
        x, y, z in millimetres.

    """
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    voxel = _cut_voxel(data)
    world = nib.affines.apply_affine(np.asarray(img.affine, dtype=float), voxel)
    return tuple(float(v) for v in world)


def find_cut_coords(grid: Grid3D) -> tuple[float, float, float]:
    """World coordinates of a good cut through a volume on a world grid.

    The rule is nilearn's: keep the strongest 20 % of the non-zero
    magnitudes (all the voxels of a binary mask), take their largest connected
    component, keep within it the largest connected part above the
    component's mean when it has more than 50 voxels, and cut through the
    centre of mass of what remains. An empty volume is cut through its
    centre. Use :func:`find_xyz_cut_coords` on the original image of an
    oblique volume: the resampled grid gives slightly different numbers.

    Parameters
    ----------
    grid : Grid3D
        The volume.

    Returns
    -------
    tuple of 3 float
        x, y, z in millimetres.

    """
    return tuple(float(v) for v in grid.voxel_to_world(_cut_voxel(grid.data)))
