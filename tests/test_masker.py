"""NiftiMasker: scikit-learn conventions, fit, user masks, logs and bad input."""

from __future__ import annotations

import inspect
import os
import pickle
import re
import warnings
from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from _runs import RUNS
from nilearn.maskers import NiftiMasker as NilearnNiftiMasker
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from daskmask import NiftiMasker, open_nifti
from daskmask.datasets import generate_epi
from daskmask.exceptions import DimensionError, MaskWarning, NiftiReadError, NotFittedError


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("masker_runs")
    return generate_epi(
        folder / "sub-01_task-rest_bold.nii.gz", shape=(24, 28, 20), n_timepoints=8, seed=7
    )


@pytest.fixture(scope="module")
def stripped_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("masker_stripped")
    return RUNS["generated-skull-stripped"](folder)


# ------------------------------------------------------------ conventions


def test_parameters_and_defaults_are_nilearns():
    ours = inspect.signature(NiftiMasker.__init__).parameters
    theirs = inspect.signature(NilearnNiftiMasker.__init__).parameters
    assert list(ours) == list(theirs)
    for name in theirs:
        assert ours[name].default == theirs[name].default, name
    assert sorted(NiftiMasker().get_params()) == sorted(NilearnNiftiMasker().get_params())


@pytest.mark.parametrize(
    "check",
    [
        check_parameters_default_constructible,
        check_no_attributes_set_in_init,
        check_get_params_invariance,
        check_set_params,
    ],
)
def test_scikit_learn_checks(check):
    check("NiftiMasker", NiftiMasker())


def test_clone_set_params_and_pipeline(run_path):
    masker = NiftiMasker(mask_strategy="epi", mask_args={"opening": 1})
    copy = clone(masker)
    assert copy.get_params() == masker.get_params()
    copy.set_params(mask_strategy="background", verbose=1)
    assert copy.mask_strategy == "background" and masker.mask_strategy == "epi"
    pipeline = make_pipeline(NiftiMasker())
    pipeline.fit(str(run_path))
    assert pipeline[0].n_elements_ > 0


def test_fit_returns_self_and_leaves_parameters_alone(run_path):
    mask_args = {"opening": 1}
    target_affine = np.eye(3) * 4
    masker = NiftiMasker(mask_strategy="epi", mask_args=mask_args, target_affine=target_affine)
    before = {
        k: (v.copy() if isinstance(v, (np.ndarray, dict)) else v)
        for k, v in masker.get_params().items()
    }
    assert masker.fit(run_path) is masker
    after = masker.get_params()
    assert after["mask_args"] == before["mask_args"] and after["mask_args"] is mask_args
    np.testing.assert_array_equal(after["target_affine"], before["target_affine"])
    assert masker.affine_.shape == (4, 4)
    assert isinstance(masker.n_elements_, int) and masker.n_elements_ > 0
    assert masker.clean_args_ == {}
    assert masker.mask_img_.get_fdata().sum() == masker.n_elements_


def test_pickle_fitted_masker(run_path):
    masker = NiftiMasker().fit(run_path)
    restored = pickle.loads(pickle.dumps(masker))
    np.testing.assert_array_equal(restored.mask_img_.get_fdata(), masker.mask_img_.get_fdata())
    assert restored.n_elements_ == masker.n_elements_


def test_fit_is_idempotent_and_accepts_every_input_form(run_path):
    expected = NiftiMasker().fit(run_path).mask_img_.get_fdata()
    for imgs in (
        run_path,
        str(run_path),
        nib.load(run_path),
        open_nifti(run_path),
        str(run_path.parent / "sub-01_*.nii.gz"),
    ):
        got = NiftiMasker().fit(imgs).mask_img_.get_fdata()
        np.testing.assert_array_equal(got, expected)


def test_unfitted_masker_says_so():
    masker = NiftiMasker()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        masker._check_fitted()
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError
    from sklearn.utils.validation import check_is_fitted

    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(masker)


def test_fit_on_a_distributed_cluster_equals_threads(run_path):
    from distributed import Client, LocalCluster

    expected = NiftiMasker(mask_strategy="epi").fit(run_path).mask_img_.get_fdata()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        got = NiftiMasker(mask_strategy="epi").fit(run_path).mask_img_.get_fdata()
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------ user masks


