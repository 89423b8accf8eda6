"""daskmask.masking against nilearn.masking, voxel for voxel, on files in tmp_path."""

from __future__ import annotations

import functools
import importlib.resources
import os
import warnings

import dask
import nibabel as nib
import numpy as np
import pytest
from dask.callbacks import Callback
from nilearn import image as nilearn_image
from nilearn import masking as nilearn_masking
from nilearn.datasets import (
    load_mni152_gm_template,
    load_mni152_template,
    load_mni152_wm_template,
)

from daskmask import masking
from daskmask.exceptions import DimensionError, MaskWarning
from daskmask.masking._templates import load_template
from daskmask.reading import open_nifti

OBLIQUE = np.array(
    [[2.9, 0.3, 0.0, -30.0], [-0.2, 3.0, 0.1, -40.0], [0.1, 0.0, 3.5, -20.0], [0, 0, 0, 1.0]]
)


def _real_samples() -> dict[str, str]:
    import nipy
    import nitime

    return {
        "example4d": str(importlib.resources.files("nibabel") / "tests/data/example4d.nii.gz"),
        "fmri1": os.path.join(os.path.dirname(nitime.__file__), "data", "fmri1.nii.gz"),
        "functional": os.path.join(os.path.dirname(nipy.__file__), "testing", "functional.nii.gz"),
    }


def _brain_run(shape, n_volumes, rng, background, dtype, affine):
    """A bright ellipsoid 'brain' on a noisy or zero background."""
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radii = np.maximum(np.array(shape) / 3, 1)
    inside = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) < 1
    data = np.empty((*shape, n_volumes))
    for t in range(n_volumes):
        volume = 300 + 40 * rng.standard_normal(shape)
        volume[~inside] = (
            0 if background == "zero" else 20 + 5 * rng.standard_normal(int((~inside).sum()))
        )
        data[..., t] = volume
    return nib.Nifti1Image(data.astype(dtype), affine)


def _synthetic_images(rng) -> dict[str, nib.Nifti1Image]:
    images = {
        "noisy-float32": _brain_run((20, 21, 22), 10, rng, "noisy", np.float32, np.eye(4)),
        "zero-int16": _brain_run((19, 20, 17), 6, rng, "zero", np.int16, np.diag([3, 3, 3, 1.0])),
        "oblique-float64": _brain_run((16, 18, 15), 5, rng, "noisy", np.float64, OBLIQUE),
        "odd-7x8x9": _brain_run((7, 8, 9), 4, rng, "noisy", np.float64, np.eye(4)),
        "thin-1x14x15": _brain_run((1, 14, 15), 5, rng, "noisy", np.float32, np.eye(4)),
        "3d-int16": nib.Nifti1Image(
            np.asanyarray(_brain_run((18, 17, 16), 1, rng, "noisy", np.int16, np.eye(4)).dataobj)[
                ..., 0
            ],
            np.eye(4),
        ),
    }
    with_nan = np.asanyarray(
        _brain_run((18, 19, 20), 6, rng, "noisy", np.float64, np.eye(4)).dataobj
    ).copy()
    with_nan[0, :, :, 2] = np.nan  # a NaN border: NaN becomes the background
    images["nan-border"] = nib.Nifti1Image(with_nan, np.eye(4))
    nan_inside = np.asanyarray(
        _brain_run((18, 19, 20), 6, rng, "zero", np.float32, np.eye(4)).dataobj
    ).copy()
    nan_inside[9, 9, 10, :] = np.nan
    nan_inside[5, 6, 7, 1] = np.inf
    images["nan-inside"] = nib.Nifti1Image(nan_inside, np.eye(4))
    return images


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("images")
    files = dict(_real_samples())
    for name, img in _synthetic_images(np.random.default_rng(0)).items():
        path = folder / f"{name}.nii.gz"
        nib.save(img, path)
        files[name] = str(path)
    return files


