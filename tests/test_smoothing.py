"""daskmask.image.smooth_array against nilearn.image.smooth_array."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from nilearn.image.image import smooth_array as nilearn_smooth_array

from daskmask.image import smooth_array

AFFINES = {
    "iso": np.eye(4),
    "aniso": np.diag([2.0, 3.0, 4.0, 1.0]),
    "oblique": np.array([[2.0, 0.3, 0, 1], [0.2, 3.0, 0, 2], [0, 0.1, 1.5, 3], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("affine", list(AFFINES))
@pytest.mark.parametrize("fwhm", [1, 4.5, (2.0, None, 3.0), "fast", None])
@pytest.mark.parametrize("dtype", ["int16", "uint8", "int64", "float32", "float64"])
@pytest.mark.parametrize("shape", [(7, 8, 9), (6, 5, 4, 3)])
def test_smooth_array_equals_nilearn(affine, fwhm, dtype, shape):
    rng = np.random.default_rng(0)
    data = (rng.random(shape) * 50).astype(dtype)
    expected = nilearn_smooth_array(data, AFFINES[affine], fwhm=fwhm)
    actual = smooth_array(data, AFFINES[affine], fwhm=fwhm)
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("ensure_finite", [True, False])
def test_non_finite_values(ensure_finite):
    data = np.random.default_rng(1).random((6, 7, 8))
    data[3, 3, 3] = np.nan
    data[0, 1, 2] = -np.inf
    with np.errstate(invalid="ignore"):
        expected = nilearn_smooth_array(data, np.eye(4), 2, ensure_finite=ensure_finite)
        actual = smooth_array(data, np.eye(4), 2, ensure_finite=ensure_finite)
    np.testing.assert_array_equal(actual, expected)
    assert np.isfinite(actual).all() == ensure_finite


def test_copy_false_works_in_place_and_copy_true_does_not():
    data = np.random.default_rng(2).random((5, 6, 7))
    original = data.copy()
    smooth_array(data, np.eye(4), 3)
    np.testing.assert_array_equal(data, original)
    result = smooth_array(data, np.eye(4), 3, copy=False)
    assert result is data
    assert not np.array_equal(data, original)


def test_zero_fwhm_warns_and_does_not_smooth():
    data = np.random.default_rng(3).random((5, 6, 7))
    with pytest.warns(UserWarning, match="'fwhm' for smoothing is specified as 0"):
        result = smooth_array(data, np.eye(4), 0)
    np.testing.assert_array_equal(result, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smooth_array(data, np.eye(4), None)
