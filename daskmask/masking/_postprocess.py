"""Morphological clean-up shared by every mask strategy."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, label

from daskmask._warnings import warn_user
from daskmask.exceptions import MaskWarning


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 6-connected component of a binary volume.

    Parameters
    ----------
    mask : numpy.ndarray
        Non-empty 3-D array; non-zero voxels are foreground.

    Returns
    -------
    numpy.ndarray
        Boolean array with the largest component only (the lowest label wins
        ties).

    Raises
    ------
    ValueError
        If ``mask`` has no foreground voxel.

    """
    # scipy.ndimage.label cannot read non-native byte orders.
    mask = np.asarray(mask)
    if not mask.dtype.isnative:
        mask = mask.astype(mask.dtype.newbyteorder("="))
    labels, n_components = label(mask)
    if n_components == 0:
        raise ValueError("No non-zero values: no connected components")
    if n_components == 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # the background is not a component
    return labels == sizes.argmax()


def post_process_mask(
    mask: np.ndarray,
    opening: bool | int = 2,
    connected: bool = True,
    warning_msg: str = "",
) -> np.ndarray:
    """Open a raw mask, keep its largest component, then close it.

    The order is: erosion by ``n = int(opening)`` voxels, largest connected
    component (if ``connected``), dilation by ``2n``, erosion by ``n``. All
    morphology uses the 6-connected cross and treats the outside as empty.

    Parameters
    ----------
    mask : numpy.ndarray
        3-D boolean (or 0/1) array.
    opening : bool or int, default=2
        Order of the morphological opening; ``False``/0 skips it.
    connected : bool, default=True
        Keep only the largest connected component.
    warning_msg : str, default=""
        Strategy-specific advice appended to the empty-mask warning.

    Returns
    -------
    numpy.ndarray
        The processed mask (boolean, or the input dtype when no step applied).

    Warns
    -----
    daskmask.exceptions.MaskWarning
        If the mask is empty after the first erosion.

    """
    if opening:
        opening = int(opening)
        mask = binary_erosion(mask, iterations=opening)
    not_empty = bool(mask.any())
    if not not_empty:
        warn_user(f"Computed an empty mask. {warning_msg}", MaskWarning)
    if connected and not_empty:
        mask = largest_connected_component(mask)
    if opening:
        mask = binary_dilation(mask, iterations=2 * opening)
        mask = binary_erosion(mask, iterations=opening)
    return mask