ALL_IMAGES = [
    "example4d",
    "fmri1",
    "functional",
    "noisy-float32",
    "zero-int16",
    "oblique-float64",
    "odd-7x8x9",
    "thin-1x14x15",
    "3d-int16",
    "nan-border",
    "nan-inside",
]


def _assert_same_mask(expected: nib.Nifti1Image, actual: nib.Nifti1Image) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.affine, expected.affine)
    np.testing.assert_array_equal(np.asanyarray(actual.dataobj), np.asanyarray(expected.dataobj))


class _BothRaised(Exception):
    """Both implementations raised the same error (checked), nothing to compare."""


def _passes_when_both_raise(test):
    """Let ``test`` pass when :func:`_both` has checked that both raise alike."""

    @functools.wraps(test)
    def checked(*args, **kwargs):
        try:
            test(*args, **kwargs)
        except _BothRaised:
            pass

    return checked


def _both(nilearn_function, daskmask_function, *args, **kwargs):
    """Run both implementations; return their results and the warnings of each.

    When nilearn raises, daskmask must raise an exception of the same class
    name and message; :class:`_BothRaised` then stops the calling test, which
    passes when decorated with :func:`_passes_when_both_raise`.
    """
    with warnings.catch_warnings(record=True) as nilearn_warnings:
        warnings.simplefilter("always")
        try:
            expected = nilearn_function(*args, **kwargs)
        except ValueError as error:
            nilearn_error = error
        else:
            nilearn_error = None
    with warnings.catch_warnings(record=True) as daskmask_warnings:
        warnings.simplefilter("always")
        if nilearn_error is not None:
            with pytest.raises(ValueError) as raised:
                daskmask_function(*args, **kwargs)
            assert type(raised.value).__name__ == type(nilearn_error).__name__
            assert str(raised.value) == str(nilearn_error)
            raise _BothRaised(f"both raise {type(nilearn_error).__name__}: {nilearn_error}")
        actual = daskmask_function(*args, **kwargs)
    return expected, actual, nilearn_warnings, daskmask_warnings


def _mask_warnings(records) -> list[str]:
    return [
        str(r.message)
        for r in records
        if issubclass(r.category, (MaskWarning, UserWarning))
        and "Computed an empty mask" in str(r.message)
    ]


BACKGROUND_CASES = {
    "defaults": {},
    "border1": {"border_size": 1},
    "border3-connected": {"border_size": 3, "connected": True},
    "opening": {"opening": 2, "connected": True},
    "target-3x3": {"target_affine": np.eye(3) * 4},
}
EPI_CASES = {
    "defaults": {},
    "opening10": {"opening": 10},
    "cutoffs-no-opening": {"lower_cutoff": 0.8, "upper_cutoff": 0.9, "opening": False},
    "exclude-zeros": {"exclude_zeros": True},
    "not-finite": {"ensure_finite": False},
    "opening-true-unconnected": {"opening": True, "connected": False},
    "target-4x4-shape": {"target_affine": np.diag([4.0, 4, 4, 1]), "target_shape": (9, 8, 7)},
}


MEAN_MASK_CASES = [
    pytest.param(function, kwargs, id=f"{kind}-{case}")
    for kind, function, cases in [
        ("background", "compute_background_mask", BACKGROUND_CASES),
        ("epi", "compute_epi_mask", EPI_CASES),
    ]
    for case, kwargs in cases.items()
]


@pytest.mark.parametrize(("function", "kwargs"), MEAN_MASK_CASES)
@pytest.mark.parametrize("name", ALL_IMAGES)
@_passes_when_both_raise
def test_mean_mask_equals_nilearn(image_files, name, function, kwargs):
    expected, actual, expected_w, actual_w = _both(
        getattr(nilearn_masking, function), getattr(masking, function), image_files[name], **kwargs
    )
    _assert_same_mask(expected, actual)
    assert actual.get_data_dtype() == np.uint8
    assert _mask_warnings(actual_w) == _mask_warnings(expected_w)


