"""Confounds with NaN or Inf give a typed error naming the file, columns and rows (issue 9).

fMRIPrep writes ``n/a`` in the first row of its derivative columns
(``*_derivative1``, ``framewise_displacement``, ``dvars``); before the fix those
reached scipy and came back as "array must not contain infs or NaNs", naming
neither the file nor the column. Rows censored by ``sample_mask`` may hold
anything, as in nilearn.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from nilearn.signal import clean as nilearn_clean

from daskmask import NiftiMasker
from daskmask.datasets import generate_epi
from daskmask.exceptions import ConfoundsError
from daskmask.signal import clean

N_VOLUMES = 24
#: Columns of an fMRIPrep ``desc-confounds_timeseries.tsv`` (a subset, in its order).
FMRIPREP_COLUMNS = [
    "global_signal",
    "csf",
    "white_matter",
    "dvars",
    "framewise_displacement",
    "trans_x",
    "trans_x_derivative1",
    "rot_z",
    "rot_z_derivative1",
]
#: What fMRIPrep leaves undefined in the first volume.
FIRST_ROW_NA = ["dvars", "framewise_displacement", "trans_x_derivative1", "rot_z_derivative1"]


def fmriprep_table(n: int = N_VOLUMES, seed: int = 0) -> pd.DataFrame:
    """Confounds shaped like fMRIPrep's: motion, tissue signals and their derivatives."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "global_signal": 600 + rng.standard_normal(n),
            "csf": 800 + rng.standard_normal(n),
            "white_matter": 700 + rng.standard_normal(n),
            "trans_x": np.cumsum(rng.normal(0, 0.02, n)),
            "rot_z": np.cumsum(rng.normal(0, 0.001, n)),
        }
    )
    table["trans_x_derivative1"] = table["trans_x"].diff()
    table["rot_z_derivative1"] = table["rot_z"].diff()
    table["framewise_displacement"] = (
        table["trans_x_derivative1"].abs() + 50 * table["rot_z_derivative1"].abs()
    )
    table["dvars"] = np.r_[np.nan, 20 + rng.standard_normal(n - 1)]
    return table[FMRIPREP_COLUMNS]


def write_fmriprep_tsv(path: Path, table: pd.DataFrame) -> Path:
    """Write ``table`` as fMRIPrep does: tab-separated, a header, ``n/a`` for missing."""
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("confounds_run")
    return str(generate_epi(folder / "run.nii.gz", shape=(12, 13, 10), n_timepoints=N_VOLUMES))


@pytest.fixture
def fmriprep_tsv(tmp_path) -> Path:
    return write_fmriprep_tsv(tmp_path / "sub-01_desc-confounds_timeseries.tsv", fmriprep_table())


def signals(n: int = N_VOLUMES) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 30))


def test_the_fmriprep_file_really_has_na_in_its_first_row(fmriprep_tsv):
    lines = fmriprep_tsv.read_text().splitlines()
    header, first = lines[0].split("\t"), lines[1].split("\t")
    assert [name for name, value in zip(header, first, strict=True) if value == "n/a"] == (
        [name for name in FMRIPREP_COLUMNS if name in FIRST_ROW_NA]
    )


def assert_names_na_columns(message: str, path: Path | None) -> None:
    if path is not None:
        assert str(path) in message
    for name in FIRST_ROW_NA:
        assert re.search(rf"'{name}' \(column \d+\) has NaN in row 0\b", message), name
    for name in set(FMRIPREP_COLUMNS) - set(FIRST_ROW_NA):
        assert f"'{name}'" not in message  # finite columns are not blamed
    assert "fMRIPrep writes 'n/a'" in message
    assert "fillna(0)" in message and "drop the column" in message
    assert "nilearn.interfaces.fmriprep.load_confounds" in message


@pytest.mark.timeout(60)
def test_masker_transform_names_the_fmriprep_file_columns_and_rows(run, fmriprep_tsv):
    masker = NiftiMasker(detrend=True, standardize="zscore_sample").fit(run)
    with pytest.raises(ConfoundsError) as caught:
        masker.transform(run, confounds=str(fmriprep_tsv))
    assert isinstance(caught.value, ValueError)  # nilearn raises a ValueError here too
    assert_names_na_columns(str(caught.value), fmriprep_tsv)
    with pytest.raises(ConfoundsError, match="'framewise_displacement'"):
        masker.fit_transform(run, confounds=fmriprep_tsv)  # a Path as well as a str


