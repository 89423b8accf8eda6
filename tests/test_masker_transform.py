"""NiftiMasker.transform / fit_transform / inverse_transform equal to nilearn.

The oracle is nilearn 0.14.1 run in the test on the same files. Tolerance:
float32 results must agree to a relative error of 1e-5 of the signal's
magnitude (``rtol=1e-5`` plus ``atol=1e-5 * max|expected|``, so values that
cancel to ~0, e.g. after detrending, are compared at the signal's scale);
float64 results to 1e-9.

``dtype="float64"`` is computed in float64 by daskmask; nilearn 0.14.1's
NiftiMasker cleans in float32 and only casts (its ``filter_and_mask`` does not
pass ``dtype`` on), so its float64 output carries float32 rounding that
OpenBLAS's float32 kernels make depend on the CPU (issue 9). The float64 oracle
is nilearn's own pipeline with ``dtype`` honoured (``filter_and_extract``).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from nilearn.maskers import NiftiMasker as NilearnNiftiMasker

from daskmask import NiftiMasker, open_nifti
from daskmask.datasets import generate_epi
from daskmask.exceptions import NotFittedError


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    import importlib.resources

    folder = tmp_path_factory.mktemp("transform_runs")
    return {
        "nitime-fmri1": Path(str(importlib.resources.files("nitime") / "data/fmri1.nii.gz")),
        "nipy-functional": Path(
            str(importlib.resources.files("nipy") / "testing/functional.nii.gz")
        ),
        "generated-raw": generate_epi(
            folder / "raw.nii.gz", shape=(30, 34, 26), n_timepoints=40, seed=21
        ),
        "generated-float32": generate_epi(
            folder / "stripped.nii",
            shape=(28, 30, 24),
            n_timepoints=40,
            kind="skull-stripped",
            dtype="float32",
            seed=22,
        ),
    }


def confounds_for(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.column_stack([np.sin(t / 3.0), rng.standard_normal(n), np.linspace(-1, 1, n) ** 2])


def assert_signals_equal(ours, theirs) -> None:
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    if theirs.dtype == np.float64:
        tolerance = 1e-9
    else:
        tolerance = 1e-5
    scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
    np.testing.assert_allclose(ours, theirs, rtol=tolerance, atol=tolerance * scale)


def transform_both(imgs, params: dict, **transform_kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnNiftiMasker(**params).fit_transform(imgs, **transform_kwargs)
        ours = NiftiMasker(**params).fit_transform(imgs, **transform_kwargs)
    return ours, theirs


CLEANING_SETTINGS = {
    "plain": {},
    "detrend": {"detrend": True},
    "zscore": {"standardize": "zscore_sample"},
    "psc": {"standardize": "psc"},
    "detrend+zscore": {"detrend": True, "standardize": "zscore_sample"},
    "band-pass": {"low_pass": 0.1, "high_pass": 0.01, "t_r": 2.0},
    "low-pass+detrend": {"low_pass": 0.08, "t_r": 2.5, "detrend": True},
    "cosine": {"high_pass": 0.01, "t_r": 2.0, "clean_args": {"filter": "cosine"}},
    "smoothing": {"smoothing_fwhm": 6.0},
    "target-grid": {"target_affine": np.eye(3) * 4},
    "dtype-float64": {"dtype": "float64", "detrend": True},
    "high-variance-confounds": {"high_variance_confounds": True},
    "epi-mask": {"mask_strategy": "epi", "standardize": "zscore_sample"},
}


def nilearn_in_float64(imgs, params: dict) -> np.ndarray:
    """nilearn's masker pipeline with its data loaded as float64 (``dtype`` honoured)."""
    from nilearn.maskers.base_masker import filter_and_extract
    from nilearn.maskers.nifti_masker import _ExtractionFunctor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker = NilearnNiftiMasker(**params).fit(imgs)
        parameters = masker._get_masker_params(ignore=["mask_img", "mask_args", "mask_strategy"])
        parameters["clean_kwargs"] = masker.clean_args_
        signals, _ = filter_and_extract(
            imgs, _ExtractionFunctor(masker.mask_img_), parameters, dtype="float64"
        )
    return signals


