"""``plot_epi``: an EPI volume (the mean of a run) in orthogonal cuts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from daskmask.plotting._display import OrthoDisplay
from daskmask.plotting._volumes import find_xyz_cut_coords, load_volume, to_grid

__all__ = ["plot_epi"]


def plot_epi(
    img: Any,
    title: str | None = None,
    cut_coords: Sequence[float] | float | None = None,
    display_mode: str = "ortho",
    cmap: Any = "gray",
    colorbar: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    figure: Figure | None = None,
    black_bg: bool = True,
    draw_cross: bool = True,
    annotate: bool = True,
) -> OrthoDisplay:
    """Plot an EPI volume in orthogonal cuts, like ``nilearn.plotting.plot_epi``.

    A 4-D run is shown as its mean over time, computed lazily with
    :func:`daskmask.mean_img` (one pass over the run, never loaded whole).

    Parameters
    ----------
    img : path, nibabel image, xarray.DataArray or list of them
        A 3-D volume or a 4-D run.
    title : str or None, default=None
        Title above the cuts.
    cut_coords : sequence of float, float or None, default=None
        World coordinates (mm) of the cuts; by default nilearn's choice, the
        centre of the brightest region (:func:`find_xyz_cut_coords`).
    display_mode : str, default="ortho"
        "ortho" (sagittal, coronal, axial) or a combination of "x", "y", "z".
    cmap : str or matplotlib colormap, default="gray"
        Colormap.
    colorbar : bool, default=True
        Draw a colorbar.
    vmin, vmax : float or None, default=None
        Colour range (default: the range of the volume).
    figure : matplotlib.figure.Figure or None, default=None
        Draw into this figure instead of a new one.
    black_bg : bool, default=True
        Black background (white otherwise).
    draw_cross : bool, default=True
        Draw the positions of the other cuts.
    annotate : bool, default=True
        Write the cut coordinates and the sides.

    Returns
    -------
    OrthoDisplay
        Displays in notebooks; ``savefig("epi.png")`` or ``.svg``.

    """
    volume = load_volume(img, reduce="mean")
    grid = to_grid(volume, "continuous")
    if cut_coords is None:
        # Found on the image's own voxels, as nilearn does (not the display grid).
        cut_coords = find_xyz_cut_coords(volume)
    display = OrthoDisplay.create(
        grid,
        display_mode=display_mode,
        cut_coords=cut_coords,
        figure=figure,
        black_bg=black_bg,
        colorbar=colorbar,
        draw_cross=draw_cross,
        annotate=annotate,
    )
    display.add_image(grid, cmap=cmap, vmin=vmin, vmax=vmax)
    if title is not None:
        display.title(title)
    return display