def test_nan_border_makes_nan_the_background(image_files):
    mask = masking.compute_background_mask(image_files["nan-border"])
    mean = np.asanyarray(nib.load(image_files["nan-border"]).dataobj).mean(axis=-1)
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj).astype(bool), ~np.isnan(mean))


def test_list_of_3d_files_is_stacked_in_time(tmp_path, image_files):
    run = nib.load(image_files["noisy-float32"])
    paths = []
    for t in range(4):
        path = tmp_path / f"vol{t}.nii.gz"
        nib.save(nilearn_image.index_img(run, t), path)
        paths.append(str(path))
    expected, actual, _, _ = _both(
        nilearn_masking.compute_epi_mask, masking.compute_epi_mask, paths
    )
    _assert_same_mask(expected, actual)


@pytest.mark.parametrize("function", ["compute_epi_mask", "compute_background_mask"])
def test_list_of_4d_runs_is_one_run_as_in_nilearn(image_files, function):
    # Unlike NiftiMasker.fit_transform, nilearn's mask functions take a list of 4D runs
    # as one run (their volumes in turn).
    paths = [image_files["fmri1"], image_files["fmri1"]]
    expected, actual, _, _ = _both(
        getattr(nilearn_masking, function), getattr(masking, function), paths
    )
    _assert_same_mask(expected, actual)


def test_mask_from_nibabel_image_and_dataarray(image_files):
    img = nib.load(image_files["fmri1"])
    expected = nilearn_masking.compute_epi_mask(img)
    _assert_same_mask(expected, masking.compute_epi_mask(img))
    _assert_same_mask(expected, masking.compute_epi_mask(open_nifti(image_files["fmri1"])))


@pytest.mark.parametrize("mask_type", ["whole-brain", "gm", "wm"])
@pytest.mark.parametrize("name", ["example4d", "fmri1", "functional", "oblique-float64"])
def test_brain_mask_on_sample_grids(image_files, name, mask_type):
    expected, actual, expected_w, actual_w = _both(
        nilearn_masking.compute_brain_mask,
        masking.compute_brain_mask,
        image_files[name],
        mask_type=mask_type,
    )
    _assert_same_mask(expected, actual)
    assert _mask_warnings(actual_w) == _mask_warnings(expected_w)


MNI_GRIDS = {
    "2mm": (
        (91, 109, 91),
        np.array([[2.0, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]]),
    ),
    "3mm": (
        (61, 73, 61),
        np.array([[3.0, 0, 0, -90], [0, 3, 0, -126], [0, 0, 3, -72], [0, 0, 0, 1]]),
    ),
}


@pytest.fixture(scope="module")
def mni_grid_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("mni")
    files = {}
    for name, (shape, affine) in MNI_GRIDS.items():
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((*shape, 2), np.uint8), affine), path)
        files[name] = str(path)
    return files


@pytest.mark.parametrize(
    ("mask_type", "grid", "kwargs"),
    [
        ("whole-brain", "2mm", {}),
        ("gm", "2mm", {}),
        ("wm", "3mm", {}),
        ("whole-brain", "3mm", {"opening": False, "connected": False, "threshold": 0.7}),
        ("gm", "3mm", {"opening": 1}),
    ],
)
def test_brain_mask_on_mni_grids(mni_grid_files, mask_type, grid, kwargs):
    expected, actual, _, _ = _both(
        nilearn_masking.compute_brain_mask,
        masking.compute_brain_mask,
        mni_grid_files[grid],
        mask_type=mask_type,
        **kwargs,
    )
    _assert_same_mask(expected, actual)


def test_brain_mask_reads_no_voxel(tmp_path):
    """Only the header is needed: a file whose data is truncated still works."""
    shape, affine = MNI_GRIDS["3mm"]
    path = tmp_path / "truncated.nii"
    nib.save(nib.Nifti1Image(np.zeros((*shape, 3), np.float32), affine), path)
    with open(path, "r+b") as handle:
        handle.truncate(352 + 100)
    expected = nilearn_masking.compute_brain_mask(
        nib.Nifti1Image(np.zeros(shape, np.uint8), affine)
    )
    _assert_same_mask(expected, masking.compute_brain_mask(path))