@pytest.mark.parametrize(
    "values",
    [
        {"inside": 1.0},
        {"inside": -3.0},
        {"inside": 0.3},
        {"inside": 2.0, "nan": True},
    ],
    ids=["ones", "negative", "fraction", "with-nan"],
)
def test_user_mask_binarised_as_nilearn(tmp_path, run_path, values):
    img = nib.load(run_path)
    data = np.zeros(img.shape[:3], dtype=np.float32)
    data[5:15, 6:20, 4:12] = values["inside"]
    if values.get("nan"):
        data[0, 0, 0] = np.nan
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), mask_path)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        reference = NilearnNiftiMasker(mask_img=str(mask_path)).fit()
        ours = NiftiMasker(mask_img=str(mask_path)).fit()
    np.testing.assert_array_equal(ours.mask_img_.get_fdata(), reference.mask_img_.get_fdata())
    assert ours.n_elements_ == reference.n_elements_


def test_user_mask_non_finite_warns(tmp_path, run_path):
    img = nib.load(run_path)
    data = np.ones(img.shape[:3], dtype=np.float32)
    data[1, 1, 1] = np.inf
    with pytest.warns(UserWarning, match="Non-finite values detected"):
        masker = NiftiMasker(mask_img=nib.Nifti1Image(data, img.affine)).fit()
    assert masker.n_elements_ == data.size - 1


def test_4d_user_mask_keeps_voxels_nonzero_everywhere(run_path):
    img = nib.load(run_path)
    data = np.zeros(img.shape[:3] + (2,), dtype=np.int16)
    data[2:10, 2:10, 2:10, 0] = 1
    data[4:12, 4:12, 4:12, 1] = 1
    masker = NiftiMasker(mask_img=nib.Nifti1Image(data, img.affine)).fit()
    assert masker.n_elements_ == 6**3


def test_user_mask_with_images_warns_and_wins(run_path):
    img = nib.load(run_path)
    data = np.zeros(img.shape[:3], dtype=np.uint8)
    data[3:6, 3:6, 3:6] = 1
    with pytest.warns(RuntimeWarning, match="Given mask will be used"):
        masker = NiftiMasker(mask_img=nib.Nifti1Image(data, img.affine)).fit(run_path)
    assert masker.n_elements_ == 27


def test_user_mask_resampled_to_target_as_nilearn(stripped_path):
    mask = NilearnNiftiMasker().fit(str(stripped_path)).mask_img_
    params = {"mask_img": mask, "target_affine": np.eye(3) * 5}
    reference = NilearnNiftiMasker(**params).fit()
    ours = NiftiMasker(**params).fit()
    np.testing.assert_array_equal(ours.mask_img_.get_fdata(), reference.mask_img_.get_fdata())
    np.testing.assert_allclose(ours.mask_img_.affine, reference.mask_img_.affine)


# ------------------------------------------------------------ logs


def log_lines(capsys, masker, imgs) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker.fit(imgs)
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize(
    "params",
    [{}, {"mask_strategy": "epi", "target_affine": np.eye(3) * 4}, {"verbose": True}],
)
def test_log_lines_read_like_nilearns(capsys, run_path, params):
    params = {"verbose": 1, **params}
    ours = log_lines(capsys, NiftiMasker(**params), str(run_path))
    theirs = log_lines(capsys, NilearnNiftiMasker(**params), str(run_path))
    assert ours == theirs
    assert ours[0] == "[NiftiMasker.fit] Loading data from sub-01_task-rest_b..."
    assert ours[1:] == [
        "[NiftiMasker.fit] Computing mask",
        "[NiftiMasker.fit] Resampling mask",
        "[NiftiMasker.fit] Finished fit",
    ]


def test_logs_silent_at_zero_and_richer_at_two(capsys, run_path):
    assert log_lines(capsys, NiftiMasker(verbose=0), run_path) == []
    one = log_lines(capsys, NiftiMasker(verbose=1), run_path)
    two = log_lines(capsys, NiftiMasker(verbose=2), run_path)
    assert len(two) >= len(one)
    assert str(run_path) in two[0]


# ------------------------------------------------------------ bad input


def nilearn_error(params: dict, imgs) -> type[BaseException]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            NilearnNiftiMasker(**params).fit(imgs)
        except Exception as exc:  # noqa: BLE001 - we want whatever nilearn raises
            return type(exc)
    raise AssertionError("nilearn accepted the input")


