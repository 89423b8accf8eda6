"""Tests of daskmask.plotting: real files, real matplotlib figures."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

import daskmask as dm
from daskmask.datasets import generate_epi
from daskmask.plotting import Display, OrthoDisplay, plot_epi, plot_roi, plot_signals
from daskmask.plotting._display import cut_label, format_tick, parse_display_mode
from daskmask.plotting._volumes import (
    Grid3D,
    find_cut_coords,
    find_xyz_cut_coords,
    load_volume,
    to_grid,
)

GREEN = "#008000"  # matplotlib's "g"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated raw EPI run (.nii, 5 volumes)."""
    folder = tmp_path_factory.mktemp("plot_run")
    return generate_epi(folder / "run.nii", shape=(24, 28, 14), n_timepoints=5, seed=1)


@pytest.fixture(scope="module")
def mask(run: Path) -> nib.Nifti1Image:
    return dm.compute_epi_mask(run)


def _cube(shape=(10, 12, 8), affine=None) -> nib.Nifti1Image:
    data = np.zeros(shape, dtype=np.uint8)
    data[2:6, 3:9, 2:5] = 1
    return nib.Nifti1Image(data, np.eye(4) if affine is None else affine)


# ------------------------------------------------------------------ volumes


def test_load_volume_reduces_4d(run: Path) -> None:
    data = nib.load(run).get_fdata()
    assert np.allclose(load_volume(run, "mean").get_fdata(), data.mean(axis=3))
    assert np.array_equal(load_volume(run, "middle").get_fdata(), data[..., 2])
    assert np.array_equal(load_volume(dm.open_nifti(run), "first").get_fdata(), data[..., 0])
    with pytest.raises(ValueError, match="reduce"):
        load_volume(run, "last")


