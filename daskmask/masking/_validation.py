"""Validation of user masks and of mask-function parameters."""

from __future__ import annotations

import os
from typing import Any

import nibabel as nib
import numpy as np
import xarray as xr

from daskmask._warnings import warn_user
from daskmask.exceptions import DimensionError
from daskmask.image.resampling import _as_nibabel, new_img_like

__all__ = [
    "binarize_mask_img",
    "check_morphology_parameters",
    "check_parameter_type",
    "load_mask_img",
]

_DOC_URL = "https://nilearn.github.io/stable/manipulating_images/input_output.html"


def check_parameter_type(
    value: Any, allowed: tuple[type, ...], name: str, accept_bool: bool = False
) -> None:
    """Raise ``TypeError`` unless ``value`` is an instance of ``allowed``.

    Booleans are refused unless ``accept_bool`` (``True`` is an ``int`` in
    Python, but ``opening=True`` and ``border_size=True`` mean different
    things), as in nilearn.

    Parameters
    ----------
    value : object
        Parameter value.
    allowed : tuple of type
        Accepted types.
    name : str
        Parameter name, for the message.
    accept_bool : bool, default=False
        Whether booleans are accepted.

    """
    if (isinstance(value, bool) and not accept_bool) or not isinstance(value, allowed):
        names = ", ".join(
            t.__module__ + "." + t.__qualname__ if t.__module__ != "builtins" else t.__qualname__
            for t in allowed
        )
        raise TypeError(f"'{name}' must be of type(s): '{names}'.\nGot: '{type(value).__name__}'")


def check_morphology_parameters(connected: Any, opening: Any) -> None:
    """Check the types of the clean-up parameters shared by the mask functions.

    Parameters
    ----------
    connected : object
        Must be a bool.
    opening : object
        Must be a bool or an int (the order of the opening).

    Raises
    ------
    TypeError
        For a parameter of the wrong type.

    """
    check_parameter_type(connected, (bool,), "connected", accept_bool=True)
    check_parameter_type(opening, (bool, int, np.integer), "opening", accept_bool=True)


def _is_image_like(img: Any) -> bool:
    return isinstance(img, (str, os.PathLike, nib.spatialimages.SpatialImage, xr.DataArray))


def _load_image_data(img: Any) -> tuple[np.ndarray, np.ndarray, nib.spatialimages.SpatialImage]:
    image = _as_nibabel(img)
    return np.asanyarray(image.dataobj), np.asarray(image.affine), image


def _replace_non_finite(data: np.ndarray, announce: bool) -> np.ndarray:
    if data.dtype.kind in "biu":
        return data
    non_finite = ~np.isfinite(data)
    if non_finite.any():
        if announce:
            warn_user(
                "Non-finite values detected. These values will be replaced with zeros.",
            )
        data = np.where(non_finite, 0, data)
    return data


def binarize_mask_img(mask_img: Any) -> nib.Nifti1Image:
    """Turn a user mask into a 3-D uint8 0/1 image, as nilearn's maskers do.

    Non-zero voxels are in the mask (so label images and probability maps
    become their support). A 4-D mask keeps the voxels non-zero in every
    volume. NaN and infinite values count as 0, with a warning.

    Parameters
    ----------
    mask_img : path, nibabel image or xarray.DataArray
        3-D or 4-D mask.

    Returns
    -------
    nibabel.Nifti1Image
        3-D uint8 image with the mask's affine and header.

    Raises
    ------
    TypeError
        If ``mask_img`` is not an image.
    daskmask.exceptions.DimensionError
        If the mask is not 3-D or 4-D.

    Warns
    -----
    UserWarning
        "Non-finite values detected. These values will be replaced with zeros."

    """
    if not _is_image_like(mask_img):
        raise TypeError(
            "'mask_img' should be a 3D/4D image (path, nibabel image or DataArray). "
            f"Got {type(mask_img).__name__}."
        )
    data, affine, image = _load_image_data(mask_img)
    if data.ndim == 3:
        data = data[..., np.newaxis]
    if data.ndim != 4:
        raise DimensionError(
            "Input data has incompatible dimensionality: Expected dimension is 4D and you "
            f"provided a {data.ndim}D image. See {_DOC_URL}."
        )
    data = _replace_non_finite(data, announce=True)
    mask = data.astype(bool).all(axis=3)
    return new_img_like(image, mask, affine)


def load_mask_img(mask_img: Any, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Check that an image is a valid binary mask and return it as booleans.

    Parameters
    ----------
    mask_img : path, nibabel image or xarray.DataArray
        3-D mask (a 4-D image with a single volume is accepted) with at most
        two values, one of them 0.
    allow_empty : bool, default=False
        Accept a mask without any non-zero voxel.

    Returns
    -------
    mask : numpy.ndarray
        3-D boolean array.
    affine : numpy.ndarray
        4x4 affine of the mask.

    Raises
    ------
    TypeError
        If ``mask_img`` is not an image.
    daskmask.exceptions.DimensionError
        If the mask is not 3-D.
    ValueError
        If the mask is empty (and ``allow_empty`` is False), has two values
        none of which is 0, or has more than two values.

    Warns
    -----
    UserWarning
        When non-finite values are replaced by zeros.

    """
    if not _is_image_like(mask_img):
        raise TypeError(
            "'img' should be a 3D/4D Niimg-like object or a SurfaceImage. "
            f"Got {type(mask_img).__name__}."
        )
    data, affine, _ = _load_image_data(mask_img)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DimensionError(
            "Input data has incompatible dimensionality: Expected dimension is 3D and you "
            f"provided a {data.ndim}D image. See {_DOC_URL}."
        )
    data = _replace_non_finite(data, announce=True)
    values = np.unique(data)
    if len(values) == 1:
        if values[0] == 0 and not allow_empty:
            raise ValueError("The mask is invalid as it is empty: it masks all data.")
    elif len(values) == 2:
        if 0 not in values:
            raise ValueError(
                "Background of the mask must be represented with 0. "
                f"Given mask contains: {values}."
            )
    else:
        raise ValueError(
            f"Given mask is not made of 2 values: {values}. Cannot interpret as true or false."
        )
    return data.astype(bool), affine