@pytest.mark.parametrize(
    ("mask_type", "loader"),
    [
        ("whole-brain", load_mni152_template),
        ("gm", load_mni152_gm_template),
        ("wm", load_mni152_wm_template),
    ],
)
def test_templates_equal_nilearn_loaders(mask_type, loader):
    expected = loader(resolution=1)
    data, affine = load_template(mask_type)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, np.asanyarray(expected.dataobj))
    np.testing.assert_array_equal(affine, expected.affine)


def test_unknown_mask_type(image_files):
    with pytest.raises(ValueError, match="Unknown mask type foo. Only 'whole-brain', 'gm' or"):
        masking.compute_brain_mask(image_files["fmri1"], mask_type="foo")


def test_empty_brain_mask_warns(image_files):
    with pytest.warns(MaskWarning, match="gm mask is empty, lower the threshold"):
        mask = masking.compute_brain_mask(image_files["fmri1"], mask_type="gm", threshold=1.1)
    assert not np.asanyarray(mask.dataobj).any()


def test_empty_background_mask_warns(tmp_path):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 9, 10, 3), 7.0), np.eye(4)), path)
    with pytest.warns(MaskWarning, match="homogeneous background"):
        mask = masking.compute_background_mask(path)
    assert not np.asanyarray(mask.dataobj).any()


def test_empty_epi_mask_warns(tmp_path):
    data = np.random.default_rng(0).random((12, 12, 12, 2))
    data[::3, ::3, ::3] += 10  # isolated bright voxels vanish with the opening
    path = tmp_path / "sparse.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    expected, actual, expected_w, actual_w = _both(
        nilearn_masking.compute_epi_mask, masking.compute_epi_mask, path, lower_cutoff=0.5
    )
    _assert_same_mask(expected, actual)
    assert (
        _mask_warnings(actual_w)
        == _mask_warnings(expected_w)
        == ["Computed an empty mask. Are you sure that input data are EPI images not detrended. "]
    )
    assert any(issubclass(record.category, MaskWarning) for record in actual_w)


@pytest.mark.parametrize(
    ("function", "kwargs"),
    [
        (masking.compute_epi_mask, {"lower_cutoff": 0}),
        (masking.compute_epi_mask, {"upper_cutoff": 1}),
        (masking.compute_epi_mask, {"connected": 1}),
        (masking.compute_epi_mask, {"opening": 2.0}),
        (masking.compute_background_mask, {"border_size": True}),
        (masking.compute_background_mask, {"border_size": 2.0}),
    ],
)
def test_parameter_types_like_nilearn(image_files, function, kwargs):
    nilearn_function = getattr(nilearn_masking, function.__name__)
    with pytest.raises(TypeError):
        nilearn_function(image_files["fmri1"], **kwargs)
    with pytest.raises(TypeError, match=f"'{next(iter(kwargs))}' must be of type"):
        function(image_files["fmri1"], **kwargs)


@pytest.mark.parametrize("function", [masking.compute_epi_mask, masking.compute_background_mask])
def test_2d_images_are_refused(tmp_path, function):
    path = tmp_path / "flat2d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 6)), np.eye(4)), path)
    with pytest.raises(ValueError, match="Computation expects 3D or 4D images, but 2 dimensions"):
        function(path)


@pytest.mark.parametrize(
    ("target_affine", "target_shape", "error"),
    [
        (np.eye(3), (3, 3, 3), ValueError),
        (None, (3, 3, 3), ValueError),
        (np.eye(4), (3, 3), ValueError),
        ([1, 2, 3], None, np.linalg.LinAlgError),
    ],
)
def test_target_grid_errors(image_files, target_affine, target_shape, error):
    with pytest.raises(error):
        nilearn_masking.compute_epi_mask(
            image_files["fmri1"], target_affine=target_affine, target_shape=target_shape
        )
    with pytest.raises(error):
        masking.compute_epi_mask(
            image_files["fmri1"], target_affine=target_affine, target_shape=target_shape
        )