def guarded_run(path: Path, allowed: set[int]) -> xr.DataArray:
    """The run at ``path`` as a dask-backed DataArray, one chunk per volume,
    whose volumes outside ``allowed`` raise when they are computed."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)

    def read(t: int) -> np.ndarray:
        if t not in allowed:
            raise RuntimeError(f"volume {t} was read")
        return data[..., t : t + 1]

    parts = [
        da.from_delayed(dask.delayed(read)(t), data.shape[:3] + (1,), data.dtype)
        for t in range(data.shape[3])
    ]
    return xr.DataArray(
        da.concatenate(parts, axis=3),
        dims=("x", "y", "z", "time"),
        attrs={"affine": image.affine, "source": str(path)},
    )


def test_middle_volume_reads_that_volume_only(run: Path) -> None:
    guarded = guarded_run(run, allowed={2})
    with pytest.raises(RuntimeError, match="was read"):
        guarded.compute()
    expected = np.asanyarray(nib.load(run).dataobj[..., 2])
    assert np.array_equal(load_volume(guarded, "middle").get_fdata(), expected)
    display = plot_roi(_cube((24, 28, 14), nib.load(run).affine), guarded)
    assert display.axes["z"].images


def test_to_grid_reorders_permuted_and_flipped_axes() -> None:
    data = np.arange(4 * 5 * 6, dtype=float).reshape(4, 5, 6)
    # voxel axis 0 -> world y (flipped), 1 -> world z, 2 -> world x.
    affine = np.array(
        [[0, 0, 2.0, -10], [-3.0, 0, 0, 20], [0, 1.5, 0, 5], [0, 0, 0, 1]], dtype=float
    )
    grid = to_grid(nib.Nifti1Image(data, affine))
    assert grid.data.shape == (6, 4, 5)
    assert np.allclose(grid.spacing, [2, 3, 1.5])
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        world = affine[:3, :3] @ np.array(ijk) + affine[:3, 3]
        position = np.round((world - grid.origin) / grid.spacing).astype(int)
        assert grid.data[tuple(position)] == data[ijk]


def test_to_grid_resamples_oblique_images() -> None:
    sample = nib.load(dm.datasets.load_sample())
    volume = nib.Nifti1Image(np.asanyarray(sample.dataobj[..., 0]), sample.affine)
    grid = to_grid(volume, "nearest")
    assert grid.spacing.min() > 0 and np.allclose(grid.spacing, grid.spacing[0])
    # Nearest-neighbour resampling keeps the set of values.
    assert set(np.unique(grid.data)) <= set(np.unique(volume.get_fdata()))
    assert grid.data.max() == volume.get_fdata().max()


def test_find_cut_coords_is_the_centre_of_the_largest_component() -> None:
    data = np.zeros((20, 20, 20))
    data[2:6, 2:6, 2:6] = 1  # 64 voxels
    data[10:18, 11:17, 12:16] = 1  # 192 voxels, centre (13.5, 13.5, 13.5)
    grid = Grid3D(data, np.array([-10.0, 0.0, 5.0]), np.array([2.0, 1.0, 3.0]))
    assert np.allclose(find_cut_coords(grid), [-10 + 2 * 13.5, 13.5, 5 + 3 * 13.5])
    empty = Grid3D(np.zeros((3, 5, 7)), np.zeros(3), np.ones(3))
    assert np.allclose(find_cut_coords(empty), [1, 2, 3])


# ------------------------------------------------------------------ plot_epi


def test_plot_epi_shows_the_mean_and_saves_png_and_svg(run: Path, tmp_path: Path) -> None:
    display = plot_epi(run, title="mean EPI", cut_coords=(10.0, 12.0, 6.0))
    assert isinstance(display, OrthoDisplay) and isinstance(display.figure, Figure)
    assert list(display.axes) == ["x", "y", "z"]
    mean = nib.load(run).get_fdata().mean(axis=3)  # identity-like affine of the generator
    grid = to_grid(nib.Nifti1Image(mean, nib.load(run).affine))
    shown = display.axes["z"].images[0].get_array()
    assert np.allclose(shown, grid.section(2, 6.0).T)
    display.savefig(tmp_path / "epi.png")
    display.savefig(tmp_path / "epi.svg")
    assert (tmp_path / "epi.png").read_bytes().startswith(PNG_MAGIC)
    assert b"<svg" in (tmp_path / "epi.svg").read_bytes()[:1000]
    assert display._repr_png_().startswith(PNG_MAGIC)
    assert "<svg" in display._repr_svg_()
    assert "mean EPI" in display._repr_svg_()
    display.close()
    assert display.axes == {}


def test_plot_epi_display_modes_and_errors(run: Path) -> None:
    display = plot_epi(run, display_mode="z", cut_coords=[4.0], colorbar=False)
    assert list(display.axes) == ["z"]
    assert display.cut_coords == {"z": 4.0}
    assert list(plot_epi(run, display_mode="yx").axes) == ["y", "x"]
    with pytest.raises(ValueError, match="display_mode"):
        plot_epi(run, display_mode="w")
    with pytest.raises(ValueError, match="cut_coords"):
        plot_epi(run, display_mode="xy", cut_coords=[1.0])
    assert parse_display_mode("ortho") == ["x", "y", "z"]


def test_plot_epi_draws_into_a_given_figure(run: Path) -> None:
    figure = Figure()
    display = plot_epi(run, figure=figure, vmin=0, vmax=100)
    assert display.figure is figure
    assert display.axes["x"].images[0].norm.vmax == 100


# ------------------------------------------------------------------ plot_roi


def test_plot_roi_draws_green_outlines_over_the_middle_volume(
    run: Path, mask: nib.Nifti1Image
) -> None:
    lazy = dm.open_nifti(run)
    display = plot_roi(mask, lazy, title="epi mask", view_type="contours")
    middle = to_grid(load_volume(run, "middle"))
    cut = display.cut_coords["y"]
    assert np.array_equal(display.axes["y"].images[0].get_array(), middle.section(1, cut).T)
    svg = display._repr_svg_()
    assert f"stroke: {GREEN}" in svg
    # Cuts through the mask: each view shows part of its outline.
    for ax in display.axes.values():
        assert ax.collections, "no outline in a view"


def test_plot_roi_filled_without_background(mask: nib.Nifti1Image, tmp_path: Path) -> None:
    display = plot_roi(mask, color="red", alpha=0.4)
    svg = display.to_bytes("svg").decode()
    assert "#ff0000" in svg
    assert not display.axes["x"].images  # no background image
    display.savefig(tmp_path / "roi.svg")
    assert (tmp_path / "roi.svg").stat().st_size > 1000
    with pytest.raises(ValueError, match="view_type"):
        plot_roi(mask, view_type="outline")


def test_plot_roi_cuts_through_the_mask() -> None:
    cube = _cube(affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    display = plot_roi(cube)
    # Cube voxels 2..5, 3..8, 2..4 at 2 mm: centre (7, 11, 6) mm.
    assert display.cut_coords == pytest.approx({"x": 7.0, "y": 11.0, "z": 6.0})


# ------------------------------------------------------------------ plot_signals


def test_plot_signals_trended_versus_detrended(run: Path, mask: nib.Nifti1Image) -> None:
    trended = dm.NiftiMasker(mask_img=mask).fit().transform(run)
    detrended = dm.NiftiMasker(mask_img=mask, detrend=True).fit().transform(run)
    display = plot_signals({"Trended": trended, "Detrended": detrended}, n_voxels=3, title="t")
    assert isinstance(display, Display)
    assert list(display.axes) == ["Trended", "Detrended"]
    n = trended.sizes["voxel"]
    columns = np.linspace(0, n - 1, 3).round().astype(int)
    for name, signals in (("Trended", trended), ("Detrended", detrended)):
        lines = display.axes[name].get_lines()
        assert len(lines) == 3
        assert np.allclose(lines[0].get_xdata(), trended.coords["time"].values)
        for line, column in zip(lines, columns, strict=True):
            assert np.allclose(line.get_ydata(), signals.isel(voxel=column).values)
    i, j, k = (int(trended.coords[c].values[0]) for c in "ijk")
    assert display.axes["Trended"].get_lines()[0].get_label() == f"voxel ({i}, {j}, {k})"
    assert display._repr_png_().startswith(PNG_MAGIC)


def test_plot_signals_numpy_and_errors() -> None:
    values = np.arange(20.0).reshape(5, 4)
    display = plot_signals([values, values * 2], labels=["a", "b"], voxels=[1])
    assert np.allclose(display.axes["b"].get_lines()[0].get_ydata(), values[:, 1] * 2)
    assert np.allclose(display.axes["a"].get_lines()[0].get_xdata(), np.arange(5))
    single = plot_signals(xr.DataArray(values, dims=("time", "voxel")), n_voxels=10)
    assert len(single.axes["signals"].get_lines()) == 4
    with pytest.raises(ValueError, match="2D"):
        plot_signals(np.zeros(3))
    with pytest.raises(ValueError, match="different numbers of voxels"):
        plot_signals([values, values[:, :2]])
    with pytest.raises(ValueError, match="labels"):
        plot_signals([values], labels=["a", "b"])


# ------------------------------------------------------------------ against nilearn

nilearn_plotting = pytest.importorskip("nilearn.plotting")
nilearn_image = pytest.importorskip("nilearn.image")

MNI_T1 = (
    Path(dm.__file__).parent
    / "datasets"
    / "data"
    / ("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
)


@pytest.fixture(scope="module")
def real_volumes(run: Path) -> dict[str, nib.Nifti1Image]:
    """Real 3-D volumes: the mean of nibabel's example4d (oblique), of a generated
    raw run, the MNI T1 template, and epi masks of both runs."""
    sample = dm.datasets.load_sample()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "example4d mean": nilearn_image.mean_img(str(sample), copy_header=True),
            "generated mean": nilearn_image.mean_img(str(run), copy_header=True),
            "MNI T1": nib.load(MNI_T1),
            "example4d mask": dm.compute_epi_mask(sample),
            "generated mask": dm.compute_epi_mask(run),
        }


def _texts(figure: Figure) -> list[Any]:
    """Every text drawn: annotations, tick labels of shown axes, titles, legends."""
    texts = list(figure.texts)
    for legend in figure.legends:
        texts.extend(legend.get_texts())
    for ax in figure.axes:
        texts.extend(ax.texts)
        texts.extend([ax.title, ax._left_title, ax.yaxis.label, ax.xaxis.label])
        if ax.axison:
            for axis in (ax.xaxis, ax.yaxis):
                low, high = sorted(axis.get_view_interval())
                span = (high - low) * 1e-9
                texts.extend(
                    tick.label1
                    for tick in axis.get_major_ticks()
                    if low - span <= tick.get_loc() <= high + span
                )
    return texts


def _nilearn_cut_labels(display) -> dict[str, str]:
    return {direction: _first_cut_text(axes.ax) for direction, axes in display.axes.items()}


def _first_cut_text(ax) -> str:
    (label,) = [t.get_text() for t in ax.texts if "=" in t.get_text()]
    return label


@pytest.mark.parametrize(
    "name", ["example4d mean", "generated mean", "MNI T1", "example4d mask", "generated mask"]
)
def test_cut_coords_and_labels_equal_nilearns(
    real_volumes: dict[str, nib.Nifti1Image], name: str
) -> None:
    volume = real_volumes[name]
    expected = nilearn_plotting.find_xyz_cut_coords(volume)
    assert np.allclose(find_xyz_cut_coords(volume), expected, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nilearn_plotting.plot_epi(volume)
    ours = plot_epi(volume)
    assert np.allclose([ours.cut_coords[d] for d in "xyz"], theirs.cut_coords, atol=1e-6)
    # Same label texts, e.g. "x=-19": truncated like nilearn's, never "-0".
    ours_labels = {d: _first_cut_text(ax) for d, ax in ours.axes.items()}
    assert ours_labels == _nilearn_cut_labels(theirs)
    assert not any(label.endswith("=-0") for label in ours_labels.values())
    theirs.close()


def test_plot_roi_cuts_equal_nilearns(real_volumes: dict[str, nib.Nifti1Image], run: Path) -> None:
    for name in ("example4d mask", "generated mask"):
        mask = real_volumes[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = nilearn_plotting.plot_roi(
                mask, bg_img=real_volumes[name.replace("mask", "mean")]
            )
        ours = plot_roi(mask, real_volumes[name.replace("mask", "mean")])
        assert np.allclose([ours.cut_coords[d] for d in "xyz"], theirs.cut_coords, atol=1e-6)
        assert {d: _first_cut_text(ax) for d, ax in ours.axes.items()} == _nilearn_cut_labels(
            theirs
        )
        theirs.close()


def test_cut_label_truncates_like_nilearn() -> None:
    assert cut_label("x", -0.98) == "x=0"
    assert cut_label("y", -0.02) == "y=0"
    assert cut_label("z", 44.9) == "z=44"
    assert cut_label("x", -19.59) == "x=-19"


@pytest.mark.parametrize(
    ("values", "step", "expected"),
    [
        ([0.0, 250.0, 1500.0], 250.0, ["0", "250", "1500"]),
        ([-0.5, 0.0, 0.25], 0.25, ["-0.50", "0", "0.25"]),
        ([1e-6, 2e-6], 1e-6, ["1e-06", "2e-06"]),
        ([2e5, 4e5], 2e5, ["2e+05", "4e+05"]),
        ([1.5e-6, 2.5e-6], 5e-7, ["1.5e-06", "2.5e-06"]),
    ],
)
def test_format_tick(values: list[float], step: float, expected: list[str]) -> None:
    assert [format_tick(v, step) for v in values] == expected


def _inside_figure(figure: Figure) -> list[str]:
    """Texts drawn (partly) outside the figure: clipped in a saved PNG."""
    figure.draw_without_rendering()
    renderer = figure._get_renderer()
    box = figure.bbox
    clipped = []
    for text in _texts(figure):
        if not text.get_visible() or not text.get_text():
            continue
        extent = text.get_window_extent(renderer)
        if (
            extent.x0 < box.x0 - 0.5
            or extent.x1 > box.x1 + 0.5
            or extent.y0 < box.y0 - 0.5
            or extent.y1 > box.y1 + 0.5
        ):
            clipped.append(text.get_text())
    return clipped


@pytest.mark.parametrize("name", ["example4d mean", "generated mean", "MNI T1"])
def test_no_clipped_labels_and_the_colorbar_reads_in_full(
    real_volumes: dict[str, nib.Nifti1Image], name: str
) -> None:
    display = plot_epi(real_volumes[name], title=name)
    assert _inside_figure(display.figure) == []
    labels = [t.get_text() for t in display._colorbar_axes.get_yticklabels()]
    assert len(labels) >= 3
    data = real_volumes[name].get_fdata()
    # Plain numbers in the range of the image (1500, not "1.5e+03" or "150(").
    assert all(float(label) <= data.max() + 1e-9 for label in labels)
    assert all("e" not in label for label in labels), labels
    assert "-0" not in labels


def test_tiny_and_huge_colorbars_do_not_clip(run: Path) -> None:
    data = nib.load(run).get_fdata()[..., 0]
    affine = nib.load(run).affine
    for scale in (1e-6, 1e7):
        display = plot_epi(nib.Nifti1Image(data * scale, affine))
        assert _inside_figure(display.figure) == []
    # The check sees a label that runs off the figure.
    display.figure.text(0.99, 0.5, "runs off")
    assert _inside_figure(display.figure) == ["runs off"]


def test_crosshair_is_visible_on_dark_and_bright_parts(run: Path) -> None:
    display = plot_roi(dm.compute_epi_mask(run), run)
    lines = [line for ax in display.axes.values() for line in ax.get_lines()]
    assert len(lines) == 6
    for line in lines:
        assert line.get_linewidth() >= 1.0
        assert line.get_path_effects(), "no dark edge: the line vanishes on bright tissue"


def test_plot_roi_background_matches_nilearns_auto(
    real_volumes: dict[str, nib.Nifti1Image],
) -> None:
    mask = real_volumes["generated mask"]
    display = plot_roi(mask, real_volumes["generated mean"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nilearn_plotting.plot_roi(mask, bg_img=real_volumes["generated mean"])
    assert display.figure.get_facecolor()[:3] == (0.0, 0.0, 0.0)
    assert theirs.frame_axes.figure.get_facecolor()[:3] == (0.0, 0.0, 0.0)
    theirs.close()
    # A bright-bordered background (an inverted image) gives a white one.
    mean = real_volumes["generated mean"]
    inverted = nib.Nifti1Image(mean.get_fdata().max() - mean.get_fdata(), mean.affine)
    assert plot_roi(mask, inverted).figure.get_facecolor()[:3] == (1.0, 1.0, 1.0)
    assert plot_roi(mask).figure.get_facecolor()[:3] == (0.0, 0.0, 0.0)


def test_views_are_cropped_to_the_data(real_volumes: dict[str, nib.Nifti1Image]) -> None:
    # example4d is oblique: its world grid has empty corners that the views leave out.
    mask = real_volumes["example4d mask"]
    display = plot_roi(mask)
    grid = to_grid(mask, "nearest")
    low, high = display.axes["z"].get_xlim()
    inside = np.nonzero(grid.data.any(axis=(1, 2)))[0]
    assert low == pytest.approx(grid.extent(0)[0] + grid.spacing[0] * inside[0])
    assert high == pytest.approx(grid.origin[0] + grid.spacing[0] * (inside[-1] + 0.5))


def test_signals_legend_and_scale_stay_off_the_data(tmp_path: Path) -> None:
    sample = str(dm.datasets.load_sample())
    trended = dm.NiftiMasker(mask_strategy="epi").fit_transform(sample)
    detrended = dm.NiftiMasker(mask_strategy="epi", detrend=True).fit_transform(sample)
    display = plot_signals({"Trended": trended, "Detrended": detrended}, title="Signals")
    display.savefig(tmp_path / "signals.png")
    figure = display.figure
    renderer = figure._get_renderer()
    (legend,) = figure.legends
    legend_box = legend.get_window_extent(renderer)
    for ax in display.axes.values():
        assert not ax.get_legend()
        assert not legend_box.overlaps(ax.get_window_extent(renderer))
        # No offset text (it ran into the panel's name): the scale is in the label.
        assert ax.yaxis.get_offset_text().get_text() == ""
    # Two volumes: detrended values are float noise near 1e-7; the label says so.
    assert re.fullmatch(r"signal \(\u00d7 1e-\d+\)", display.axes["Detrended"].get_ylabel())
    assert display.axes["Trended"].get_ylabel() == "signal"
    assert _inside_figure(figure) == []


def test_figures_save_to_png(run: Path, tmp_path: Path) -> None:
    """Every figure of the walkthrough saved as PNG: not blank, the right size."""
    from PIL import Image

    mask = dm.compute_epi_mask(run)
    masker = dm.NiftiMasker(mask_img=mask).fit()
    figures = {
        "epi": plot_epi(run, title="Mean EPI"),
        "roi": plot_roi(mask, run, title="epi mask"),
        "mni": plot_epi(MNI_T1, title="MNI T1"),
        "signals": plot_signals(
            {
                "Trended": masker.transform(run),
                "Detrended": dm.NiftiMasker(mask_img=mask, detrend=True).fit().transform(run),
            },
        ),
    }
    for name, display in figures.items():
        path = tmp_path / f"{name}.png"
        display.savefig(path, dpi=80)
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        width, height = display.figure.get_size_inches() * 80
        assert abs(pixels.shape[0] - height) <= 1 and abs(pixels.shape[1] - width) <= 1
        assert np.unique(pixels.reshape(-1, 3), axis=0).shape[0] > 50, name
