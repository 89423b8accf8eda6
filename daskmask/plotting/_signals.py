"""``plot_signals``: a few voxels' time series from one or several extractions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import ticker
from matplotlib.figure import Figure

from daskmask.plotting._display import Display

__all__ = ["plot_signals"]


def _named(signals: Any, labels: Sequence[str] | None) -> dict[str, Any]:
    if isinstance(signals, Mapping):
        named = dict(signals)
    elif isinstance(signals, list | tuple):
        named = {f"signals {i + 1}": s for i, s in enumerate(signals)}
    else:
        named = {"signals": signals}
    if labels is not None:
        if len(labels) != len(named):
            raise ValueError(f"{len(labels)} labels given for {len(named)} signal arrays")
        named = dict(zip(labels, named.values(), strict=True))
    return named


def _n_voxels_of(array: Any) -> int:
    shape = array.shape
    if len(shape) != 2:
        raise ValueError(f"signals must be 2D (time, voxel), got shape {tuple(shape)}")
    return int(shape[1])


def _select(array: Any, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """Values of some voxels (read alone), the time axis and voxel names."""
    if isinstance(array, xr.DataArray):
        time_dim, voxel_dim = array.dims
        part = array.isel({voxel_dim: columns}).compute()
        values = np.asarray(part.values, dtype=float)
        if time_dim in part.coords:
            times = np.asarray(part.coords[time_dim].values, dtype=float)
            unit = "time (s)" if time_dim == "time" else str(time_dim)
        else:
            times, unit = np.arange(values.shape[0], dtype=float), "sample"
        if all(name in part.coords for name in "ijk"):
            names = [
                f"voxel ({int(i)}, {int(j)}, {int(k)})"
                for i, j, k in zip(
                    part.coords["i"].values,
                    part.coords["j"].values,
                    part.coords["k"].values,
                    strict=True,
                )
            ]
        else:
            names = [f"voxel {c}" for c in columns]
        return values, times, unit, names
    values = np.asarray(array[:, columns], dtype=float)
    times = np.arange(values.shape[0], dtype=float)
    return values, times, "sample", [f"voxel {c}" for c in columns]


def plot_signals(
    signals: Any,
    labels: Sequence[str] | None = None,
    n_voxels: int = 3,
    title: str | None = None,
    voxels: Sequence[int] | None = None,
    figure: Figure | None = None,
) -> Display:
    """Plot the time series of a few voxels, one panel per signal array.

    Meant to compare extractions of the same mask, e.g. trended versus
    detrended signals: ``plot_signals({"Trended": X1, "Detrended": X2})``.
    Only the plotted voxels are computed from lazy inputs.

    Parameters
    ----------
    signals : array-like, xarray.DataArray, list of them or dict of name to them
        ``(time, voxel)`` arrays; DataArrays are plotted against their time
        coordinate (seconds) and their voxels named by their ``i, j, k``.
    labels : sequence of str or None, default=None
        Panel names (default: the dict keys, or "signals 1", ...).
    n_voxels : int, default=3
        Number of voxels plotted, evenly spread over the voxel axis.
    title : str or None, default=None
        Figure title.
    voxels : sequence of int or None, default=None
        Positions along the voxel axis to plot instead (overrides ``n_voxels``).
    figure : matplotlib.figure.Figure or None, default=None
        Draw into this figure instead of a new one.

    Returns
    -------
    Display
        Axes named by panel; displays in notebooks, ``savefig`` to PNG or SVG.

    Raises
    ------
    ValueError
        For arrays that are not 2D, with different numbers of voxels, or no
        voxel to plot.

    """
    named = _named(signals, labels)
    if not named:
        raise ValueError("No signals to plot")
    counts = {_n_voxels_of(array) for array in named.values()}
    if len(counts) != 1:
        raise ValueError(f"The signal arrays have different numbers of voxels: {sorted(counts)}")
    total = counts.pop()
    if voxels is not None:
        columns = np.asarray(voxels, dtype=int)
    else:
        if n_voxels < 1:
            raise ValueError(f"n_voxels must be at least 1, got {n_voxels}")
        columns = np.unique(np.linspace(0, total - 1, min(n_voxels, total)).round().astype(int))
    if columns.size == 0 or total == 0:
        raise ValueError("No voxel to plot")
    if figure is None:
        figure = Figure(figsize=(8, 2.3 * len(named) + 0.9 + (0.4 if title else 0)))
    else:
        figure.clear()
    figure.set_facecolor("white")
    # Constrained layout keeps the title, the panel names and the legend apart.
    figure.set_layout_engine("constrained")
    grid_axes = figure.subplots(len(named), 1, sharex=True, squeeze=False)[:, 0]
    axes = {}
    handles: list[Any] = []
    for ax, (name, array) in zip(grid_axes, named.items(), strict=True):
        values, times, unit, names = _select(array, columns)
        lines = [
            ax.plot(times, values[:, column], lw=1.2, label=voxel_name)[0]
            for column, voxel_name in enumerate(names)
        ]
        handles = handles or lines
        ax.set_title(name, fontsize=11, loc="left")
        ax.grid(alpha=0.3)
        _label_values(ax, values)
        axes[name] = ax
    grid_axes[-1].set_xlabel(unit)
    if title is not None:
        figure.suptitle(title, fontsize=13)
    # One legend for all panels (the same voxels in each), below them: it
    # never covers a curve.
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), 4),
        fontsize=9,
        frameon=False,
    )
    return Display(figure, axes)


def _label_values(ax: Any, values: np.ndarray) -> None:
    """Label the value axis without an offset or a floating power of ten.

    Signals near 1e-6 or 1e6 get their power of ten in the axis label
    ("signal (× 1e-6)") instead of matplotlib's offset text, which sits at
    the top of the axes and runs into the panel's name.
    """
    finite = np.abs(values[np.isfinite(values)])
    largest = float(finite.max()) if finite.size else 0.0
    exponent = int(np.floor(np.log10(largest))) if largest > 0 else 0
    if -3 <= exponent < 5:
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.set_ylabel("signal")
        return
    scale = 10.0**exponent
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value / scale:g}"))
    ax.set_ylabel(f"signal (\u00d7 1e{exponent})")
