"""The figure returned by every plotting function.

:class:`Display` wraps a matplotlib :class:`~matplotlib.figure.Figure`
(created without pyplot, so nothing depends on the interactive backend) and
shows itself in Jupyter through ``_repr_png_`` and ``_repr_svg_``.
:class:`OrthoDisplay` is the brain view: one axes per cut (sagittal ``x``,
coronal ``y``, axial ``z``), drawn in world millimetres, on which images,
filled overlays and contours are layered.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib import patheffects, ticker
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from daskmask.plotting._volumes import Grid3D, find_cut_coords, load_volume, to_grid

__all__ = ["Display", "OrthoDisplay", "cut_label", "format_tick", "parse_display_mode"]

#: Layout of an ortho display, in inches: height of the views, margins around
#: them, room for a title, and the colorbar's gap and bar width.
_VIEW_HEIGHT = 2.8
_MAX_VIEWS_WIDTH = 12.0
_MARGIN = 0.06
_TITLE_ROOM = 0.42
_BAR_GAP = 0.15
#: Between two views: views cropped to the data would otherwise touch and read as one
#: image on a light page.
_VIEW_GAP = 0.08
_BAR_WIDTH = 0.16
#: Font sizes (points) of the cut labels and the L/R letters, as nilearn's.
_LABEL_SIZE = 12
_TICK_SIZE = 10


def cut_label(direction: str, coordinate: float) -> str:
    """Return the label of a cut, e.g. ``"x=-12"``: whole mm, truncated toward zero.

    Truncation (not rounding) gives the numbers nilearn writes for the same
    cut, and never writes ``-0``.
    """
    return f"{direction}={int(coordinate)}"


def format_tick(value: float, step: float) -> str:
    """Return a colorbar tick label as short as the tick spacing ``step`` allows.

    Plain numbers between 1e-3 and 1e5 (``1500``, ``0.25``), otherwise
    scientific (``1.5e-06``), with as many digits as the spacing needs to tell
    ticks apart; a zero is ``0``, never ``-0``.
    """
    step = abs(step)
    if value == 0 or abs(value) < step * 1e-9:
        return "0"
    magnitude = max(abs(value), step)
    if 1e-3 <= magnitude < 1e5:
        text = f"{value:.{_decimals(step)}f}"
    else:
        scale = 10.0 ** int(np.floor(np.log10(magnitude)))
        text = f"{value:.{_decimals(step / scale)}e}"
    return "0" if float(text) == 0 else text


def _decimals(step: float) -> int:
    """Fewest decimals (up to 6) that write ``step`` exactly (0.25 needs 2)."""
    for decimals in range(7):
        if step == 0 or abs(round(step, decimals) - step) <= step * 1e-6:
            return decimals
    return 6


#: For each cut direction: the world axis cut, then the horizontal and
#: vertical world axes of the view.
_VIEW_AXES = {"x": (0, 1, 2), "y": (1, 0, 2), "z": (2, 0, 1)}


class Display:
    """A matplotlib figure that shows in notebooks and saves to PNG or SVG.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure.
    axes : dict of str to matplotlib.axes.Axes
        Its axes by name.

    """

    def __init__(self, figure: Figure, axes: dict[str, Axes]) -> None:
        self._figure = figure
        self.axes = axes

    @property
    def figure(self) -> Figure:
        """The matplotlib figure."""
        return self._figure

    def title(self, text: str, color: str | None = None, size: float = 12) -> None:
        """Put a title above the figure."""
        self._figure.suptitle(text, color=color or self._text_color(), fontsize=size)

    def _text_color(self) -> str:
        return "black"

    def _facecolor(self) -> Any:
        return self._figure.get_facecolor()

    def savefig(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Save the figure; the format follows the suffix (``.png``, ``.svg``, ...).

        Parameters
        ----------
        path : str or os.PathLike
            Output file.
        **kwargs
            Passed to :meth:`matplotlib.figure.Figure.savefig`.

        """
        kwargs.setdefault("facecolor", self._facecolor())
        self._figure.savefig(os.fspath(path), **kwargs)

    def to_bytes(self, fmt: str = "svg", **kwargs: Any) -> bytes:
        """Render the figure in memory as ``fmt`` ("svg" or "png")."""
        buffer = io.BytesIO()
        kwargs.setdefault("facecolor", self._facecolor())
        if fmt == "svg":
            # No date and a fixed id salt: the same figure gives the same bytes.
            kwargs.setdefault("metadata", {"Date": None})
            with matplotlib.rc_context({"svg.hashsalt": "daskmask"}):
                self._figure.savefig(buffer, format=fmt, **kwargs)
        else:
            self._figure.savefig(buffer, format=fmt, **kwargs)
        return buffer.getvalue()

    def close(self) -> None:
        """Release the figure (it can no longer be drawn)."""
        self._figure.clear()
        self.axes = {}

    def _repr_png_(self) -> bytes:
        return self.to_bytes("png", dpi=100)

    def _repr_svg_(self) -> str:
        return self.to_bytes("svg").decode("utf-8")


