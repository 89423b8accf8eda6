"""Warnings name the user's line, whatever the path through daskmask (daskmask._warnings)."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import daskmask as dm
from daskmask.datasets import generate_epi
from daskmask.exceptions import MaskWarning

HERE = Path(__file__).name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warnings_run")
    return str(generate_epi(folder / "run.nii", shape=(12, 14, 10), n_timepoints=8, seed=2))


def _points_here(record, category: type[Warning], match: str) -> None:
    found = [
        w
        for w in record
        if issubclass(w.category, category) and match.lower() in str(w.message).lower()
    ]
    assert found, [str(w.message) for w in record]
    assert all(Path(w.filename).name == HERE for w in found), [w.filename for w in found]


def _recorded(action):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        action()
    return record


@pytest.mark.parametrize("path", ["fit_transform", "transform"])
def test_boolean_standardize_warns_at_the_call(run, path):
    masker = dm.NiftiMasker(standardize=True)
    if path == "fit_transform":
        record = _recorded(lambda: masker.fit_transform(run))
    else:
        masker.fit(run)
        record = _recorded(lambda: masker.transform(run))
    _points_here(record, FutureWarning, "standardize")


def test_unsupported_mask_args_warn_at_fit(run):
    record = _recorded(lambda: dm.NiftiMasker(mask_args={"no_such_argument": 1}).fit(run))
    _points_here(record, UserWarning, "not supported by the masking strategy")


def test_empty_mask_warns_at_the_mask_function(tmp_path):
    empty = nib.Nifti1Image(np.zeros((8, 8, 8, 3), dtype=np.float32), np.eye(4))
    record = _recorded(lambda: dm.compute_background_mask(empty))
    _points_here(record, MaskWarning, "empty mask")


def test_non_finite_mask_img_warns_at_fit(run):
    data = np.ones((12, 14, 10), dtype=np.float32)
    data[0, 0, 0] = np.nan
    mask = nib.Nifti1Image(data, nib.load(run).affine)
    record = _recorded(lambda: dm.NiftiMasker(mask_img=mask).fit())
    _points_here(record, UserWarning, "non-finite")


def test_multi_masker_resampling_warns_at_transform(run, tmp_path):
    other = generate_epi(
        tmp_path / "other.nii", shape=(10, 12, 9), n_timepoints=8, seed=3,
        affine=np.diag([3.3, 3.3, 3.3, 1.0]),
    )  # fmt: skip
    masker = dm.MultiNiftiMasker(mask_strategy="epi").fit([run, run])
    record = _recorded(lambda: masker.transform([run, str(other)]))
    _points_here(record, UserWarning, "Realignment on first subject affine forced")


def test_integer_dtype_after_smoothing_warns_at_apply_mask(run):
    from daskmask.extraction import apply_mask

    mask = dm.NiftiMasker().fit(run).mask_img_
    record = _recorded(lambda: apply_mask(run, mask, dtype="int32", smoothing_fwhm=6))
    _points_here(record, UserWarning, "cast to the requested integer dtype")