# --- multi-run masks and intersections -------------------------------------------------------


@pytest.fixture(scope="module")
def run_files(tmp_path_factory) -> list[str]:
    """Three runs of one subject on one grid, with different noise and brain sizes."""
    folder = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(5)
    paths = []
    for index, shape in enumerate([(20, 21, 22)] * 3):
        img = _brain_run(shape, 5 + index, rng, "noisy", np.float32, np.diag([3, 3, 3, 1.0]))
        data = np.asanyarray(img.dataobj).copy()
        data[2 + index : 5 + index, 5:15, 5:15] = 300  # runs disagree near one edge
        path = folder / f"run{index}.nii.gz"
        nib.save(nib.Nifti1Image(data, img.affine), path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("n_runs", [2, 3])
@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [
        ("compute_multi_epi_mask", {}),
        ("compute_multi_epi_mask", {"opening": False, "connected": False}),
        ("compute_multi_background_mask", {}),
        ("compute_multi_background_mask", {"border_size": 1, "opening": 1}),
    ],
)
def test_multi_masks_equal_nilearn(run_files, strategy, kwargs, n_runs, threshold):
    expected, actual, _, _ = _both(
        getattr(nilearn_masking, strategy),
        getattr(masking, strategy),
        run_files[:n_runs],
        threshold=threshold,
        **kwargs,
    )
    _assert_same_mask(expected, actual)
    assert actual.get_data_dtype() == np.int8


def test_multi_mask_with_target_grid(run_files):
    kwargs = {"target_affine": np.diag([4.0, 4, 4, 1]), "target_shape": (15, 16, 16)}
    expected, actual, _, _ = _both(
        nilearn_masking.compute_multi_epi_mask, masking.compute_multi_epi_mask, run_files, **kwargs
    )
    _assert_same_mask(expected, actual)


def test_multi_mask_with_lists_of_3d_runs(tmp_path, run_files):
    runs = []
    for index, path in enumerate(run_files[:2]):
        volumes = []
        for t, volume in enumerate(nilearn_image.iter_img(path)):
            volume_path = tmp_path / f"run{index}_vol{t}.nii.gz"
            nib.save(volume, volume_path)
            volumes.append(str(volume_path))
        runs.append(volumes)
    expected, actual, _, _ = _both(
        nilearn_masking.compute_multi_background_mask, masking.compute_multi_background_mask, runs
    )
    _assert_same_mask(expected, actual)


@pytest.mark.filterwarnings("ignore:Computed an empty mask")
def test_multi_masks_different_grids_fail(image_files):
    runs = [image_files["fmri1"], image_files["functional"]]
    with pytest.raises(ValueError, match="Following field of view errors were detected"):
        masking.compute_multi_epi_mask(runs)


def test_multi_empty_list_is_a_type_error():
    for function in (
        masking.compute_multi_epi_mask,
        masking.compute_multi_background_mask,
        masking.compute_multi_brain_mask,
    ):
        with pytest.raises(TypeError, match="empty list"):
            function([])


@pytest.mark.parametrize("mask_type", ["whole-brain", "wm"])
def test_multi_brain_mask(image_files, mask_type):
    runs = [image_files["fmri1"], image_files["fmri1"]]
    expected, actual, _, _ = _both(
        nilearn_masking.compute_multi_brain_mask,
        masking.compute_multi_brain_mask,
        runs,
        mask_type=mask_type,
    )
    _assert_same_mask(expected, actual)
    with pytest.raises(ValueError, match="Field of view of image #1 is different"):
        masking.compute_multi_brain_mask([image_files["fmri1"], image_files["functional"]])


