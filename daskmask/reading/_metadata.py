"""Turn nibabel headers into the coordinates and attributes of a NIfTI DataArray."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr

#: Dimension names by number of dimensions; a 4D image is ``(x, y, z, time)``.
SPATIAL_DIMS = ("x", "y", "z")
TIME_DIM = "time"

#: Seconds per unit of the NIfTI ``xyzt_units`` time codes.
_SECONDS_PER_TIME_UNIT = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}

#: A repetition time above this many "seconds" is taken to be in milliseconds.
#: Old FSL versions wrote the TR in ms while labelling it seconds (nibabel's own
#: example4d.nii.gz has ``pixdim[4] = 2000`` with unit "sec"); no fMRI
#: acquisition has a TR of minutes.
_IMPLAUSIBLE_TR_SECONDS = 100.0

#: A time coordinate of more volumes than this is a lazy index (computed on
#: access) instead of an array: a header may claim 2**31 volumes, whose
#: coordinate alone would take 16 GB; real runs hold far fewer.
EAGER_TIME_VALUES = 1 << 20

#: File name endings stripped to name the DataArray after the image.
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".hdr.gz", ".img.gz", ".hdr", ".img", ".gz")


def dims_for(ndim: int) -> tuple[str, ...]:
    """Return the dimension names of an array with ``ndim`` dimensions.

    Parameters
    ----------
    ndim : int
        1 to 4.

    Returns
    -------
    tuple of str
        ``("x", "y", "z", "time")`` truncated to ``ndim``; 3 or fewer
        dimensions are all spatial.

    """
    return (*SPATIAL_DIMS, TIME_DIM)[:ndim]


def nifti_version(header: Any) -> int | None:
    """Return 2 for NIfTI-2 headers, 1 for NIfTI-1, None for other formats."""
    if isinstance(header, nib.Nifti2Header):
        return 2
    if isinstance(header, nib.Nifti1Header):
        return 1
    return None


def header_units(header: Any) -> tuple[str, str]:
    """Return the ``(xyz_units, time_units)`` strings of a header.

    Headers without unit fields (Analyze, MGH, ...) give ``("unknown", "unknown")``.
    """
    if hasattr(header, "get_xyzt_units"):
        xyz_units, time_units = header.get_xyzt_units()
        return str(xyz_units), str(time_units)
    return "unknown", "unknown"


def repetition_time(header: Any, ndim: int) -> float | None:
    """Return the repetition time in seconds, or None when the header has none.

    Parameters
    ----------
    header : nibabel header
        The image header; only NIfTI headers carry units.
    ndim : int
        Number of dimensions of the (squeezed) image; 3D and smaller images
        have no repetition time.

    Returns
    -------
    float or None
        ``pixdim[4]`` converted to seconds from the header's time unit, or None
        when the image is not 4D, the field is missing, zero or not finite.

    Notes
    -----
    A value above 100 labelled "sec" or "unknown" is read as milliseconds:
    old FSL versions wrote the TR in ms with the unit "sec" (nibabel's
    ``example4d.nii.gz`` stores 2000 with unit "sec", a 2 s TR). nibabel and
    nilearn take the number as given.

    """
    if ndim < 4 or not hasattr(header, "get_zooms"):
        return None
    zooms = header.get_zooms()
    if len(zooms) < 4:
        return None
    raw = float(zooms[3])
    if not np.isfinite(raw) or raw <= 0:
        return None
    time_units = header_units(header)[1]
    if time_units in _SECONDS_PER_TIME_UNIT and time_units != "sec":
        return raw * _SECONDS_PER_TIME_UNIT[time_units]
    if raw > _IMPLAUSIBLE_TR_SECONDS:
        return raw * _SECONDS_PER_TIME_UNIT["msec"]
    return raw


def image_stem(path: str | os.PathLike[str]) -> str:
    """Return a file name without directory and image suffixes.

    ``"/data/sub-01_task-rest_bold.nii.gz"`` gives ``"sub-01_task-rest_bold"``.
    """
    name = os.path.basename(os.fspath(path))
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def build_coords(shape: tuple[int, ...], t_r: float | None) -> xr.Coordinates:
    """Return integer voxel coordinates and a time coordinate in seconds.

    Every coordinate is cheap whatever the header claims: voxel indices are
    :class:`pandas.RangeIndex` (no array), and a time axis longer than
    :data:`EAGER_TIME_VALUES` volumes is a lazy
    :class:`xarray.indexes.RangeIndex` (when the installed xarray has one)
    whose values ``i * t_r`` equal those of the array built for shorter runs.

    Parameters
    ----------
    shape : tuple of int
        Array shape, 1 to 4 dimensions.
    t_r : float or None
        Repetition time in seconds; without it time is the volume index.

    Returns
    -------
    xarray.Coordinates
        One coordinate per dimension.

    """
    plain: dict[str, Any] = {}
    lazy = None
    for dim, size in zip(dims_for(len(shape)), shape, strict=True):
        if dim == TIME_DIM and t_r is not None:
            lazy = _lazy_time_index(size, t_r)
            if lazy is None:
                plain[dim] = np.arange(size, dtype=np.float64) * t_r
        else:
            plain[dim] = pd.RangeIndex(size, name=dim)
    coords = xr.Coordinates(plain)
    if lazy is None:
        return coords
    return coords.merge(xr.Coordinates.from_xindex(lazy)).coords


def _lazy_time_index(size: int, t_r: float) -> Any:
    """Return a lazy ``i * t_r`` time index for a long axis, or None (short, old xarray)."""
    if size <= EAGER_TIME_VALUES:
        return None
    try:
        from xarray.indexes import RangeIndex
        from xarray.indexes.range_index import RangeCoordinateTransform

        # ``step`` given as is, so that values are exactly ``i * t_r``.
        transform = RangeCoordinateTransform(
            0.0, size * t_r, size, TIME_DIM, TIME_DIM, step=float(t_r)
        )
    except (ImportError, TypeError):  # pragma: no cover - xarray before 2025.06 / GH11325
        return None
    return RangeIndex(transform)


def header_metadata(header: Any, ndim: int) -> dict[str, Any]:
    """Return the header-derived attributes of an image.

    Parameters
    ----------
    header : nibabel header
        The image header.
    ndim : int
        Number of dimensions of the (squeezed) image.

    Returns
    -------
    dict
        ``t_r`` (seconds or None), ``xyz_units``, ``time_units`` and
        ``nifti_version`` (1, 2 or None).

    """
    xyz_units, time_units = header_units(header)
    return {
        "t_r": repetition_time(header, ndim),
        "xyz_units": xyz_units,
        "time_units": time_units,
        "nifti_version": nifti_version(header),
    }


def build_attrs(
    metadata: dict[str, Any],
    affine: np.ndarray,
    source: str | Sequence[str],
    on_disk_dtype: np.dtype,
) -> dict[str, Any]:
    """Return the DataArray attributes describing a NIfTI image.

    Parameters
    ----------
    metadata : dict
        What :func:`header_metadata` returns for the (first) image.
    affine : numpy.ndarray
        The image affine as nibabel gives it.
    source : str or sequence of str
        Path(s) the data come from, or a placeholder for in-memory images.
    on_disk_dtype : numpy.dtype
        Data type stored in the file, before scaling.

    Returns
    -------
    dict
        ``affine``, ``t_r``, ``xyz_units``, ``time_units``, ``source``,
        ``nifti_version`` and ``on_disk_dtype``.

    """
    return {
        "affine": np.array(affine, dtype=np.float64),
        "t_r": metadata["t_r"],
        "xyz_units": metadata["xyz_units"],
        "time_units": metadata["time_units"],
        "source": source if isinstance(source, str) else list(source),
        "nifti_version": metadata["nifti_version"],
        "on_disk_dtype": str(np.dtype(on_disk_dtype)),
    }
