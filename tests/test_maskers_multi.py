"""MultiNiftiMasker against nilearn's, and NiftiMasker's refusal of a list of runs.

nilearn 0.14.1 is the oracle: masks voxel for voxel, signals within the
tolerances of :func:`_signal_helpers.assert_close`, on real runs (nibabel's
example4d, nitime's fmri1, split into runs) and generated runs (2 to 6).
"""

from __future__ import annotations

import importlib.resources
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from _runs import rotation_affine
from _signal_helpers import assert_close
from dask.callbacks import Callback
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nilearn.maskers import MultiNiftiMasker as NilearnMultiNiftiMasker
from nilearn.maskers import NiftiMasker as NilearnNiftiMasker
from sklearn.base import clone

import daskmask as dm
from daskmask.datasets import generate_epi
from daskmask.exceptions import DimensionError

STRATEGIES = ["background", "epi", "whole-brain-template", "gm-template", "wm-template"]


def _real(package: str, relative: str) -> Path:
    return Path(str(importlib.resources.files(package) / relative))


EXAMPLE4D = _real("nibabel", "tests/data/example4d.nii.gz")
FMRI1 = _real("nitime", "data/fmri1.nii.gz")


def _save_part(source: Path, folder: Path, name: str, volumes: slice) -> str:
    """A real run cut in time (two runs of one subject), saved with its header."""
    img = nib.load(source)
    data = np.asanyarray(img.dataobj)[..., volumes]
    path = folder / name
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    return str(path)


def _save_cropped(source: Path, folder: Path) -> str:
    """A real run cropped in space (another grid over the same anatomy)."""
    cropped = nib.load(source).slicer[6:118, 5:90, 1:22]
    path = folder / "example4d_cropped.nii.gz"
    nib.save(cropped, path)
    return str(path)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    folder = tmp_path_factory.mktemp("real")
    return {
        "fmri1-halves": [
            _save_part(FMRI1, folder, "fmri1_a.nii.gz", slice(0, 20)),
            _save_part(FMRI1, folder, "fmri1_b.nii", slice(20, 40)),
        ],
        # real runs on two overlapping grids (the second cropped, its affine shifted):
        # transform resamples the second to the first one's grid; example4d is in an
        # MNI-like space, where the template strategies find a brain
        "example4d-then-cropped": [str(EXAMPLE4D), _save_cropped(EXAMPLE4D, folder)],
    }