@pytest.fixture(scope="module")
def mask_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("masks")
    rng = np.random.default_rng(6)
    paths = []
    for index in range(3):
        data = (rng.random((10, 11, 12)) > 0.4).astype(np.int32)
        data[:, :, 6] = 0  # two slabs, so that the largest component matters
        data[:, :, 7:] *= index % 2
        path = folder / f"mask{index}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("connected", [True, False])
@pytest.mark.parametrize("threshold", [0, 0.3, 0.5, 1])
@pytest.mark.parametrize("n_masks", [1, 2, 3])
def test_intersect_masks_equals_nilearn(mask_files, connected, threshold, n_masks):
    expected, actual, _, _ = _both(
        nilearn_masking.intersect_masks,
        masking.intersect_masks,
        mask_files[:n_masks],
        threshold=threshold,
        connected=connected,
    )
    _assert_same_mask(expected, actual)
    assert np.asanyarray(actual.dataobj).dtype == np.asanyarray(expected.dataobj).dtype
    assert actual.get_data_dtype() == np.int8


def test_intersect_masks_errors(mask_files, tmp_path):
    with pytest.raises(ValueError, match="The threshold should be smaller than 1"):
        masking.intersect_masks(mask_files, threshold=1.5)
    with pytest.raises(ValueError, match="The threshold should be greater than 0"):
        masking.intersect_masks(mask_files, threshold=-0.1)
    with pytest.raises(ValueError, match="No mask provided for intersection"):
        masking.intersect_masks([])
    with pytest.raises(TypeError, match=r"Got: mask_imgs\[1\] = int"):
        masking.intersect_masks([mask_files[0], 3])
    other = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 11, 12), np.uint8), np.diag([2, 2, 2, 1.0])), other)
    with pytest.raises(ValueError, match="img_#0 and img_#1 do not have the same affine"):
        masking.intersect_masks([mask_files[0], str(other)])


# --- mean image and schedulers --------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [["fmri1"], ["noisy-float32"], ["zero-int16"], ["3d-int16"], ["nan-inside"]],
)
@pytest.mark.parametrize(
    "target",
    [
        {},
        {"target_affine": np.eye(3) * 2.5},
        {"target_affine": np.eye(4) * 2, "target_shape": (9, 9, 9)},
    ],
)
@_passes_when_both_raise
def test_mean_img_equals_nilearn(image_files, inputs, target):
    imgs = image_files[inputs[0]]
    expected, actual, _, _ = _both(nilearn_image.mean_img, masking.mean_img, imgs, **target)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.affine, expected.affine)
    assert np.asanyarray(actual.dataobj).dtype == np.asanyarray(expected.dataobj).dtype
    np.testing.assert_allclose(
        np.asanyarray(actual.dataobj), np.asanyarray(expected.dataobj), rtol=1e-6, atol=1e-6
    )


def test_mean_img_of_a_list_averages_per_element_means(run_files):
    expected = nilearn_image.mean_img(run_files)
    actual = masking.mean_img(run_files)
    np.testing.assert_allclose(actual.get_fdata(), expected.get_fdata(), rtol=1e-6)


def test_mean_volume_of_int_data_is_exact(image_files):
    expected = np.asanyarray(nib.load(image_files["example4d"]).dataobj).mean(axis=-1)
    actual = masking.mean_volume(open_nifti(image_files["example4d"], chunks=1))
    assert actual.dtype == np.float64
    np.testing.assert_array_equal(actual, expected)


class _GraphCounter(Callback):
    """Count the graphs a local dask scheduler executes."""

    def __init__(self) -> None:
        super().__init__()
        self.graphs = 0

    def _start(self, dsk) -> None:
        self.graphs += 1


