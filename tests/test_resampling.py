"""daskmask.image resampling against nilearn.image.resample_img / resample_to_img."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from nilearn.image import resample_img as nilearn_resample_img
from nilearn.image import resample_to_img as nilearn_resample_to_img
from nilearn.image.resampling import BoundingBoxError as NilearnBoundingBoxError

from daskmask.exceptions import BoundingBoxError
from daskmask.image import resample_img, resample_to_img, resample_volume
from daskmask.image._grid import plan_target_grid

OBLIQUE = np.array(
    [[2.0, 0.1, 0.0, -3.0], [0.0, 2.5, 0.2, 4.0], [0.1, 0.0, 3.0, 5.0], [0.0, 0.0, 0.0, 1.0]]
)
TARGETS = {
    "identity": (np.eye(4), None),
    "3x3-down": (np.eye(3) * 3, None),
    "4x4-no-shape": (np.eye(4) * 2, None),
    "4x4-shape": (np.diag([1.5, 2.0, 2.5, 1.0]), (10, 10, 10)),
    "oblique": (OBLIQUE, None),
    "flipped": (np.diag([-2.0, 2.0, 2.0, 1.0]), None),
    "up-with-offset": (
        np.array([[0.7, 0, 0, 1.3], [0, 0.8, 0, -2], [0, 0, 0.9, 0.5], [0, 0, 0, 1]]),
        (12, 11, 13),
    ),
}


def _data(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return (rng.random(shape) * 100).astype(dtype)


def _assert_same_image(expected: nib.Nifti1Image, actual: nib.Nifti1Image) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.affine, expected.affine)
    expected_data = np.asanyarray(expected.dataobj)
    actual_data = np.asanyarray(actual.dataobj)
    assert actual_data.dtype == expected_data.dtype
    np.testing.assert_array_equal(actual_data, expected_data)


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("interpolation", ["continuous", "linear", "nearest"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "float64"])
@pytest.mark.parametrize(
    "source_affine", [np.diag([2.0, 2.0, 2.0, 1.0]), OBLIQUE], ids=["diag", "oblique"]
)
def test_resample_img_equals_nilearn(target, interpolation, dtype, source_affine, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(_data(dtype, (7, 8, 9), rng), source_affine), path)
    target_affine, target_shape = TARGETS[target]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = nilearn_resample_img(
            str(path), target_affine, target_shape, interpolation=interpolation
        )
        actual = resample_img(path, target_affine, target_shape, interpolation=interpolation)
    _assert_same_image(expected, actual)


@pytest.mark.parametrize("clip", [True, False])
def test_resample_img_4d_in_memory(clip):
    rng = np.random.default_rng(1)
    img = nib.Nifti1Image(rng.normal(size=(6, 7, 8, 3)), OBLIQUE)
    expected = nilearn_resample_img(img, np.eye(3) * 2.2, clip=clip)
    actual = resample_img(img, np.eye(3) * 2.2, clip=clip)
    _assert_same_image(expected, actual)


@pytest.mark.parametrize("interpolation", ["continuous", "nearest"])
def test_resample_img_with_non_finite_values(interpolation):
    rng = np.random.default_rng(2)
    data = rng.random((9, 8, 7))
    data[2:4, 3, 4] = np.nan
    data[0, 0, 0] = np.inf
    data[8, 7, 6] = np.nan
    img = nib.Nifti1Image(data, np.eye(4))
    with pytest.warns(RuntimeWarning, match="NaNs or infinite values"):
        actual = resample_img(img, np.eye(3) * 1.7, interpolation=interpolation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = nilearn_resample_img(img, np.eye(3) * 1.7, interpolation=interpolation)
    _assert_same_image(expected, actual)
    assert np.isnan(np.asanyarray(actual.dataobj)).any()


def test_resample_volume_is_the_per_volume_kernel():
    rng = np.random.default_rng(3)
    run = rng.normal(size=(6, 7, 8, 4)).astype(np.float32)
    img = nib.Nifti1Image(run, OBLIQUE)
    expected = nilearn_resample_img(img, np.eye(4) * 2, (5, 6, 7))
    clip_range = (min(run.min(), 0), max(run.max(), 0))
    for t in range(run.shape[3]):
        volume = resample_volume(
            run[..., t], OBLIQUE, np.eye(4) * 2, (5, 6, 7), clip_range=clip_range
        )
        np.testing.assert_array_equal(volume, np.asanyarray(expected.dataobj)[..., t])


@pytest.mark.parametrize("interpolation", ["continuous", "nearest"])
def test_resample_to_img_equals_nilearn(interpolation, tmp_path):
    rng = np.random.default_rng(4)
    source = nib.Nifti1Image(_data("float32", (10, 11, 12), rng), OBLIQUE)
    target_path = tmp_path / "target.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8, 2), np.int16), np.eye(4) * 3), target_path)
    expected = nilearn_resample_to_img(source, str(target_path), interpolation=interpolation)
    actual = resample_to_img(source, target_path, interpolation=interpolation)
    _assert_same_image(expected, actual)


def test_noop_returns_copy_or_same_image():
    img = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    assert resample_img(img, copy=False) is img
    copied = resample_img(img, np.eye(4), (2, 3, 4))
    assert copied is not img
    np.testing.assert_array_equal(copied.get_fdata(), img.get_fdata())


def test_int_cast_and_binary_warnings():
    img = nib.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4))
    with pytest.warns(UserWarning, match="Casting data from int16 to float32"):
        resample_img(img, np.eye(3) * 2)
    binary = nib.Nifti1Image(np.eye(4)[:, :, None].repeat(4, 2), np.eye(4))
    with pytest.warns(UserWarning, match="Resampling binary images with continuous"):
        resample_img(binary, np.eye(3) * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resample_img(binary, np.eye(3) * 2, interpolation="nearest")


def test_no_sform_warning():
    img = nib.Nifti1Image(np.arange(64.0).reshape(4, 4, 4), np.eye(4))
    img.set_sform(None, code=0)
    with pytest.warns(UserWarning, match="no sform"):
        resample_img(img, np.eye(3) * 2)


@pytest.mark.parametrize(
    ("target_affine", "target_shape", "error", "message"),
    [
        (np.eye(3), (3, 3, 3), ValueError, r"should be \(4, 4\) and not \(3, 3\)"),
        (None, (3, 3, 3), ValueError, "target_affine should be specified too"),
        (np.eye(4), (3, 3), ValueError, r"length 3. \(3, 3\) was specified"),
        ([1, 2, 3], None, np.linalg.LinAlgError, None),
    ],
)
def test_resampling_errors_match_nilearn(target_affine, target_shape, error, message):
    img = nib.Nifti1Image(np.ones((4, 4, 4)), np.eye(4))
    with pytest.raises(error, match=message):
        nilearn_resample_img(img, target_affine, target_shape)
    with pytest.raises(error, match=message):
        resample_img(img, target_affine, target_shape)


def test_bounding_box_error():
    img = nib.Nifti1Image(np.ones((4, 4, 4)), np.eye(4))
    far = np.eye(4)
    far[:3, 3] = 100
    with pytest.raises(BoundingBoxError, match="does not contain any of the data"):
        resample_img(img, far)
    assert issubclass(BoundingBoxError, ValueError)


@pytest.mark.parametrize("shape", [(7, 8, 9), (1, 5, 6), (3, 1, 1)])
@pytest.mark.parametrize("target", ["3x3-down", "4x4-no-shape", "oblique", "flipped"])
def test_planned_grid_equals_nilearn(shape, target):
    target_affine, target_shape = TARGETS[target]
    img = nib.Nifti1Image(np.zeros(shape, np.float32), OBLIQUE)
    try:
        expected = nilearn_resample_img(img, target_affine, target_shape, interpolation="nearest")
    except NilearnBoundingBoxError:
        with pytest.raises(BoundingBoxError):
            plan_target_grid(shape, OBLIQUE, target_affine, target_shape)
        return
    affine, planned_shape = plan_target_grid(shape, OBLIQUE, target_affine, target_shape)
    assert planned_shape == expected.shape
    np.testing.assert_array_equal(affine, expected.affine)
