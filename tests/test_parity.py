"""NiftiMasker.fit equals nilearn's voxel for voxel, for every walkthrough setting.

The oracle is nilearn 0.14.1 itself, run in the test on the same file. Runs
cover real EPI (nibabel, nitime, nipy samples), generated raw and
skull-stripped EPI, odd shapes, oblique affines, NaNs, and runs drawn at
random from seeds (shapes, dtypes, voxel sizes and rotations no one chose).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from _runs import RUNS, unseen_run
from nilearn.maskers import NiftiMasker as NilearnNiftiMasker

from daskmask import NiftiMasker
from daskmask._demo import WALKTHROUGH_SETTINGS


@pytest.fixture(scope="module")
def run_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("parity_runs")
    return {name: build(folder) for name, build in RUNS.items()}


def fit_both(imgs, params: dict) -> tuple:
    """Fit nilearn's and our masker on ``imgs``.

    When nilearn refuses the run (an empty mask: the MNI templates do not
    overlap a run that is not in MNI space, erosion empties tiny brains), ours
    must refuse it with the same exception and message; both are then None.
    """
    imgs = [str(i) for i in imgs] if isinstance(imgs, list) else str(imgs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            reference = NilearnNiftiMasker(**params).fit(imgs)
        except ValueError as exc:
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                NiftiMasker(**params).fit(imgs)
            return None, None
        ours = NiftiMasker(**params).fit(imgs)
    return reference, ours


def assert_same_mask(reference, ours) -> None:
    if reference is None:
        return  # both refused the run alike (checked in fit_both)
    expected = np.asanyarray(reference.mask_img_.dataobj)
    got = np.asanyarray(ours.mask_img_.dataobj)
    assert got.shape == expected.shape
    np.testing.assert_allclose(ours.mask_img_.affine, reference.mask_img_.affine, atol=1e-10)
    mismatch = np.argwhere((got != 0) != (expected != 0))
    first = mismatch[:5].tolist()
    assert mismatch.size == 0, f"{len(mismatch)} voxels differ, first ones: {first}"
    assert ours.n_elements_ == reference.n_elements_


@pytest.mark.parametrize("setting", [label for label, _ in WALKTHROUGH_SETTINGS])
@pytest.mark.parametrize("run_name", list(RUNS))
def test_mask_equals_nilearn(run_paths, run_name, setting):
    params = dict(WALKTHROUGH_SETTINGS)[setting]
    reference, ours = fit_both(run_paths[run_name], params)
    assert_same_mask(reference, ours)


@pytest.mark.parametrize("seed", [101, 202, 303, 404])
@pytest.mark.parametrize(
    "setting", ["background (default)", "epi", "epi, target_affine=np.eye(3) * 8"]
)
def test_mask_equals_nilearn_on_unseen_runs(tmp_path, seed, setting):
    path = unseen_run(seed)(tmp_path)
    reference, ours = fit_both(path, dict(WALKTHROUGH_SETTINGS)[setting])
    assert_same_mask(reference, ours)


@pytest.mark.parametrize(
    "mask_args",
    [
        {"border_size": 1},
        {"border_size": 3, "connected": True},
        {"opening": 2},
    ],
)
def test_background_mask_args_equal_nilearn(run_paths, mask_args):
    params = {"mask_strategy": "background", "mask_args": mask_args}
    reference, ours = fit_both(run_paths["generated-raw"], params)
    assert_same_mask(reference, ours)


@pytest.mark.parametrize(
    "mask_args",
    [
        {"exclude_zeros": True},
        {"connected": False, "opening": 0},
        {"lower_cutoff": 0.3, "upper_cutoff": 0.7, "opening": 3},
        {"ensure_finite": False},
    ],
)
def test_epi_mask_args_equal_nilearn(run_paths, mask_args):
    params = {"mask_strategy": "epi", "mask_args": mask_args}
    reference, ours = fit_both(run_paths["example4d"], params)
    assert_same_mask(reference, ours)


@pytest.mark.parametrize(
    "params",
    [
        {"target_affine": np.diag([4.0, 4.0, 4.0])},
        {"target_affine": np.diag([5.0, 5.0, 5.0, 1.0]), "target_shape": (20, 20, 12)},
        {"target_affine": [[3, 0, 0], [0, 3, 0], [0, 0, 3]]},
    ],
    ids=["3x3", "4x4+shape", "list-3x3"],
)
def test_target_grid_equals_nilearn(run_paths, params):
    reference, ours = fit_both(run_paths["generated-skull-stripped"], params)
    assert_same_mask(reference, ours)


def test_list_of_3d_files_equals_nilearn(tmp_path, run_paths):
    import nibabel as nib

    img = nib.load(run_paths["nitime-fmri1"])
    paths = []
    for t in range(6):
        path = tmp_path / f"vol{t:02d}.nii.gz"
        nib.save(img.slicer[..., t], path)
        paths.append(str(path))
    for params in ({}, {"mask_strategy": "epi", "mask_args": {"opening": 1}}):
        assert_same_mask(*fit_both(paths, params))