@pytest.mark.timeout(30)
@pytest.mark.parametrize("as_dask", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize("kind", ["tsv", "dataframe"])
def test_signal_clean_names_the_columns_and_rows(fmriprep_tsv, kind, as_dask):
    confounds = str(fmriprep_tsv) if kind == "tsv" else pd.read_csv(fmriprep_tsv, sep="\t")
    x = signals()
    with pytest.raises(ConfoundsError) as caught:
        clean(da.from_array(x, chunks=(-1, 10)) if as_dask else x, confounds=confounds)
    assert_names_na_columns(str(caught.value), fmriprep_tsv if kind == "tsv" else None)
    assert ("DataFrame" in str(caught.value)) == (kind == "dataframe")


@pytest.mark.timeout(60)
def test_inf_in_a_tsv_names_the_rows_and_counts_them(tmp_path, run):
    table = fmriprep_table().fillna(0)
    table.loc[5:11, "csf"] = np.inf
    table.loc[2, "white_matter"] = -np.inf
    path = write_fmriprep_tsv(tmp_path / "confounds.tsv", table)
    expected = (
        "'csf' (column 1) has Inf in rows 5, 6, 7, 8, 9 and 2 more (7 rows)",
        "'white_matter' (column 2) has Inf in row 2",
    )
    for call in (
        lambda: clean(signals(), confounds=str(path)),
        lambda: NiftiMasker(detrend=True).fit_transform(run, confounds=str(path)),
    ):
        with pytest.raises(ConfoundsError) as caught:
            call()
        message = str(caught.value)
        assert str(path) in message
        for text in expected:
            assert text in message
        assert "'global_signal'" not in message


@pytest.mark.timeout(30)
def test_array_and_list_items_are_named_by_position():
    x = signals()
    good = np.random.default_rng(2).standard_normal((N_VOLUMES, 2))
    bad = good.copy()
    bad[[0, 3], 1] = np.nan
    with pytest.raises(ConfoundsError, match=r"^.*\n  array: column 1 has NaN in rows 0, 3 \(2"):
        clean(x, confounds=bad)
    with pytest.raises(ConfoundsError, match=r"confounds\[1\], array: column 1 has NaN in rows"):
        clean(x, confounds=[good, bad])
    with pytest.raises(ConfoundsError, match=r"array: column 0 has Inf in row 7"):
        one = good[:, 0].copy()
        one[7] = np.inf
        clean(x, confounds=one)


@pytest.mark.timeout(30)
def test_many_bad_columns_are_summarised():
    bad = np.full((N_VOLUMES, 20), np.nan)
    with pytest.raises(ConfoundsError, match="and 12 more columns"):
        clean(signals(), confounds=bad)


@pytest.mark.timeout(60)
def test_filled_as_the_message_says_equals_nilearn(run, fmriprep_tsv):
    """The advice works: n/a filled with 0 cleans, and equals nilearn on the same table."""
    filled = pd.read_csv(fmriprep_tsv, sep="\t").fillna(0)
    x = signals()
    np.testing.assert_allclose(
        clean(x, confounds=filled), nilearn_clean(x, confounds=filled.to_numpy()), atol=1e-10
    )
    signals_ = NiftiMasker(detrend=True).fit_transform(run, confounds=filled)
    assert np.isfinite(np.asarray(signals_)).all()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("low_pass", [None, 0.1], ids=["censored", "interpolated"])
def test_nan_in_censored_rows_is_allowed_as_in_nilearn(fmriprep_tsv, low_pass):
    """Volumes dropped by sample_mask never enter the regression (fMRIPrep's dummy scans)."""
    x = signals()
    confounds = str(fmriprep_tsv)
    keep = np.arange(1, N_VOLUMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = clean(x, confounds=confounds, sample_mask=keep, low_pass=low_pass, t_r=2.0)
        theirs = nilearn_clean(
            x, confounds=confounds, sample_mask=keep, low_pass=low_pass, t_r=2.0
        )
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)
    with pytest.raises(ConfoundsError, match="has NaN in row 0"):
        clean(x, confounds=confounds, sample_mask=np.arange(0, N_VOLUMES - 1))