def _generated_runs(folder: Path, n_runs: int, seed: int, grids: bool = False) -> list[str]:
    """``n_runs`` generated runs of different lengths; on different grids with ``grids``."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(n_runs):
        shape = (18, 20, 16)
        affine = np.diag([3.0, 3.0, 3.0, 1.0])
        affine[:3, 3] = -np.array(shape) * 1.5
        if grids and index % 2 == 1:
            shape = (16, 19, 15)
            affine = rotation_affine(3.2, shape, float(rng.uniform(-8, 8)))
        paths.append(
            str(
                generate_epi(
                    folder / f"run{seed}_{index}{'.nii.gz' if index % 3 == 2 else '.nii'}",
                    shape=shape,
                    n_timepoints=int(rng.integers(12, 20)),
                    kind=str(rng.choice(["raw", "skull-stripped"])),
                    dtype=str(rng.choice(["int16", "float32"])),
                    seed=seed * 10 + index,
                    affine=affine,
                )
            )
        )
    return paths


def _quiet(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _mask_data(masker: Any) -> np.ndarray:
    return np.asarray(masker.mask_img_.dataobj).astype(bool)


def _compare(
    ours: Any, theirs: Any, runs: list[str], fit_runs: Any = None, **transform_kwargs: Any
) -> None:
    """Fit both on ``fit_runs`` (``runs``); equal masks and equal signals for every run."""
    _quiet(ours.fit, runs if fit_runs is None else fit_runs)
    _quiet(theirs.fit, runs if fit_runs is None else fit_runs)
    np.testing.assert_array_equal(_mask_data(ours), _mask_data(theirs))
    if theirs.n_elements_ == 0:  # accepted by fit, refused by transform
        for masker in (ours, theirs):
            with pytest.raises(ValueError, match="The mask is invalid as it is empty"):
                _quiet(masker.transform, runs, **transform_kwargs)
        return
    ours_out = _quiet(ours.transform, runs, **transform_kwargs)
    theirs_out = _quiet(theirs.transform, runs, **transform_kwargs)
    np.testing.assert_allclose(ours.mask_img_.affine, theirs.mask_img_.affine)
    assert ours.n_elements_ == theirs.n_elements_
    assert isinstance(ours_out, list) and len(ours_out) == len(theirs_out)
    for signals, expected in zip(ours_out, theirs_out, strict=True):
        assert isinstance(signals, xr.DataArray) and signals.dims == ("time", "voxel")
        assert_close(signals.values, expected)


# ------------------------------------------------------------------ parity


@pytest.mark.parametrize(
    ("strategy", "runs_name"),
    [
        (strategy, runs_name)
        for strategy in ("background", "epi")
        for runs_name in ("fmri1-halves",)
    ]
    + [(strategy, "example4d-then-cropped") for strategy in STRATEGIES],
)
def test_real_runs_equal_nilearn(real_runs, strategy: str, runs_name: str) -> None:
    # example4d has 2 volumes: detrending leaves rounding noise only, z-scored to +-0.7
    cleaning = (
        {"detrend": True, "standardize": "zscore_sample"}
        if runs_name == "fmri1-halves"
        else {"standardize": "psc"}
    )
    params = {"mask_strategy": strategy, **cleaning}
    runs = real_runs[runs_name]
    ours, theirs = dm.MultiNiftiMasker(**params), NilearnMultiNiftiMasker(**params)
    if runs_name.endswith("-halves"):
        _compare(ours, theirs, runs)
        return
    # runs on two grids: the multi-run mask needs one grid (both refuse), transform
    # resamples the second run to the first one's grid
    for masker in (ours, theirs):
        with pytest.raises(ValueError, match="[Ff]ield of view"):
            _quiet(masker.fit, runs)
    _compare(ours, theirs, runs, fit_runs=runs[:1])


@pytest.mark.parametrize(
    ("strategy", "mask_args"),
    [
        ("background", {"threshold": 0.0}),
        ("background", {"threshold": 1.0, "opening": 1}),
        ("epi", {"threshold": 0.3, "lower_cutoff": 0.1, "upper_cutoff": 0.9}),
        ("epi", {"threshold": 1.0, "exclude_zeros": True, "connected": False}),
        ("whole-brain-template", {"threshold": 0.2, "opening": False}),
        ("gm-template", {"threshold": 0.3}),
    ],
)
def test_mask_args_and_threshold_equal_nilearn(tmp_path, strategy, mask_args) -> None:
    runs = _generated_runs(tmp_path, 4, seed=3)
    params = {"mask_strategy": strategy, "mask_args": mask_args}
    _compare(dm.MultiNiftiMasker(**params), NilearnMultiNiftiMasker(**params), runs)


@pytest.mark.parametrize("strategy", ["background", "epi", "wm-template"])
def test_target_affine_mask_computed_on_the_target_grid(tmp_path, strategy) -> None:
    runs = _generated_runs(tmp_path, 3, seed=5)
    target = np.diag([4.0, 4.0, 4.0, 1.0])
    target[:3, 3] = [-26.0, -30.0, -22.0]
    for params in (
        {"target_affine": np.diag([4.5, 4.5, 4.5])},
        {"target_affine": target, "target_shape": (14, 16, 12)},
    ):
        params = {"mask_strategy": strategy, "detrend": True, **params}
        _compare(dm.MultiNiftiMasker(**params), NilearnMultiNiftiMasker(**params), runs)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    n_runs=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    strategy=st.sampled_from(["background", "epi", "whole-brain-template"]),
    threshold=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
    detrend=st.booleans(),
    standardize=st.sampled_from([None, "zscore_sample", "psc"]),
    with_confounds=st.booleans(),
    with_sample_mask=st.booleans(),
    grids=st.booleans(),
)
def test_generated_runs_equal_nilearn(
    tmp_path_factory,
    n_runs,
    seed,
    strategy,
    threshold,
    detrend,
    standardize,
    with_confounds,
    with_sample_mask,
    grids,
) -> None:
    folder = tmp_path_factory.mktemp("generated")
    runs = _generated_runs(folder, n_runs, seed, grids=grids)
    lengths = [nib.load(run).shape[3] for run in runs]
    rng = np.random.default_rng(seed)
    kwargs: dict[str, Any] = {}
    if with_confounds:
        kwargs["confounds"] = [rng.normal(size=(n, 2)) for n in lengths]
    if with_sample_mask:
        # scrubbing without extrapolation: only middle volumes are censored
        kwargs["sample_mask"] = [np.delete(np.arange(n), [n // 2, n // 2 + 1]) for n in lengths]
    params = {
        "mask_strategy": strategy,
        "mask_args": {"threshold": threshold},
        "detrend": detrend,
        "standardize": standardize,
    }
    ours, theirs = dm.MultiNiftiMasker(**params), NilearnMultiNiftiMasker(**params)
    # the mask from the runs on the first grid (the others are on their own grids)
    _compare(ours, theirs, runs, fit_runs=runs[::2] if grids else runs, **kwargs)


def test_runs_on_other_grids_resampled_to_the_first_with_nilearn_warning(tmp_path) -> None:
    runs = _generated_runs(tmp_path, 3, seed=8, grids=True)
    mask = dm.NiftiMasker().fit(runs[0]).mask_img_
    ours, theirs = dm.MultiNiftiMasker(mask_img=mask), NilearnMultiNiftiMasker(mask_img=mask)
    ours.fit()
    theirs.fit()
    with pytest.warns(UserWarning, match="Realignment on first subject affine forced"):
        signals = ours.transform(runs)
    expected = _quiet(theirs.transform, runs)
    for one, other in zip(signals, expected, strict=True):
        assert_close(one.values, other)
    # with a target grid, nilearn requires the runs on one grid
    targeted = dm.MultiNiftiMasker(mask_img=mask, target_affine=np.diag([4.0, 4.0, 4.0]))
    with pytest.raises(ValueError, match="Field of view of image #1 is different"):
        _quiet(targeted.fit().transform, runs)


def test_one_run_gives_what_nilearn_gives_for_it(tmp_path) -> None:
    run = _generated_runs(tmp_path, 1, seed=2)[0]
    confounds = np.random.default_rng(0).normal(size=(nib.load(run).shape[3], 3))
    ours = dm.MultiNiftiMasker(detrend=True).fit(run)
    theirs = NilearnMultiNiftiMasker(detrend=True).fit(run)
    signals = ours.transform(run, confounds=[confounds])
    assert isinstance(signals, xr.DataArray)
    assert_close(signals.values, _quiet(theirs.transform, run, confounds=[confounds]))
    # a list of 3D volumes is a list of runs of one volume each
    volumes = [nib.load(run).slicer[..., index] for index in range(3)]
    ours_volumes = ours.transform(volumes)
    theirs_volumes = _quiet(theirs.transform, volumes)
    assert [one.dims for one in ours_volumes] == [("voxel",)] * 3
    for one, other in zip(ours_volumes, theirs_volumes, strict=True):
        assert_close(one.values, other)


def test_every_run_cleaned_on_its_own(tmp_path) -> None:
    runs = _generated_runs(tmp_path, 3, seed=4)
    masker = dm.MultiNiftiMasker(detrend=True, standardize="zscore_sample").fit(runs)
    together = masker.transform(runs)
    for run, signals in zip(runs, together, strict=True):
        alone = masker.transform(run)
        np.testing.assert_array_equal(signals.values, alone.values)
        # each run is z-scored on its own
        np.testing.assert_allclose(signals.values.mean(axis=0), 0, atol=1e-5)


# ------------------------------------------------------------------ one computation, lazy


class _Computations(Callback):
    """Count the dask computations (one ``start`` per compute)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _start(self, dsk: Any) -> None:
        self.count += 1