@pytest.mark.parametrize("setting", list(CLEANING_SETTINGS))
@pytest.mark.parametrize("run_name", ["nitime-fmri1", "generated-raw", "generated-float32"])
def test_transform_equals_nilearn(runs, run_name, setting):
    params = CLEANING_SETTINGS[setting]
    ours, theirs = transform_both(str(runs[run_name]), params)
    assert isinstance(ours, xr.DataArray)
    assert ours.dims == ("time", "voxel")
    if params.get("dtype") == "float64":
        # nilearn's masker computed in float32: equal to its float32 precision ...
        assert_signals_equal(np.asarray(ours).astype(np.float32), theirs.astype(np.float32))
        # ... and to nilearn's float64 computation to 1e-9.
        theirs = nilearn_in_float64(str(runs[run_name]), params)
    assert_signals_equal(ours, theirs)


FLOAT64_SETTINGS = ["detrend+zscore", "band-pass", "smoothing", "target-grid", "cosine"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("setting", FLOAT64_SETTINGS)
def test_float64_is_computed_in_float64(runs, setting):
    """Every step (resampling, smoothing, masking, cleaning) runs in the requested float64."""
    params = {**CLEANING_SETTINGS[setting], "dtype": "float64"}
    imgs = str(runs["generated-raw"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = NiftiMasker(**params).fit_transform(imgs)
    assert_signals_equal(ours, nilearn_in_float64(imgs, params))


_OTHER_KERNEL = """
import sys, warnings
import numpy as np
from daskmask import NiftiMasker
warnings.simplefilter("ignore")
signals = NiftiMasker(dtype="float64", detrend=True).fit_transform(sys.argv[1])
np.save(sys.argv[2], np.asarray(signals))
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(platform.machine() != "x86_64", reason="OPENBLAS_CORETYPE is an x86-64 switch")
@pytest.mark.parametrize("kernel", ["Haswell", "Sandybridge"])
def test_float64_result_does_not_depend_on_the_cpu(tmp_path, runs, kernel):
    """A fresh machine with another CPU gets the same float64 signals (issue 9).

    OpenBLAS picks its kernels by CPU; ``OPENBLAS_CORETYPE`` makes this machine
    use an AVX2 (Haswell) or AVX (Sandybridge) one. Float32 cleaning differed by
    one float32 ulp between kernels; float64 cleaning differs by float64 rounding.
    """
    imgs = str(runs["nitime-fmri1"])
    out = tmp_path / "signals.npy"
    env = {**os.environ, "OPENBLAS_CORETYPE": kernel}
    subprocess.run(
        [sys.executable, "-c", _OTHER_KERNEL, imgs, str(out)], env=env, check=True, timeout=100
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = np.asarray(NiftiMasker(dtype="float64", detrend=True).fit_transform(imgs))
    other = np.load(out)
    scale = float(np.max(np.abs(here)))
    np.testing.assert_allclose(other, here, rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.parametrize("setting", ["plain", "detrend+zscore", "smoothing", "target-grid"])
def test_transform_of_scaled_real_run_equals_nilearn(runs, setting):
    ours, theirs = transform_both(str(runs["nipy-functional"]), CLEANING_SETTINGS[setting])
    assert_signals_equal(ours, theirs)


@pytest.mark.parametrize(
    "make_confounds",
    [
        lambda n, tmp: confounds_for(n),
        lambda n, tmp: confounds_for(n)[:, 0],
        lambda n, tmp: pd.DataFrame(confounds_for(n), columns=["a", "b", "c"]),
        lambda n, tmp: write_table(tmp / "confounds.tsv", confounds_for(n), "\t"),
        lambda n, tmp: write_table(tmp / "confounds.csv", confounds_for(n), ","),
        lambda n, tmp: [confounds_for(n, 1), confounds_for(n, 2)[:, :1]],
    ],
    ids=["array", "1d-array", "dataframe", "tsv", "csv", "list"],
)
def test_confounds_equal_nilearn(tmp_path, runs, make_confounds):
    confounds = make_confounds(40, tmp_path)
    params = {"detrend": True, "standardize": "zscore_sample"}
    ours, theirs = transform_both(str(runs["generated-raw"]), params, confounds=confounds)
    assert_signals_equal(ours, theirs)


def write_table(path: Path, values: np.ndarray, sep: str) -> str:
    pd.DataFrame(values, columns=[f"c{i}" for i in range(values.shape[1])]).to_csv(
        path, sep=sep, index=False
    )
    return str(path)


@pytest.mark.parametrize("extrapolate", [False, True])
@pytest.mark.parametrize("as_bool", [False, True])
def test_sample_mask_scrubbing_equals_nilearn(runs, extrapolate, as_bool):
    keep = np.r_[0:5, 7:20, 22:38]
    sample_mask = np.isin(np.arange(40), keep) if as_bool else keep
    params = {
        "detrend": True,
        "low_pass": 0.1,
        "high_pass": 0.01,
        "t_r": 2.0,
        "clean_args": {"extrapolate": extrapolate},
    }
    ours, theirs = transform_both(str(runs["nitime-fmri1"]), params, sample_mask=sample_mask)
    assert_signals_equal(ours, theirs)


def test_runs_equal_nilearn(runs):
    params = {"runs": np.repeat([0, 1], 20), "detrend": True, "standardize": "zscore_sample"}
    ours, theirs = transform_both(str(runs["generated-raw"]), params)
    assert_signals_equal(ours, theirs)


def test_everything_together_equals_nilearn(tmp_path, runs):
    params = {
        "detrend": True,
        "standardize": "zscore_sample",
        "low_pass": 0.1,
        "high_pass": 0.01,
        "t_r": 2.0,
        "smoothing_fwhm": 5.0,
        "target_affine": np.eye(3) * 5,
        "mask_strategy": "epi",
    }
    confounds = write_table(tmp_path / "conf.tsv", confounds_for(40), "\t")
    sample_mask = np.r_[0:10, 12:40]
    ours, theirs = transform_both(
        str(runs["generated-raw"]), params, confounds=confounds, sample_mask=sample_mask
    )
    assert_signals_equal(ours, theirs)


def test_voxel_coordinates_and_attrs(runs):
    masker = NiftiMasker(mask_strategy="epi").fit(str(runs["generated-raw"]))
    signals = masker.transform(str(runs["generated-raw"]))
    mask = masker.mask_img_.get_fdata() != 0
    i, j, k = np.nonzero(mask)
    np.testing.assert_array_equal(signals["i"], i)
    np.testing.assert_array_equal(signals["j"], j)
    np.testing.assert_array_equal(signals["k"], k)
    world = nib.affines.apply_affine(masker.mask_img_.affine, np.column_stack([i, j, k]))
    np.testing.assert_allclose(np.column_stack([signals["x"], signals["y"], signals["z"]]), world)
    np.testing.assert_allclose(np.array(signals.attrs["affine"]), masker.mask_img_.affine)
    assert signals.attrs["masker_params"]["mask_strategy"] == "epi"


def test_3d_input_gives_1d_and_list_of_3d_gives_2d(tmp_path, runs):
    img = nib.load(runs["generated-raw"])
    paths = []
    for t in range(3):
        path = tmp_path / f"vol{t}.nii.gz"
        nib.save(img.slicer[..., t], path)
        paths.append(str(path))
    ours, theirs = transform_both(paths[0], {})
    assert np.asarray(ours).ndim == 1
    assert_signals_equal(ours, theirs)
    ours, theirs = transform_both(paths, {})
    assert np.asarray(ours).shape == theirs.shape == (3, theirs.shape[1])
    assert_signals_equal(ours, theirs)


def test_transform_on_a_distributed_cluster(runs):
    from distributed import Client, LocalCluster

    params = {"detrend": True, "standardize": "zscore_sample"}
    path = str(runs["generated-raw"])
    _, theirs = transform_both(path, params)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        ours = NiftiMasker(**params).fit_transform(path).compute()
    assert_signals_equal(ours, theirs)


# ------------------------------------------------------------ inverse_transform


def test_inverse_transform_equals_nilearn(runs):
    path = str(runs["generated-raw"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = NilearnNiftiMasker().fit(path)
    masker = NiftiMasker().fit(path)
    signals = masker.transform(path)
    expected = reference.inverse_transform(np.asarray(signals))
    for given in (signals, np.asarray(signals), np.asarray(signals)[3]):
        img = masker.inverse_transform(given)
        want = expected if np.ndim(given) == 2 else reference.inverse_transform(np.asarray(given))
        assert img.shape == want.shape
        np.testing.assert_array_equal(img.get_fdata(), want.get_fdata())
        np.testing.assert_allclose(img.affine, want.affine)


# ------------------------------------------------------------ bad input


def nilearn_error(params: dict, imgs, **kwargs) -> type[BaseException]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            NilearnNiftiMasker(**params).fit_transform(imgs, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever nilearn raises is the oracle
            return type(exc)
    raise AssertionError("nilearn accepted the input")


@pytest.mark.parametrize(
    ("params", "kwargs", "match"),
    [
        ({}, {"confounds": np.ones((10, 2))}, "incorrect length"),
        ({}, {"confounds": 3}, "confound"),
        ({}, {"confounds": "/no/such/confounds.tsv"}, "not found"),
        ({"low_pass": 0.1}, {}, "Repetition time"),
        ({"low_pass": 0.01, "high_pass": 0.1, "t_r": 2.0}, {}, "greater than or equal"),
        ({}, {"sample_mask": np.array([-1, 2, 3])}, "negative"),
        ({}, {"sample_mask": np.array([1, 2, 99])}, "invalid index"),
        ({"runs": np.zeros(3)}, {}, "run vector"),
    ],
    ids=[
        "confound-length",
        "confound-type",
        "confound-file",
        "no-t_r",
        "high>=low",
        "negative-sample",
        "out-of-range-sample",
        "runs-length",
    ],
)
def test_bad_transform_input_raises_nilearns_exception_type(runs, params, kwargs, match):
    path = str(runs["generated-raw"])
    expected = nilearn_error(params, path, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(expected, match=match):
            np.asarray(NiftiMasker(**params).fit_transform(path, **kwargs))


def test_too_few_samples_to_filter(tmp_path):
    path = generate_epi(tmp_path / "short.nii", shape=(12, 12, 10), n_timepoints=20, seed=1)
    params = {"low_pass": 0.1, "high_pass": 0.01, "t_r": 2.0}
    expected = nilearn_error(params, str(path))
    with pytest.raises(expected, match="padlen"):
        np.asarray(NiftiMasker(**params).fit_transform(str(path)))


def test_use_before_fit(runs):
    masker = NiftiMasker()
    with pytest.raises(NotFittedError, match=re.escape("This NiftiMasker instance is not fitted")):
        masker.transform(str(runs["generated-raw"]))
    with pytest.raises(NotFittedError):
        masker.inverse_transform(np.zeros(10))


def test_inverse_transform_of_wrong_shape(runs):
    masker = NiftiMasker().fit(str(runs["generated-raw"]))
    with pytest.raises(ValueError, match="wrong shape"):
        masker.inverse_transform(np.zeros(masker.n_elements_ + 1))


@pytest.mark.parametrize("standardize", ["zscore_sample", "psc"])
def test_transform_graph_grows_with_chunks_not_voxels(tmp_path, standardize):
    """O(time slabs + voxel blocks) tasks: doubling the time points at most doubles them."""
    import dask

    def graph_size(n_timepoints: int) -> tuple[int, int]:
        path = generate_epi(
            tmp_path / f"run{n_timepoints}.nii", shape=(20, 24, 18), n_timepoints=n_timepoints
        )
        masker = NiftiMasker(mask_strategy="epi", detrend=True, standardize=standardize)
        signals = masker.fit(path).transform(path).data
        n_slabs = len(open_nifti(path, chunks=signals_slab(masker, n_timepoints)).chunks[3])
        return len(signals.__dask_graph__()), n_slabs + signals.numblocks[1]

    with dask.config.set({"daskmask.block-bytes": "128KiB"}):
        tasks, chunks = zip(*(graph_size(n) for n in (100, 200, 400)), strict=True)
    assert chunks[0] > 10  # the budget really splits the runs
    for n_tasks, n_chunks in zip(tasks, chunks, strict=True):
        assert n_tasks <= 4 * n_chunks + 10
    assert tasks[1] <= 2 * tasks[0] + 10 and tasks[2] <= 2 * tasks[1] + 10


def signals_slab(masker: NiftiMasker, n_timepoints: int) -> int:
    """Volumes per time slab that transform reads the run in (its task budget)."""
    from daskmask.extraction import output_dtype, slab_volumes

    return slab_volumes(
        (20, 24, 18), np.int16, masker.n_elements_, output_dtype(np.int16), n_timepoints
    )
