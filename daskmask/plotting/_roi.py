"""``plot_roi``: a mask (region of interest) over a background image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from daskmask.plotting._display import OrthoDisplay
from daskmask.plotting._volumes import Grid3D, find_xyz_cut_coords, load_volume, to_grid

__all__ = ["plot_roi"]


def plot_roi(
    roi_img: Any,
    bg_img: Any = None,
    title: str | None = None,
    cut_coords: Sequence[float] | float | None = None,
    display_mode: str = "ortho",
    color: Any = "green",
    alpha: float = 0.7,
    view_type: Literal["contours", "filled"] = "filled",
    linewidths: float = 2.5,
    cmap: Any = "gray",
    figure: Figure | None = None,
    black_bg: bool | Literal["auto"] = "auto",
    colorbar: bool = False,
    draw_cross: bool = True,
    annotate: bool = True,
) -> OrthoDisplay:
    """Plot a mask over a background image, like ``nilearn.plotting.plot_roi``.

    The background of a 4-D run is its middle volume, read alone; the cuts go
    through the centre of the mask's largest connected part.

    Parameters
    ----------
    roi_img : path, nibabel image or xarray.DataArray
        The mask (non-zero voxels are in the region).
    bg_img : path, nibabel image, xarray.DataArray or None, default=None
        Background; a 4-D run shows its middle volume. None: no background.
    title : str or None, default=None
        Title above the cuts.
    cut_coords : sequence of float, float or None, default=None
        World coordinates (mm) of the cuts.
    display_mode : str, default="ortho"
        "ortho" or a combination of "x", "y", "z".
    color : color, default="green"
        Colour of the region (fill and outline).
    alpha : float, default=0.7
        Opacity of the filled region.
    view_type : {"filled", "contours"}, default="filled"
        Fill the region (with its outline) or draw only its outline.
    linewidths : float, default=2.5
        Width of the outline in points.
    cmap : str or matplotlib colormap, default="gray"
        Colormap of the background.
    figure : matplotlib.figure.Figure or None, default=None
        Draw into this figure instead of a new one.
    black_bg : bool or "auto", default="auto"
        Black background. "auto" (nilearn's default): black unless the
        background image is bright at its border (the look of
        :func:`plot_epi` for EPI and masks alone).
    colorbar : bool, default=False
        Colorbar of the background.
    draw_cross : bool, default=True
        Draw the positions of the other cuts.
    annotate : bool, default=True
        Write the cut coordinates and the sides.

    Returns
    -------
    OrthoDisplay
        Displays in notebooks; ``savefig("roi.png")`` or ``.svg``.

    Raises
    ------
    ValueError
        For an unknown ``view_type``.

    """
    if view_type not in ("filled", "contours"):
        raise ValueError(f"view_type must be 'filled' or 'contours', got {view_type!r}")
    roi_volume = load_volume(roi_img, reduce="first")
    roi = to_grid(roi_volume, "nearest")
    roi = Grid3D((roi.data != 0).astype(float), roi.origin, roi.spacing)
    background = None
    if bg_img is not None:
        background = to_grid(load_volume(bg_img, reduce="middle"), "continuous")
    if black_bg == "auto":
        black_bg = background is None or _dark_border(background.data)
    if cut_coords is None:
        # On the mask's own voxels, as nilearn finds them (not the display grid).
        binary = np.asanyarray(roi_volume.dataobj) != 0
        cut_coords = find_xyz_cut_coords(
            nib.Nifti1Image(binary.astype(np.uint8), roi_volume.affine)
        )
    display = OrthoDisplay.create(
        background if background is not None else roi,
        display_mode=display_mode,
        cut_coords=cut_coords,
        figure=figure,
        black_bg=bool(black_bg),
        colorbar=colorbar and background is not None,
        draw_cross=draw_cross,
        annotate=annotate,
        frame=(roi,),  # the whole region, even where the background has no data
    )
    if background is not None:
        display.add_image(background, cmap=cmap)
    if view_type == "filled":
        display.add_contours(roi, levels=(0.5,), colors=[color], filled=True, alpha=alpha)
    display.add_contours(roi, levels=(0.5,), colors=[color], linewidths=linewidths)
    if title is not None:
        display.title(title)
    return display


def _dark_border(data: np.ndarray, width: int = 2) -> bool:
    """Whether an image is dark at its border (median of the outer ``width`` voxels).

    nilearn's rule for ``black_bg="auto"``: dark when that median is at most
    the middle of the image's range.
    """
    values = np.nan_to_num(np.asarray(data, dtype=float))
    inner = np.zeros(values.shape, dtype=bool)
    inner[tuple(slice(width, -width) for _ in range(values.ndim))] = True
    border = values[~inner]
    if border.size == 0:
        return True
    return bool(np.median(border) <= (values.min() + values.max()) / 2)
