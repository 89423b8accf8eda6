"""How the views are framed: the brain fills them, at least as much as in nilearn's figures.

nibabel's example4d is oblique: put on a world grid, it gains empty corners (and, after a
spline resampling, faint non-zero ringing all the way to them). nilearn 0.14.1 frames the
same figures on the whole resampled field of view (``plot_epi``, the masker report) or on
the background's data (``plot_roi``). Here, for each view of each figure, the share of the
view's axes limits taken by the brain's bounding box is measured from the figure itself
(the axes' limits against the box of the mask's voxels in world space) and compared with
the same share in nilearn's figure of the same input.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from matplotlib.axes import Axes
from nilearn import image as nilearn_image
from nilearn import plotting as nilearn_plotting

import daskmask as dm
from daskmask.plotting import plot_epi, plot_roi
from daskmask.plotting._volumes import find_xyz_cut_coords, to_grid
from daskmask.reporting._masker import _display as report_display

#: For each cut direction, the world axes (horizontal, vertical) of its view.
VIEW_AXES = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}
#: How much less of a view the brain may take than in nilearn's figure (rounding of the
#: crop to whole voxels of the display grid).
TOLERANCE = 0.03
#: The least share of every view the brain's box takes: the views are cropped to the data.
LEAST_SHARE = 0.7


@pytest.fixture(scope="module")
def sample() -> dict[str, nib.Nifti1Image]:
    """example4d's mean, middle volume and epi mask (equal to nilearn's), as images."""
    path = dm.datasets.load_sample()
    run = nib.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean = nilearn_image.mean_img(str(path), copy_header=True)
    middle = nib.Nifti1Image(np.asanyarray(run.dataobj)[..., run.shape[3] // 2], run.affine)
    return {"mean": mean, "middle": middle, "mask": dm.compute_epi_mask(path)}


def brain_box(mask: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """World box (mm) of the centres of the mask's voxels."""
    world = nib.affines.apply_affine(mask.affine, np.argwhere(np.asanyarray(mask.dataobj) > 0))
    return world.min(axis=0), world.max(axis=0)


def view_shares(axes: dict[str, Axes], box: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Share of each view's axes limits (area) taken by the brain's box; checks it is inside."""
    low, high = box
    shares = {}
    for direction, ax in axes.items():
        share = 1.0
        for limits, axis in zip((ax.get_xlim(), ax.get_ylim()), VIEW_AXES[direction], strict=True):
            first, last = sorted(limits)
            # The whole brain is shown: framing tighter never cuts into it.
            assert first - 1e-6 <= low[axis] and high[axis] <= last + 1e-6, (direction, limits)
            share *= (high[axis] - low[axis]) / (last - first)
        shares[direction] = share
    return shares


def nilearn_figure(kind: str, sample: dict[str, nib.Nifti1Image]) -> dict[str, Axes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "plot_epi":
            display = nilearn_plotting.plot_epi(sample["mean"])
        elif kind == "plot_roi":
            display = nilearn_plotting.plot_roi(sample["mask"], sample["mean"])
        else:  # what nilearn's NiftiMasker report draws: the image, the mask's outline
            display = nilearn_plotting.plot_img(sample["middle"], black_bg=False, cmap="gray")
            display.add_contours(sample["mask"], levels=[0.5], colors="g", linewidths=2.5)
    return {direction: cut.ax for direction, cut in display.axes.items()}


def daskmask_figure(kind: str, sample: dict[str, nib.Nifti1Image]) -> dict[str, Axes]:
    if kind == "plot_epi":
        return plot_epi(sample["mean"]).axes
    if kind == "plot_roi":
        return plot_roi(sample["mask"], sample["mean"]).axes
    cuts = find_xyz_cut_coords(sample["mask"])
    return report_display(sample["middle"], sample["mask"], cuts, "gray").axes


@pytest.mark.parametrize("kind", ["plot_epi", "plot_roi", "report"])
def test_the_brain_fills_the_views_at_least_as_in_nilearns(
    sample: dict[str, nib.Nifti1Image], kind: str
) -> None:
    box = brain_box(sample["mask"])
    theirs = view_shares(nilearn_figure(kind, sample), box)
    ours = view_shares(daskmask_figure(kind, sample), box)
    assert set(ours) == set(theirs) == {"x", "y", "z"}
    for direction in "xyz":
        assert ours[direction] >= theirs[direction] - TOLERANCE, (direction, ours, theirs)
        assert ours[direction] >= LEAST_SHARE, (direction, ours)


def test_roi_views_hold_the_whole_region_beyond_the_backgrounds_data() -> None:
    # A mask larger than the data of its background (a template over a cortex-only run):
    # the views frame both, not just the background's data.
    background = np.zeros((20, 20, 20))
    background[8:12, 8:12, 8:12] = 1.0
    region = np.zeros((20, 20, 20), dtype=np.uint8)
    region[3:17, 5:15, 4:16] = 1
    display = plot_roi(nib.Nifti1Image(region, np.eye(4)), nib.Nifti1Image(background, np.eye(4)))
    box = (np.array([3.0, 5.0, 4.0]), np.array([16.0, 14.0, 15.0]))
    view_shares(display.axes, box)  # asserts the region is inside every view


def test_oblique_grids_crop_to_the_sources_data_not_to_resampling_ringing() -> None:
    # A spline resampling of an oblique image spreads faint values far from the data; the
    # crop keeps to the voxels of the source's data.
    affine = nib.load(dm.datasets.load_sample()).affine
    data = np.zeros((40, 30, 20))
    data[15:25, 10:20, 5:15] = 100.0
    grid = to_grid(nib.Nifti1Image(data, affine))
    assert grid.support is not None
    low, high = grid.support
    cropped = grid.cropped()
    ringing = np.nonzero(grid.data)
    for axis in range(3):
        step = grid.spacing[axis]
        # Without the source's box, the non-zero values reach further than the data.
        assert grid.coords(axis)[ringing[axis].min()] < low[axis] - step, axis
        first, last = cropped.extent(axis)
        assert low[axis] - step <= first and last <= high[axis] + step, axis