def test_fit_reduces_all_runs_means_in_one_computation(tmp_path) -> None:
    runs = _generated_runs(tmp_path, 5, seed=6)
    for strategy in ("background", "epi"):
        with _Computations() as counter:
            masker = dm.MultiNiftiMasker(mask_strategy=strategy).fit(runs)
        assert counter.count == 1
    with _Computations() as counter:
        signals = masker.transform(runs)
    assert counter.count == 0  # lazy
    with _Computations() as counter:
        computed = dask.compute(*signals)
    assert counter.count == 1
    assert [one.shape for one in computed] == [one.shape for one in signals]


# ------------------------------------------------------------------ the rest of the API


def test_parameters_inverse_transform_and_report(tmp_path) -> None:
    runs = _generated_runs(tmp_path, 2, seed=9)
    ours = dm.MultiNiftiMasker(n_jobs=4)
    theirs = NilearnMultiNiftiMasker(n_jobs=4)
    assert ours.get_params() == theirs.get_params()
    assert clone(ours).get_params()["memory_level"] == 0
    signals = ours.fit_transform(runs)
    images = ours.inverse_transform(signals)
    expected = _quiet(theirs.fit(runs).inverse_transform, _quiet(theirs.transform, runs)[0])
    assert len(images) == 2
    np.testing.assert_allclose(images[0].get_fdata(), expected.get_fdata(), rtol=1e-6)
    one = ours.inverse_transform(signals[1])
    np.testing.assert_array_equal(one.get_fdata(), images[1].get_fdata())
    written = ours.inverse_transform(signals, filename=[tmp_path / "a.nii", tmp_path / "b.nii"])
    np.testing.assert_array_equal(written[1].get_fdata(), images[1].get_fdata())
    with pytest.raises(TypeError, match="one file per signals array"):
        ours.inverse_transform(signals, filename=[tmp_path / "a.nii"])
    with pytest.warns(UserWarning, match="Only first subject is shown"):
        report = ours.generate_report()
    html = str(report)
    assert "MultiNiftiMasker" in html and "The mask includes" in html


