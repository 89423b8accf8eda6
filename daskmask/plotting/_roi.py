"""``plot_roi``: a mask (region of interest) over a background image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from matplotlib.figure import Figure

from daskmask.plotting._display import OrthoDisplay
from daskmask.plotting._volumes import load_volume, to_grid

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
    black_bg: bool = False,
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
    black_bg : bool, default=False
        Black background.
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
    roi = to_grid(load_volume(roi_img, reduce="first"), "nearest")
    roi = type(roi)((roi.data != 0).astype(float), roi.origin, roi.spacing)
    background = None
    if bg_img is not None:
        background = to_grid(load_volume(bg_img, reduce="middle"), "continuous")
    display = OrthoDisplay.create(
        background if background is not None else roi,
        display_mode=display_mode,
        cut_coords=cut_coords if cut_coords is not None else _roi_cuts(roi),
        figure=figure,
        black_bg=black_bg,
        colorbar=colorbar and background is not None,
        draw_cross=draw_cross,
        annotate=annotate,
    )
    if background is not None:
        display.add_image(background, cmap=cmap)
    if view_type == "filled":
        display.add_contours(roi, levels=(0.5,), colors=[color], filled=True, alpha=alpha)
    display.add_contours(roi, levels=(0.5,), colors=[color], linewidths=linewidths)
    if title is not None:
        display.title(title)
    return display


def _roi_cuts(roi: Any) -> tuple[float, float, float]:
    from daskmask.plotting._volumes import find_cut_coords

    return find_cut_coords(roi)