def test_multi_run_means_are_one_dask_compute(run_files):
    with dask.config.set(scheduler="threads"), _GraphCounter() as counter:
        masking.compute_multi_epi_mask(run_files)
    assert counter.graphs == 1
    runs = [open_nifti(path, chunks=2) for path in run_files]
    with dask.config.set(scheduler="threads"), _GraphCounter() as counter:
        means = masking.mean_volumes(runs)
    assert counter.graphs == 1
    for mean, path in zip(means, run_files, strict=True):
        expected = np.asanyarray(nib.load(path).dataobj).astype(np.float64).mean(axis=-1)
        np.testing.assert_allclose(mean, expected, rtol=1e-6)


@pytest.fixture(scope="module")
def distributed_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.mark.parametrize("scheduler", ["threads", "distributed"])
def test_masks_on_both_schedulers(image_files, run_files, scheduler, request):
    if scheduler == "distributed":
        request.getfixturevalue("distributed_client")
        context = dask.config.set()
    else:
        context = dask.config.set(scheduler="threads")
    with context:
        actual_epi = masking.compute_epi_mask(image_files["example4d"])
        actual_multi = masking.compute_multi_background_mask(run_files)
        mean = masking.mean_volume(open_nifti(image_files["fmri1"], chunks=7))
    _assert_same_mask(nilearn_masking.compute_epi_mask(image_files["example4d"]), actual_epi)
    _assert_same_mask(nilearn_masking.compute_multi_background_mask(run_files), actual_multi)
    expected_mean = np.asanyarray(nib.load(image_files["fmri1"]).dataobj).mean(axis=-1)
    np.testing.assert_array_equal(mean, expected_mean)


# --- user masks -----------------------------------------------------------------------------


def test_load_mask_img_like_nilearn(tmp_path):
    cases = {
        "binary": np.pad(np.ones((3, 3, 3)), 2),
        "two-values": np.pad(np.full((3, 3, 3), 5.0), 2),
        "single-4d": np.pad(np.ones((3, 3, 3)), 2)[..., None],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        expected, expected_affine = nilearn_masking.load_mask_img(str(path))
        actual, actual_affine = masking.load_mask_img(path)
        assert actual.dtype == bool
        np.testing.assert_array_equal(actual, expected)
        np.testing.assert_array_equal(actual_affine, expected_affine)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (
            np.zeros((4, 4, 4)),
            ValueError,
            "The mask is invalid as it is empty: it masks all data.",
        ),
        (np.pad(np.full((2, 2, 2), 2.0), 1) + 1, ValueError, "Background of the mask must be"),
        (np.arange(64.0).reshape(4, 4, 4) % 3, ValueError, "is not made of 2 values"),
        (np.ones((4, 4, 4, 2)), DimensionError, "Expected dimension is 3D and you provided a 4D"),
    ],
)
def test_load_mask_img_errors(data, error, message):
    img = nib.Nifti1Image(data, np.eye(4))
    with pytest.raises(error, match=message):
        masking.load_mask_img(img)
    with pytest.raises((ValueError, TypeError)):  # nilearn's DimensionError is a TypeError
        nilearn_masking.load_mask_img(img)


def test_load_mask_img_allow_empty_and_type_error():
    mask, _ = masking.load_mask_img(nib.Nifti1Image(np.zeros((3, 3, 3)), np.eye(4)), True)
    assert not mask.any()
    with pytest.raises(TypeError, match="Got int"):
        masking.load_mask_img(3)


def test_binarize_mask_img(tmp_path):
    data = np.zeros((6, 7, 8, 2))
    data[1:4, 2:5, 3:6, :] = 3.0
    data[2, 3, 4, 1] = 0  # not in every volume
    data[5, 6, 7, 0] = np.nan
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(data, OBLIQUE), path)
    with pytest.warns(UserWarning, match="Non-finite values detected. These values will be"):
        binarized = masking.binarize_mask_img(path)
    assert binarized.shape == (6, 7, 8)
    assert binarized.get_data_dtype() == np.uint8
    expected = np.nan_to_num(data, nan=0).astype(bool).all(axis=3)
    np.testing.assert_array_equal(np.asanyarray(binarized.dataobj), expected)
    np.testing.assert_allclose(binarized.affine, OBLIQUE)
