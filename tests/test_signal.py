"""Parity of daskmask.signal.clean with nilearn.signal.clean (numpy inputs).

nilearn 0.14.1 is the oracle, run in each test on the same input. Besides the
values and dtypes, the set of warnings emitted must be the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _signal_helpers import (
    assert_close,
    confounds,
    mirror_safe_mask,
    run_recording,
    signals,
)
from nilearn import signal as nsignal
from scipy.interpolate import CubicSpline

from daskmask.signal import clean, high_variance_confounds, make_plan

SHAPES = [(40, 300), (120, 50), (19, 10), (34, 10)]
BANDPASS = {"low_pass": 0.1, "high_pass": 0.01, "t_r": 2.0}


def check_parity(x: np.ndarray, **kwargs) -> np.ndarray:
    """Clean with both libraries, compare values, dtypes and warnings."""
    ours, our_warnings = run_recording(clean, x, **kwargs)
    theirs, their_warnings = run_recording(nsignal.clean, x, **kwargs)
    assert_close(ours, theirs)
    assert our_warnings == their_warnings
    return ours


OPTIONS = {
    "defaults": {},
    "no_detrend": {"detrend": False},
    "detrend_only": {"standardize": None},
    "psc": {"standardize": "psc"},
    "psc_no_detrend": {"standardize": "psc", "detrend": False},
    "zscore_no_detrend": {"detrend": False, "standardize": "zscore_sample"},
    "standardize_true": {"standardize": True},
    "standardize_false": {"standardize": False},
    "nothing": {"detrend": False, "standardize": None},
    "low_pass": {"low_pass": 0.1, "t_r": 2.0},
    "high_pass": {"high_pass": 0.02, "t_r": 2.0, "standardize": None},
    "band_pass_psc": {**BANDPASS, "standardize": "psc"},
    "order_3_even": {
        **BANDPASS,
        "butterworth__order": 3,
        "butterworth__padtype": "even",
    },
    "padlen": {"low_pass": 0.1, "t_r": 2.0, "butterworth__padlen": 5},
    "cosine": {"filter": "cosine", "high_pass": 0.01, "t_r": 2.0},
    "no_filter_with_cutoff": {"filter": False, "low_pass": 0.1},
    "unknown_kwarg_ignored": {"not_an_option": 3},
}


@pytest.mark.parametrize("shape", [(40, 300), (120, 50), (34, 10)])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_options_float32(name, shape):
    check_parity(signals(shape, np.float32), **OPTIONS[name])


@pytest.mark.parametrize("name", ["defaults", "psc", "band_pass_psc", "cosine"])
def test_options_float64(name):
    check_parity(signals((40, 300), np.float64), **OPTIONS[name])


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.uint8])
def test_integer_input_dtype(dtype):
    out = check_parity(signals((40, 20), dtype), **BANDPASS)
    assert out.dtype == (np.float64 if np.dtype(dtype).itemsize == 8 else np.float32)


def test_input_not_modified():
    x = signals((40, 30))
    before = x.copy()
    clean(x, confounds=confounds(40), **BANDPASS)
    np.testing.assert_array_equal(x, before)


# --- filter lengths -----------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "kwargs"),
    [(19, {"low_pass": 0.1, "t_r": 2.0}), (19, {"high_pass": 0.02, "t_r": 2.0}), (34, BANDPASS)],
)
def test_minimum_filter_length(n, kwargs):
    check_parity(signals((n, 10)), confounds=confounds(n), **kwargs)
    short = signals((n - 1, 10))
    with pytest.raises(ValueError, match="must be greater than padlen") as theirs:
        nsignal.clean(short, **kwargs)
    with pytest.raises(ValueError, match="must be greater than padlen") as ours:
        clean(short, **kwargs)
    assert str(ours.value) == str(theirs.value)


# --- confounds ----------------------------------------------------------------


def _write(path, data: np.ndarray, sep: str, header: bool) -> str:
    frame = pd.DataFrame(data, columns=[f"c{i}" for i in range(data.shape[1])])
    frame.to_csv(path, sep=sep, header=header, index=False)
    return str(path)


@pytest.fixture
def confound_inputs(tmp_path):
    n = 40
    conf = confounds(n, 3)
    return (
        n,
        conf,
        {
            "array2d": conf,
            "array1d": conf[:, 0],
            "float32": conf.astype(np.float32),
            "dataframe": pd.DataFrame(conf, columns=["a", "b", "c"]),
            "csv_header": _write(tmp_path / "c.csv", conf, ",", True),
            "tsv_header": _write(tmp_path / "c.tsv", conf, "\t", True),
            "tsv_no_header": _write(tmp_path / "n.tsv", conf, "\t", False),
            "txt_spaces": _write(tmp_path / "c.txt", conf, " ", False),
            "csv_semicolon_header": _write(tmp_path / "s.csv", conf, ";", True),
            "path_object": tmp_path / "c.csv",
            "list": [conf[:, :1], _write(tmp_path / "l.tsv", conf[:, 1:] ** 2, "\t", True)],
            "tuple": (conf[:, 0], pd.DataFrame(conf[:, 1:])),
        },
    )


@pytest.mark.parametrize(
    "kind",
    [
        "array2d",
        "array1d",
        "float32",
        "dataframe",
        "csv_header",
        "tsv_header",
        "tsv_no_header",
        "txt_spaces",
        "csv_semicolon_header",
        "path_object",
        "list",
        "tuple",
    ],
)
def test_confound_types(confound_inputs, kind):
    n, _, inputs = confound_inputs
    check_parity(signals((n, 50)), confounds=inputs[kind])


def test_confound_files_equal_arrays(confound_inputs):
    n, conf, inputs = confound_inputs
    x = signals((n, 50))
    expected = clean(x, confounds=conf)
    for kind in ["csv_header", "tsv_header", "tsv_no_header", "txt_spaces", "dataframe"]:
        np.testing.assert_allclose(clean(x, confounds=inputs[kind]), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"standardize_confounds": False},
        {"standardize_confounds": False, "detrend": False},
        {"detrend": False},
        BANDPASS,
        {**BANDPASS, "standardize_confounds": False, "standardize": "psc"},
        {"filter": "cosine", "high_pass": 0.01, "t_r": 2.0},
    ],
)
def test_confound_options(extra):
    x = signals((40, 300))
    conf = confounds(40, 4)
    conf[:, 3] = 7.0  # a constant confound: dropped or kept by the rank test
    check_parity(x, confounds=conf, **extra)


def test_rank_deficient_confounds():
    conf = confounds(40, 2)
    conf = np.hstack([conf, conf[:, :1] * 2 + conf[:, 1:]])
    check_parity(signals((40, 30)), confounds=conf)


def test_single_column_confounds_file(tmp_path):
    # nilearn fails on a one-column file (1D array); daskmask reads it as one
    # confound, equal to the same confound given as an array.
    conf = confounds(40, 1)
    path = _write(tmp_path / "one.tsv", conf, "\t", True)
    x = signals((40, 20))
    assert_close(clean(x, confounds=path), nsignal.clean(x, confounds=conf))


def test_cosine_already_in_user_confounds():
    n, t_r = 60, 2.0
    drift = np.cos(np.pi / n * (np.arange(n) + 0.5))[:, None]
    user = np.hstack([drift, confounds(n, 1)])
    check_parity(signals((n, 20)), confounds=user, filter="cosine", high_pass=0.01, t_r=t_r)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filter": "cosine", "high_pass": 0.0001, "t_r": 2.0},  # no cosine built
        {"filter": "cosine", "high_pass": 0.3, "t_r": 2.0},  # saturating
        {"filter": "cosine", "high_pass": 0.01, "t_r": 2.0, "low_pass": 0.1},
        {"low_pass": 0.3, "t_r": 2.0},  # above Nyquist
        {"high_pass": -0.1, "t_r": 2.0},  # negative
        {"low_pass": 0.3, "high_pass": 0.29, "t_r": 2.0},  # both clipped: equal
    ],
)
def test_filter_warnings(kwargs):
    x = signals((40, 20))
    if kwargs.get("high_pass") == 0.3:
        # A cosine basis that spans every frequency removes the whole signal:
        # what is left is float32 rounding noise, which standardization scales
        # to unit variance. nilearn's own result is that noise: it changes by
        # up to 3.3 (on values of +-1.67) between two OpenBLAS kernels of one
        # machine (OPENBLAS_CORETYPE=Haswell against SkylakeX). Compare the
        # warnings, and that the signal itself is gone before standardizing.
        ours, our_warnings = run_recording(clean, x, **kwargs)
        _, their_warnings = run_recording(nsignal.clean, x, **kwargs)
        assert our_warnings == their_warnings
        residual, _ = run_recording(clean, x, **{**kwargs, "standardize": False})
        assert np.abs(residual).max() < 1e-4 * np.abs(x).max()
        assert ours.shape == x.shape and ours.dtype == x.dtype
        return
    check_parity(x, **kwargs)


# --- sample_mask --------------------------------------------------------------


@pytest.mark.parametrize("as_bool", [False, True])
@pytest.mark.parametrize("extrapolate", [False, True])
@pytest.mark.parametrize(
    "filt",
    [
        {"low_pass": 0.1, "t_r": 2.0},
        {**BANDPASS, "standardize": "psc"},
        {"filter": "cosine", "high_pass": 0.01, "t_r": 2.0},
        {},
    ],
)
def test_sample_mask(filt, extrapolate, as_bool):
    n = 60
    kept = mirror_safe_mask(n)
    mask = np.isin(np.arange(n), kept) if as_bool else kept
    check_parity(
        signals((n, 40)),
        sample_mask=mask,
        extrapolate=extrapolate,
        confounds=confounds(n),
        **filt,
    )


def test_sample_mask_trailing_censored():
    n = 50
    kept = np.arange(n - 2)  # mirrors 0 and 1 are kept
    check_parity(signals((n, 20)), sample_mask=kept, confounds=confounds(n), **BANDPASS)


def test_censored_values_do_not_matter():
    # nilearn writes the spline at mirrored positions: a censored sample
    # whose mirror is censored too keeps its raw value and changes the
    # result. daskmask fills every censored sample.
    n = 50
    censored = np.array([3, 4, n - 5, n - 4])
    kept = np.setdiff1d(np.arange(n), censored)
    x = signals((n, 20), np.float64)
    y = x.copy()
    y[censored] = 1e4
    kwargs = {"sample_mask": kept, "confounds": confounds(n), **BANDPASS}
    np.testing.assert_allclose(clean(x, **kwargs), clean(y, **kwargs), rtol=1e-9)
    assert not np.allclose(nsignal.clean(x, **kwargs), nsignal.clean(y, **kwargs))


def test_extrapolated_edges_equal_nilearn_on_filled_input():
    # Censored samples at both ends with censored mirrors: fill them with the
    # spline beforehand so that nilearn's mirrored writing cannot matter.
    n = 50
    kept = np.arange(2, n - 2)
    x = signals((n, 20), np.float64)
    conf = confounds(n)
    times = np.arange(n) * 2.0
    for data in (x, conf):
        data[:] = CubicSpline(times[kept], data[kept], extrapolate=True)(times)
    kwargs = {"sample_mask": kept, "extrapolate": True, "confounds": conf, **BANDPASS}
    assert_close(clean(x, **kwargs), nsignal.clean(x, **kwargs))


def test_sample_mask_list_single_run():
    n = 40
    check_parity(signals((n, 20)), sample_mask=[mirror_safe_mask(n)])


# --- runs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"standardize": "psc"},
        BANDPASS,
        {"filter": "cosine", "high_pass": 0.01, "t_r": 2.0},
        {"detrend": False, "standardize": None},
    ],
)
def test_runs(extra):
    runs = np.repeat([2, 0, 1], 40)
    conf = confounds(120)
    check_parity(signals((120, 30)), runs=runs, confounds=conf, **extra)


def test_runs_interleaved_labels():
    runs = np.tile([1, 0], 40)
    check_parity(signals((80, 20)), runs=runs, confounds=confounds(80), **BANDPASS)


def test_runs_with_sample_masks():
    runs = np.repeat([0, 1], 60)
    masks = [mirror_safe_mask(60), np.arange(60)[5:]]
    check_parity(
        signals((120, 20)), runs=runs, sample_mask=masks, confounds=confounds(120), **BANDPASS
    )


def test_runs_forward_options_nilearn_forgets():
    # nilearn's per-run calls drop standardize_confounds, extrapolate and the
    # butterworth__ options; daskmask applies them to each run.
    runs = np.repeat([0, 1], 40)
    x = signals((80, 20), np.float64)
    conf = confounds(80)
    kwargs = {
        "standardize_confounds": False,
        "butterworth__order": 3,
        **BANDPASS,
    }
    ours = clean(x, runs=runs, confounds=conf, **kwargs)
    per_run = [nsignal.clean(x[runs == r], confounds=conf[runs == r], **kwargs) for r in (0, 1)]
    assert_close(ours, np.vstack(per_run))


# --- ensure_finite ------------------------------------------------------------


def test_ensure_finite():
    x = signals((40, 30))
    x[3, 4] = np.nan
    x[10, :5] = np.inf
    out = check_parity(x, ensure_finite=True, **BANDPASS)
    assert np.isfinite(out).all()


def test_nan_without_ensure_finite_stays_in_its_column():
    x = signals((40, 30))
    x[3, 4] = np.nan
    ours = clean(x)
    assert np.isnan(ours[:, 4]).all()
    assert np.isfinite(np.delete(ours, 4, axis=1)).all()


# --- one sample and degenerate columns ----------------------------------------


def test_one_sample():
    check_parity(signals((1, 10)))
    check_parity(signals((1, 10)), standardize="psc")


def test_constant_and_zero_columns():
    x = signals((40, 10), np.float64)
    x[:, 2] = 5.0
    x[:, 3] = 0.0
    check_parity(x, detrend=False)
    check_parity(x, detrend=False, standardize="psc")


# --- high_variance_confounds --------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 300), (50, 1000)])
@pytest.mark.parametrize("detrend", [True, False])
@pytest.mark.parametrize(("n_confounds", "percentile"), [(5, 2.0), (3, 10.0)])
def test_high_variance_confounds(shape, detrend, n_confounds, percentile):
    series = signals(shape, np.float64)
    ours = high_variance_confounds(series, n_confounds, percentile, detrend)
    theirs = nsignal.high_variance_confounds(series, n_confounds, percentile, detrend)
    assert ours.shape == (shape[0], n_confounds)
    # eigenvectors are defined up to their sign
    signs = np.sign(np.sum(ours * theirs, axis=0))
    assert_close(ours * signs, theirs)


def test_high_variance_confounds_float32():
    series = signals((40, 300), np.float32)
    ours = high_variance_confounds(series)
    theirs = nsignal.high_variance_confounds(series)
    signs = np.sign(np.sum(ours * theirs, axis=0))
    np.testing.assert_allclose(ours * signs, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, np.arange(40)),
        ({"sample_mask": np.arange(2, 38), **BANDPASS}, np.arange(2, 38)),
        ({"sample_mask": np.arange(2, 38), "extrapolate": True, **BANDPASS}, np.arange(2, 38)),
        ({"sample_mask": np.arange(0, 40, 2)}, np.arange(0, 40, 2)),
        ({"runs": np.tile([1, 0], 20)}, np.r_[1:40:2, 0:40:2]),
    ],
)
def test_plan_output_rows(kwargs, expected):
    plan = make_plan(40, np.float32, **kwargs)
    np.testing.assert_array_equal(plan.output_rows, expected)
    assert plan.n_out == len(expected)