def parse_display_mode(display_mode: str) -> list[str]:
    """Cut directions of a display mode ("ortho", "x", "yz", ...).

    Raises
    ------
    ValueError
        For an unknown mode.

    """
    if display_mode == "ortho":
        return ["x", "y", "z"]
    if (
        display_mode
        and all(c in "xyz" for c in display_mode)
        and len(set(display_mode)) == len(display_mode)
    ):
        return list(display_mode)
    raise ValueError(
        f"display_mode must be 'ortho' or a combination of 'x', 'y', 'z', got {display_mode!r}"
    )


def _as_grid(img: Any, interpolation: str, reduce: str = "mean") -> Grid3D:
    if isinstance(img, Grid3D):
        return img
    return to_grid(load_volume(img, reduce=reduce), interpolation)  # type: ignore[arg-type]


class OrthoDisplay(Display):
    """Cuts through a volume along world axes, in millimetres.

    Build it with :meth:`create`; then layer :meth:`add_image`,
    :meth:`add_overlay` and :meth:`add_contours`.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure.
    axes : dict of str to matplotlib.axes.Axes
        One axes per cut direction ("x", "y", "z").
    cut_coords : dict of str to float
        World coordinate of each cut.
    bounds : Grid3D
        The grid whose field of view the views show.
    black_bg : bool
        Dark background.
    colorbar_axes : matplotlib.axes.Axes or None
        Where :meth:`add_image` draws its colorbar.

    """

    def __init__(
        self,
        figure: Figure,
        axes: dict[str, Axes],
        cut_coords: dict[str, float],
        bounds: Grid3D,
        black_bg: bool,
        colorbar_axes: Axes | None,
    ) -> None:
        super().__init__(figure, axes)
        self.cut_coords = cut_coords
        self._bounds = bounds
        self._black_bg = black_bg
        self._colorbar_axes = colorbar_axes
        # Layout state (inches): whether this display sized the figure itself,
        # the room for a title and for the colorbar's labels.
        self._own_figure = False
        self._title_room = 0.0
        self._labels_room = 0.55
        self._spans: list[tuple[float, float]] = []

    def title(self, text: str, color: str | None = None, size: float = 13) -> None:
        """Put a title above the cuts (the figure grows to make room for it)."""
        self._title_room = _TITLE_ROOM
        self._layout()
        self._figure.suptitle(
            text,
            color=color or self._text_color(),
            fontsize=size,
            y=1 - 0.06 / self._figure.get_figheight(),
            va="top",
        )

    def _layout(self) -> None:
        """Place the views and the colorbar; size the figure when it is ours.

        Sizes are worked out in inches so that text (in points) never
        overflows: the colorbar's slot is as wide as its widest label.
        """
        total_width = float(sum(width for width, _ in self._spans))
        tallest = max(height for _, height in self._spans)
        gaps = _VIEW_GAP * (len(self._spans) - 1)
        bar = 0.0
        if self._colorbar_axes is not None:
            bar = _BAR_GAP + _BAR_WIDTH + self._labels_room
        if self._own_figure:
            view_height = _VIEW_HEIGHT
            views_width = view_height * total_width / tallest
            if views_width > _MAX_VIEWS_WIDTH:
                view_height *= _MAX_VIEWS_WIDTH / views_width
                views_width = _MAX_VIEWS_WIDTH
            self._figure.set_size_inches(
                views_width + gaps + bar + 2 * _MARGIN,
                view_height + self._title_room + 2 * _MARGIN,
                forward=False,
            )
        width, height = self._figure.get_size_inches()
        bottom = _MARGIN / height
        top = 1 - (self._title_room + _MARGIN) / height
        views = max(width - gaps - bar - 2 * _MARGIN, 0.1) / width
        position = _MARGIN / width
        for index, (ax, (span, _)) in enumerate(zip(self.axes.values(), self._spans, strict=True)):
            if index:
                position += _VIEW_GAP / width
            share = views * span / total_width
            ax.set_position((position, bottom, share, top - bottom))
            position += share
        if self._colorbar_axes is not None:
            left = position + _BAR_GAP / width
            middle = (bottom + top) / 2
            reach = 0.8 * (top - bottom) / 2
            self._colorbar_axes.set_position((left, middle - reach, _BAR_WIDTH / width, 2 * reach))

    def _text_color(self) -> str:
        return "white" if self._black_bg else "black"

    @classmethod
    def create(
        cls,
        bounds: Grid3D,
        display_mode: str = "ortho",
        cut_coords: Sequence[float] | float | None = None,
        figure: Figure | None = None,
        black_bg: bool = False,
        colorbar: bool = False,
        draw_cross: bool = True,
        annotate: bool = True,
        frame: Sequence[Grid3D] = (),
    ) -> OrthoDisplay:
        """Lay out the views of a display.

        Parameters
        ----------
        bounds : Grid3D
            The volume whose field of view is shown: the box of its data in
            world space (:meth:`Grid3D.cropped`); cut coordinates default to
            its :func:`find_cut_coords`.
        display_mode : str, default="ortho"
            "ortho" (x, y and z) or any combination of "x", "y", "z".
        cut_coords : sequence of float, float or None, default=None
            One world coordinate per cut (x, y, z for "ortho"), or None.
        figure : matplotlib.figure.Figure or None, default=None
            Draw into this figure (cleared) instead of a new one.
        black_bg : bool, default=False
            Dark background and light text.
        colorbar : bool, default=False
            Keep room on the right for a colorbar.
        draw_cross : bool, default=True
            Draw the lines where the other cuts are.
        annotate : bool, default=True
            Write the cut coordinates and the left/right sides.
        frame : sequence of Grid3D, default=()
            Other volumes the views must hold whole (a mask drawn over the
            image): the views show the union of their boxes and that of
            ``bounds``.

        Returns
        -------
        OrthoDisplay
            The empty display.

        """
        directions = parse_display_mode(display_mode)
        cuts = _resolve_cut_coords(bounds, directions, cut_coords)
        bounds = bounds.cropped()
        extents = _union_extents([bounds, *(grid.cropped() for grid in frame)])
        spans = []
        for direction in directions:
            _, horizontal, vertical = _VIEW_AXES[direction]
            low, high = extents[horizontal]
            bottom, top = extents[vertical]
            spans.append((high - low, top - bottom))
        facecolor = "black" if black_bg else "white"
        own_figure = figure is None
        if figure is None:
            figure = Figure()
        else:
            figure.clear()
        figure.set_facecolor(facecolor)
        axes: dict[str, Axes] = {}
        for direction in directions:
            ax = figure.add_axes((0, 0, 1, 1))
            _, horizontal, vertical = _VIEW_AXES[direction]
            ax.set_xlim(*extents[horizontal])
            ax.set_ylim(*extents[vertical])
            ax.set_aspect("equal", adjustable="box", anchor="C")
            ax.set_facecolor(facecolor)
            ax.set_axis_off()
            axes[direction] = ax
        colorbar_axes = figure.add_axes((0, 0, 1, 1)) if colorbar else None
        display = cls(figure, axes, cuts, bounds, black_bg, colorbar_axes)
        display._own_figure = own_figure
        display._spans = spans
        display._layout()
        if draw_cross:
            display._draw_cross()
        if annotate:
            display._annotate()
        return display

    # ------------------------------------------------------------ layers

    def _sections(self, grid: Grid3D) -> Any:
        for direction, ax in self.axes.items():
            axis, horizontal, vertical = _VIEW_AXES[direction]
            section = grid.section(axis, self.cut_coords[direction])
            if section is None:
                continue
            # After removing ``axis`` the remaining axes keep their order:
            # (horizontal, vertical) when horizontal < vertical, always true.
            yield direction, ax, section, horizontal, vertical

    def add_image(
        self,
        img: Any,
        cmap: Any = "gray",
        vmin: float | None = None,
        vmax: float | None = None,
        alpha: float = 1.0,
        interpolation: str = "continuous",
        threshold: float | None = None,
        colorbar: bool = True,
    ) -> None:
        """Draw a volume in every view.

        Parameters
        ----------
        img : image or Grid3D
            A 3-D volume (a 4-D input shows its mean).
        cmap : str or matplotlib colormap, default="gray"
            Colormap.
        vmin, vmax : float or None, default=None
            Colour range (default: the finite range of the volume).
        alpha : float, default=1.0
            Opacity.
        interpolation : str, default="continuous"
            Resampling of oblique images ("nearest" for labels and masks).
        threshold : float or None, default=None
            Values whose absolute value is at most this are transparent.
        colorbar : bool, default=True
            Fill the colorbar slot, if the display has one.

        """
        grid = _as_grid(img, interpolation)
        data = np.asarray(grid.data, dtype=float)
        finite = data[np.isfinite(data)]
        low = float(finite.min()) if vmin is None and finite.size else vmin
        high = float(finite.max()) if vmax is None and finite.size else vmax
        if low is None or high is None:
            low, high = 0.0, 1.0
        if high <= low:
            high = low + 1.0
        norm = Normalize(vmin=low, vmax=high)
        image = None
        for _, ax, section, horizontal, vertical in self._sections(grid):
            values = np.asarray(section, dtype=float)
            if threshold is not None:
                values = np.ma.masked_where(np.abs(values) <= threshold, values)
            image = ax.imshow(
                values.T,
                origin="lower",
                extent=(*grid.extent(horizontal), *grid.extent(vertical)),
                cmap=cmap,
                norm=norm,
                alpha=alpha,
                interpolation="nearest",
                zorder=1,
            )
        if colorbar and self._colorbar_axes is not None and image is not None:
            self._draw_colorbar(image, norm)

    def _draw_colorbar(self, image: Any, norm: Normalize) -> None:
        """Fill the colorbar slot and widen it to its widest tick label."""
        ticks = ticker.MaxNLocator(nbins=5).tick_values(norm.vmin, norm.vmax)
        ticks = ticks[(ticks >= norm.vmin - 1e-9 * abs(norm.vmin)) & (ticks <= norm.vmax)]
        step = float(np.diff(ticks).min()) if ticks.size > 1 else abs(norm.vmax - norm.vmin)
        self._colorbar_axes.clear()
        bar = self.figure.colorbar(image, cax=self._colorbar_axes, ticks=ticks)
        bar.ax.yaxis.set_major_formatter(
            ticker.FuncFormatter(lambda value, _: format_tick(value, step))
        )
        bar.ax.tick_params(colors=self._text_color(), labelsize=_TICK_SIZE)
        bar.outline.set_edgecolor(self._text_color())
        # Measure the labels once drawn and make the slot that wide.
        self.figure.draw_without_rendering()
        renderer = self.figure._get_renderer()
        right = bar.ax.get_window_extent(renderer).x1
        widest = max(
            (label.get_window_extent(renderer).x1 - right for label in bar.ax.get_yticklabels()),
            default=0.0,
        )
        self._labels_room = widest / self.figure.dpi + 0.08
        self._layout()

    def add_overlay(
        self,
        img: Any,
        cmap: Any = "autumn",
        alpha: float = 0.6,
        threshold: float = 0.0,
        vmin: float | None = None,
        vmax: float | None = None,
    ) -> None:
        """Draw a volume filled and semi-transparent, hiding values <= ``threshold``."""
        self.add_image(
            img,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            alpha=alpha,
            interpolation="nearest",
            threshold=threshold,
            colorbar=False,
        )

    def add_contours(
        self,
        img: Any,
        levels: Sequence[float] = (0.5,),
        colors: Any = "g",
        linewidths: float = 2.5,
        filled: bool = False,
        alpha: float = 1.0,
    ) -> None:
        """Draw the outlines of a volume (a mask: its border) in every view.

        Parameters
        ----------
        img : image or Grid3D
            A 3-D volume, usually a mask (resampled nearest when oblique).
        levels : sequence of float, default=(0.5,)
            Contour levels.
        colors : color or sequence of colors, default="g"
            Line colours (green by default).
        linewidths : float, default=2.5
            Line width in points.
        filled : bool, default=False
            Fill between levels instead of drawing lines.
        alpha : float, default=1.0
            Opacity.

        """
        grid = _as_grid(img, "nearest", reduce="first")
        for _, ax, section, horizontal, vertical in self._sections(grid):
            values = np.nan_to_num(np.asarray(section, dtype=float))
            if values.min() == values.max():
                continue
            # Pad with the minimum so outlines close at the border of the volume.
            values = np.pad(values, 1, constant_values=values.min())
            along_h = _padded_coords(grid, horizontal)
            along_v = _padded_coords(grid, vertical)
            if filled:
                ax.contourf(
                    along_h,
                    along_v,
                    values.T,
                    levels=[*levels, max(values.max(), max(levels)) + 1],
                    colors=colors,
                    alpha=alpha,
                    zorder=2,
                )
            else:
                ax.contour(
                    along_h,
                    along_v,
                    values.T,
                    levels=list(levels),
                    colors=colors,
                    linewidths=linewidths,
                    alpha=alpha,
                    zorder=3,
                )

    # ------------------------------------------------------------ decorations

    def _draw_cross(self) -> None:
        # A light line edged in black reads on dark and bright parts of the
        # image alike (a single dark or light line vanishes on one of them).
        edge = [patheffects.withStroke(linewidth=2.6, foreground="black", alpha=0.55)]
        style = {"color": "#e6e6e6", "lw": 1.1, "zorder": 4, "path_effects": edge}
        for direction, ax in self.axes.items():
            _, horizontal, vertical = _VIEW_AXES[direction]
            across = self.cut_coords.get("xyz"[horizontal])
            if across is not None:
                ax.axvline(across, **style)
            along = self.cut_coords.get("xyz"[vertical])
            if along is not None:
                ax.axhline(along, **style)

    def _annotate(self) -> None:
        # White letters outlined in black read on dark images and white margins alike.
        color = "white"
        outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
        for direction, ax in self.axes.items():
            ax.text(
                0.02,
                0.03,
                cut_label(direction, self.cut_coords[direction]),
                transform=ax.transAxes,
                color=color,
                fontsize=_LABEL_SIZE,
                zorder=5,
                path_effects=outline,
            )
            if direction in "yz":
                for x, label in ((0.02, "L"), (0.98, "R")):
                    ax.text(
                        x,
                        0.97,
                        label,
                        transform=ax.transAxes,
                        color=color,
                        fontsize=_LABEL_SIZE,
                        ha="left" if label == "L" else "right",
                        va="top",
                        zorder=5,
                        path_effects=outline,
                    )


