"""The plain masker core, which the batch masks with, is NiftiMasker without scikit-learn.

``NiftiMasker`` is ``NiftiMaskerCore`` plus scikit-learn's ``BaseEstimator``: the
core must validate the same parameters with the same messages and give the same
signals, bit for bit, with the same ``attrs`` (the parameters recorded there are
``get_params``'s), so that a batch's stores equal what the estimator gives.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import BaseEstimator

from daskmask._params import param_values
from daskmask.datasets import generate_epi
from daskmask.maskers import MultiNiftiMasker, NiftiMasker
from daskmask.maskers._core import NiftiMaskerCore

N_VOLUMES = 40


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("core_run")
    return generate_epi(
        folder / "sub-01_task-rest_bold.nii.gz", shape=(24, 28, 20), n_timepoints=N_VOLUMES, seed=5
    )


def test_the_estimator_is_the_core_plus_base_estimator():
    assert issubclass(NiftiMasker, NiftiMaskerCore) and issubclass(NiftiMasker, BaseEstimator)
    assert not issubclass(NiftiMaskerCore, BaseEstimator)
    # the core overrides none of scikit-learn's methods (clone, pipelines, repr, pickles)
    for name in ("get_params", "set_params", "__repr__", "__getstate__", "__sklearn_tags__"):
        assert getattr(NiftiMasker, name) == getattr(BaseEstimator, name), name


CASES = {
    "batch-like": (
        {"mask_strategy": "epi", "detrend": True, "standardize": "zscore_sample", "t_r": 2.0},
        True,
        np.r_[0:5, 8:N_VOLUMES],
    ),
    "filters-smoothing-grid": (
        {
            "high_variance_confounds": True,
            "low_pass": 0.1,
            "high_pass": 0.01,
            "t_r": 2.0,
            "smoothing_fwhm": 5.0,
            "target_affine": np.eye(3) * 5,
            "dtype": "float64",
        },
        False,
        None,
    ),
    # a filter with censored volumes interpolates them (scipy.interpolate, loaded then)
    "scrubbing-interpolated": (
        {"low_pass": 0.1, "t_r": 2.0, "standardize": "psc", "mask_args": {"opening": 1}},
        True,
        np.r_[0:12, 15:N_VOLUMES],
    ),
}


@pytest.mark.filterwarnings("ignore:imgs are being resampled:UserWarning")
@pytest.mark.parametrize("case", list(CASES))
def test_the_core_gives_the_estimators_signals_bit_for_bit(run_path, case):
    params, with_confounds, sample_mask = CASES[case]
    confounds = np.random.default_rng(0).normal(size=(N_VOLUMES, 3)) if with_confounds else None
    results = [
        masker_class(**params).fit_transform(
            str(run_path), confounds=confounds, sample_mask=sample_mask
        )
        for masker_class in (NiftiMaskerCore, NiftiMasker)
    ]
    core, estimator = results
    assert core.dtype == estimator.dtype and core.dims == estimator.dims
    np.testing.assert_array_equal(core.to_numpy(), estimator.to_numpy())
    np.testing.assert_array_equal(core["time"], estimator["time"])
    assert list(core.attrs) == list(estimator.attrs)
    assert list(core.attrs["masker_params"]) == list(estimator.attrs["masker_params"])
    np.testing.assert_equal(core.attrs, estimator.attrs)


@pytest.mark.parametrize("masker_class", [NiftiMasker, MultiNiftiMasker])
def test_param_values_are_get_params(masker_class):
    masker = masker_class(target_affine=np.eye(3) * 4, mask_args={"opening": 2}, detrend=True)
    expected = masker.get_params()
    got = param_values(masker)
    assert list(got) == list(expected)
    assert all(got[name] is expected[name] for name in expected)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"standardize": "zscore"}, ValueError),
        ({"detrend": "yes"}, TypeError),
        ({"smoothing_fwhm": -1.0}, ValueError),
        ({"dtype": bool}, TypeError),
    ],
)
def test_the_core_validates_as_the_estimator(run_path, params, error):
    messages = []
    for masker_class in (NiftiMaskerCore, NiftiMasker):
        with pytest.raises(error) as raised:
            masker_class(**params).fit(str(run_path))
        messages.append(str(raised.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("collecting", [True, False])
def test_the_first_masker_import_leaves_the_collector_as_it_was(collecting):
    """Nothing of the caller's is frozen; the collector is left as the caller had it."""
    code = (
        "import gc, json\n"
        f"gc.enable() if {collecting} else gc.disable()\n"
        "import daskmask as dm\n"
        "frozen = gc.get_freeze_count()\n"
        "dm.NiftiMasker\n"
        "print(json.dumps([gc.isenabled(), frozen, gc.get_freeze_count()]))"
    )
    finished = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    enabled, frozen_before, frozen_after = json.loads(finished.stdout.strip().splitlines()[-1])
    assert enabled is collecting
    assert frozen_before == frozen_after == 0