def flat_image(tmp_path: Path) -> str:
    path = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 9), dtype=np.float32), np.eye(4)), path)
    return str(path)


def constant_image(tmp_path: Path) -> str:
    path = tmp_path / "constant.nii"
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2, 3), dtype=np.float32), np.eye(4)), path)
    return str(path)


@pytest.mark.parametrize(
    ("params", "make_imgs", "match"),
    [
        ({}, lambda tmp: str(tmp / "missing.nii.gz"), "File not found"),
        ({}, lambda tmp: str(tmp / "nothing*.nii"), "No files matching"),
        ({}, lambda tmp: 42, "NiftiLike"),
        ({}, flat_image, "Computation expects 3D or 4D images, but 2 dimensions"),
        ({"mask_strategy": "oops"}, lambda tmp: None, "Unknown value of mask_strategy 'oops'"),
        ({"mask_strategy": "template"}, lambda tmp: None, "Unknown value of mask_strategy"),
        ({"mask_strategy": "epi"}, constant_image, "The mask is invalid as it is empty"),
        ({"target_shape": (10, 10, 10)}, lambda tmp: None, "target_affine should be specified"),
        (
            {"target_shape": (10, 10, 10), "target_affine": np.eye(3)},
            lambda tmp: None,
            "shape should be \\(4, 4\\)",
        ),
        ({"dtype": bool}, lambda tmp: None, "'dtype' cannot be bool"),
        ({"standardize": "zscore"}, lambda tmp: None, "'standardize' must be one of"),
        ({"detrend": 1}, lambda tmp: None, "'detrend' must be of type"),
        ({"t_r": "2"}, lambda tmp: None, "'t_r' must be of type"),
    ],
)
def test_bad_input_raises_nilearns_exception_type(tmp_path, run_path, params, make_imgs, match):
    imgs = make_imgs(tmp_path)
    imgs = str(run_path) if imgs is None else imgs
    expected = nilearn_error(params, imgs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(expected, match=match):
            NiftiMasker(**params).fit(imgs)


def test_failed_fit_leaves_the_masker_unfitted(tmp_path, run_path):
    masker = NiftiMasker().fit(run_path)
    masker.set_params(mask_strategy="oops")
    with pytest.raises(ValueError):
        masker.fit(run_path)
    assert not hasattr(masker, "mask_img_")


def test_no_mask_and_no_images():
    with pytest.raises(ValueError, match="Parameter 'imgs' must be provided"):
        NiftiMasker().fit()


def test_empty_computed_mask_warns_then_raises(tmp_path):
    with (
        pytest.warns(MaskWarning, match="Computed an empty mask"),
        pytest.raises(ValueError, match="The mask is invalid as it is empty"),
    ):
        NiftiMasker(mask_strategy="epi").fit(constant_image(tmp_path))


def test_empty_user_mask(run_path):
    img = nib.load(run_path)
    empty = nib.Nifti1Image(np.zeros(img.shape[:3], dtype=np.uint8), img.affine)
    with pytest.raises(ValueError, match="The mask is invalid as it is empty"):
        NiftiMasker(mask_img=empty).fit()


def test_unsupported_mask_args_warn_and_are_dropped(run_path):
    with pytest.warns(
        UserWarning,
        match=re.escape(
            "The following arguments are not supported by the masking strategy 'background': "
            "['lower_cutoff']"
        ),
    ):
        masker = NiftiMasker(mask_args={"lower_cutoff": 0.3}).fit(run_path)
    assert masker.n_elements_ == NiftiMasker().fit(run_path).n_elements_


def test_mask_args_cannot_override_verbose(run_path):
    with pytest.raises(TypeError, match="verbose"):
        NiftiMasker(mask_args={"verbose": 3}).fit(run_path)


def test_images_with_different_fields_of_view(tmp_path):
    a = generate_epi(tmp_path / "a.nii", shape=(10, 11, 12), n_timepoints=2, seed=1)
    b = generate_epi(tmp_path / "b.nii", shape=(10, 11, 13), n_timepoints=2, seed=1)
    with pytest.raises(ValueError, match="Field of view of image #1 is different"):
        NiftiMasker().fit([str(a), str(b)])


def test_truncated_nii_names_the_file(tmp_path, run_path):
    source = nib.load(run_path)
    path = tmp_path / "truncated.nii"
    nib.save(source, path)
    size = path.stat().st_size
    with open(path, "r+b") as stream:
        stream.truncate(size // 2)
    with pytest.raises(NiftiReadError, match="truncated.nii"):
        NiftiMasker().fit(path)


def test_corrupt_nii_gz_names_the_file(tmp_path, run_path):
    path = tmp_path / "corrupt.nii.gz"
    raw = bytearray(run_path.read_bytes())
    # Keep the gzip header and the NIfTI header intact, garble the compressed data.
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiReadError, match="corrupt.nii.gz"):
        NiftiMasker().fit(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.nii"
    path.write_text("this is not a NIfTI image\n" * 40)
    with pytest.raises(NiftiReadError, match="notes.nii"):
        NiftiMasker().fit(path)


def test_five_dimensional_input_is_a_dimension_error(tmp_path):
    path = tmp_path / "five.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2, 3), dtype=np.float32), np.eye(4)), path)
    with pytest.raises(DimensionError):
        NiftiMasker().fit(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_transform_reuses_the_mean_fit_computed_from_the_same_file(tmp_path, suffix):
    path = generate_epi(tmp_path / f"run{suffix}", shape=(12, 14, 10), n_timepoints=15, seed=2)
    expected = np.asanyarray(nib.load(path).dataobj).mean(axis=-1, dtype=np.float64)
    masker = NiftiMasker(mask_strategy="epi").fit(path)
    reused = masker.transform(path).attrs["mean_image"]
    assert isinstance(reused, np.ndarray) and reused.dtype == np.float64
    np.testing.assert_array_equal(reused, expected)
    # A derived array, another file or a newer version of the file: computed lazily.
    other = generate_epi(tmp_path / f"other{suffix}", shape=(12, 14, 10), n_timepoints=15)
    derived = open_nifti(path) * 1
    for source in (derived, other):
        assert isinstance(masker.transform(source).attrs["mean_image"], da.Array)
    stat = Path(path).stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 5))
    lazy = masker.transform(path).attrs["mean_image"]
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), expected)