def _union_extents(grids: Sequence[Grid3D]) -> list[tuple[float, float]]:
    """World extent (mm) along x, y and z of the union of the grids' boxes."""
    extents = []
    for axis in range(3):
        lows, highs = zip(*(grid.extent(axis) for grid in grids), strict=True)
        extents.append((min(lows), max(highs)))
    return extents


def _padded_coords(grid: Grid3D, axis: int) -> np.ndarray:
    coords = grid.coords(axis)
    step = grid.spacing[axis]
    return np.concatenate([[coords[0] - step], coords, [coords[-1] + step]])


def _resolve_cut_coords(
    grid: Grid3D, directions: list[str], cut_coords: Sequence[float] | float | None
) -> dict[str, float]:
    if cut_coords is None:
        found = find_cut_coords(grid)
        return {direction: found["xyz".index(direction)] for direction in directions}
    values = np.atleast_1d(np.asarray(cut_coords, dtype=float))
    if values.size == 3 and len(directions) != 3:
        return {direction: float(values["xyz".index(direction)]) for direction in directions}
    if values.size != len(directions):
        raise ValueError(
            f"cut_coords must give one coordinate per cut ({len(directions)} for "
            f"{''.join(directions)!r}), got {values.size}"
        )
    return {direction: float(value) for direction, value in zip(directions, values, strict=True)}
