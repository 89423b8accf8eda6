"""Errors of daskmask.signal.clean: the types and messages of nilearn."""

from __future__ import annotations

import numpy as np
import pytest
from _signal_helpers import confounds, signals
from nilearn import signal as nsignal

from daskmask.exceptions import DaskmaskError
from daskmask.signal import AllVolumesRemovedError, clean, load_confounds

X = signals((30, 5))


def same_error(x: np.ndarray, **kwargs) -> BaseException:
    """Both libraries raise the same exception type with the same message."""
    with pytest.raises(Exception) as theirs:
        nsignal.clean(x, **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        clean(x, **kwargs)
    assert str(ours.value) == str(theirs.value)
    return ours.value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"detrend": 1},
        {"t_r": "a"},
        {"standardize": "zscore"},
        {"standardize_confounds": 1},
        {"low_pass": True},
        {"high_pass": "0.1"},
        {"filter": "bad"},
        {"ensure_finite": "yes"},
        {"low_pass": 0.1, "t_r": None},
        {"filter": "cosine", "high_pass": None},
        {"filter": "cosine", "high_pass": 0.01, "t_r": None},
        {"high_pass": 0.1, "low_pass": 0.01, "t_r": 2.0},
        {"high_pass": 0.1, "low_pass": 0.1, "t_r": 2.0},
        {"runs": np.zeros(3)},
        {"confounds": 3},
        {"confounds": [3]},
        {"confounds": np.zeros((10, 2))},
        {"confounds": np.zeros(10)},
        {"confounds": np.zeros((30, 2, 2))},
        {"confounds": [np.zeros((30, 1)), np.zeros((29, 1))]},
        {"sample_mask": np.array([-1, 2, 3])},
        {"sample_mask": np.arange(40)},
        {"sample_mask": np.array([0, 1, 99])},
        {"sample_mask": [np.arange(10), np.arange(10)]},
        {"sample_mask": 3},
        {"sample_mask": np.arange(10), "runs": np.repeat([0, 1], 15)},
    ],
    ids=repr,
)
def test_errors_as_nilearn(kwargs):
    same_error(X, **kwargs)


def test_missing_confounds_file(tmp_path):
    missing = str(tmp_path / "nope.csv")
    error = same_error(X, confounds=missing)
    assert isinstance(error, FileNotFoundError)
    assert str(error) == f"{missing} not found."


def test_unreadable_confounds_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a|b\n1|x\n")
    error = same_error(X, confounds=str(path))
    assert isinstance(error, TypeError)
    assert "Could not read CSV file" in str(error)


def test_confounds_file_of_wrong_length(tmp_path):
    path = tmp_path / "short.tsv"
    np.savetxt(path, confounds(10, 2), delimiter="\t")
    with pytest.raises(ValueError, match="Signal length: 30; confound length: 10"):
        nsignal.clean(X, confounds=str(path))
    with pytest.raises(
        ValueError,
        match=r"^Confound signal has an incorrect length. Signal length: 30; "
        r"confound length: 10.$",
    ):
        clean(X, confounds=str(path))


def test_confound_messages():
    with pytest.raises(TypeError, match=r"^confound has an unhandled type: <class 'int'>$"):
        load_confounds([3], 30)
    with pytest.raises(ValueError, match="incorrect number of dimensions: 3"):
        load_confounds(np.zeros((30, 1, 1)), 30)


@pytest.mark.parametrize("mask", [np.array([], dtype=int), np.zeros(30, dtype=bool)])
def test_empty_sample_mask(mask):
    # nilearn: a bare numpy "zero-size array" ValueError; daskmask: a clear one
    with pytest.raises(ValueError):
        nsignal.clean(X, sample_mask=mask)
    with pytest.raises(AllVolumesRemovedError, match="empty") as ours:
        clean(X, sample_mask=mask)
    assert isinstance(ours.value, (ValueError, DaskmaskError))


def test_sample_mask_index_equal_to_length():
    # nilearn lets index 30 through its check (off by one); daskmask reports it
    with pytest.raises(IndexError, match=r"contains invalid index \[30\]"):
        clean(X, sample_mask=np.array([0, 1, 30]))


def test_sample_mask_one_kept_sample_with_filter():
    same_error(X, sample_mask=np.array([4]), low_pass=0.1)


def test_signals_must_be_2d():
    with pytest.raises(ValueError, match="2D"):
        clean(np.zeros(30))


def test_unknown_butterworth_option():
    with pytest.raises(TypeError):
        nsignal.clean(X, low_pass=0.1, butterworth__bad=1)
    with pytest.raises(TypeError, match="bad"):
        clean(X, low_pass=0.1, butterworth__bad=1)


def test_errors_raised_before_any_dask_compute():
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(X, chunks=(30, 2))
    with pytest.raises(ValueError, match="High pass cutoff"):
        clean(lazy, high_pass=0.1, low_pass=0.01, t_r=2.0)
    with pytest.raises(ValueError, match="padlen"):
        clean(lazy[:18], low_pass=0.1)