# --- the signals contract and the fitted run ----------------------------------------------


def test_signals_follow_the_one_contract(run_path):
    from daskmask import signals as contract

    X = NiftiMasker().fit_transform(run_path)
    assert contract.check_signals(X, require_attrs=True) is X
    assert X.name == contract.NAME and X.dims == contract.DIMS
    assert set(contract.INDEX_COORDS + contract.WORLD_COORDS) <= set(X.coords)
    assert set(contract.JSON_ATTRS) <= set(X.attrs) and contract.MEAN_ATTR in X.attrs
    with pytest.raises(DimensionError, match=r"dims \('time', 'voxel'\)"):
        contract.check_signals(X.rename({"voxel": "feature"}))
    with pytest.raises(DimensionError, match="along 'voxel'"):
        contract.check_signals(X.assign_coords(i=("time", np.arange(X.shape[0]))))
    with pytest.raises(DimensionError, match="affine"):
        contract.check_signals(X.drop_attrs(), require_attrs=True)
    # A consumer holds daskmask's own signals to it.
    masker = NiftiMasker().fit(run_path)
    with pytest.raises(DimensionError, match="dims"):
        masker.inverse_transform(X.rename({"voxel": "feature"}))


def test_fit_keeps_one_fitted_run(run_path, tmp_path):
    masker = NiftiMasker().fit(run_path)
    fitted = masker._fitted_run
    assert fitted.decoded is not None  # a .nii.gz, scratch seen by every thread
    run = open_nifti(run_path)
    mean, decoded = fitted.kept_for(run)
    assert mean is fitted.mean and decoded is fitted.decoded
    # Pickled: the identity and the mean, never the decoded copy (a temporary of this process).
    restored = pickle.loads(pickle.dumps(masker))._fitted_run
    assert restored.key == fitted.key and np.array_equal(restored.mean, fitted.mean)
    assert restored.decoded is None
    # Another version of the file gets nothing of the fit.
    copy = tmp_path / "run.nii.gz"
    copy.write_bytes(Path(run_path).read_bytes())
    assert fitted.kept_for(open_nifti(copy)) == (None, None)
    # A mask given by the user: nothing computed, nothing kept.
    assert NiftiMasker(mask_img=masker.mask_img_).fit()._fitted_run is None