def test_bad_per_run_arguments_name_the_problem(tmp_path) -> None:
    runs = _generated_runs(tmp_path, 2, seed=1)
    masker = dm.MultiNiftiMasker().fit(runs)
    lengths = [nib.load(run).shape[3] for run in runs]
    with pytest.raises(TypeError, match="'confounds' must be None or a list.*Got ndarray"):
        masker.transform(runs, confounds=np.zeros((lengths[0], 2)))
    with pytest.raises(TypeError, match="'sample_mask' must be None or a list.*Got tuple"):
        masker.transform(runs, sample_mask=(None, None))
    with pytest.raises(ValueError, match=r"number of confounds \(1\) unequal to number of "):
        masker.transform(runs, confounds=[np.zeros((lengths[0], 2))])
    with pytest.raises(ValueError, match=r"number of sample_mask \(3\) unequal"):
        masker.transform(runs, sample_mask=[None, None, None])
    with pytest.raises(TypeError, match="empty list"):
        dm.MultiNiftiMasker().fit([])
    with pytest.raises(TypeError, match="n_jobs"):
        dm.MultiNiftiMasker(n_jobs="2").fit(runs)
    with pytest.warns(UserWarning, match="'template' is deprecated"):
        deprecated = dm.MultiNiftiMasker(mask_strategy="template").fit(runs)
    whole_brain = dm.MultiNiftiMasker(mask_strategy="whole-brain-template").fit(runs)
    np.testing.assert_array_equal(_mask_data(deprecated), _mask_data(whole_brain))
    with pytest.warns(UserWarning, match="not supported by the masking strategy"):
        dm.MultiNiftiMasker(mask_args={"lower_cutoff": 0.3}).fit(runs)


# ------------------------------------------------------------------ a list of runs is not one run


def test_nifti_masker_refuses_a_list_of_4d_runs_as_nilearn(tmp_path) -> None:
    runs = _generated_runs(tmp_path, 2, seed=7)
    with pytest.raises(DimensionError, match="5D.*MultiNiftiMasker") as raised:
        dm.NiftiMasker().fit_transform(runs)
    with pytest.raises(Exception, match="5D") as nilearn_raised:
        NilearnNiftiMasker().fit_transform(runs)
    assert type(nilearn_raised.value).__name__ == "DimensionError"
    assert "concat='time'" in str(raised.value)
    # fit accepts it, as nilearn does for images in memory (it refuses files): the mask
    # of all the volumes; transform refuses it
    images = [nib.Nifti1Image(nib.load(run).get_fdata(), nib.load(run).affine) for run in runs]
    ours, theirs = dm.NiftiMasker().fit(images), _quiet(NilearnNiftiMasker().fit, images)
    np.testing.assert_array_equal(_mask_data(ours), _mask_data(theirs))
    with pytest.raises(DimensionError, match="MultiNiftiMasker"):
        ours.transform(runs)
    # a list of 3D volumes stays one 4D run
    volumes = [nib.load(runs[0]).slicer[..., index] for index in range(4)]
    assert_close(
        dm.NiftiMasker().fit_transform(volumes).values,
        _quiet(NilearnNiftiMasker().fit_transform, volumes),
    )
    # concatenation stays available on request
    joined = dm.open_nifti(runs, concat="time")
    assert joined.shape[3] == sum(nib.load(run).shape[3] for run in runs)
