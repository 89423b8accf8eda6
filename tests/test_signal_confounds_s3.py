"""Confounds tables given as object-store URLs are read through daskmask._fs (a real S3 server)."""

from __future__ import annotations

import numpy as np
import pytest

import daskmask as dm
from daskmask.datasets import generate_epi
from daskmask.exceptions import ObjectNotFoundError
from daskmask.signal._confounds import read_confounds_file

N_VOLUMES = 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    return generate_epi(folder / "run.nii", shape=(14, 16, 12), n_timepoints=N_VOLUMES, seed=11)


def _table(newline: str, delimiter: str, header: bool) -> str:
    values = np.random.default_rng(3).standard_normal((N_VOLUMES, 3))
    lines = [delimiter.join(f"{v:.6f}" for v in row) for row in values]
    if header:
        lines.insert(0, delimiter.join(["trans_x", "trans_y", "rot_z"]))
    return newline.join(lines) + newline


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("newline", "delimiter", "header"),
    [("\n", "\t", True), ("\r\n", ",", True), ("\n", " ", False), ("\r\n", "\t", False)],
)
def test_a_confounds_url_reads_as_its_local_copy(
    s3_server, s3_bucket, run, tmp_path, newline, delimiter, header
):
    text = _table(newline, delimiter, header)
    local = tmp_path / "confounds.tsv"
    local.write_bytes(text.encode())
    url = f"s3://{s3_bucket}/sub-01/confounds.tsv"
    s3_server.filesystem().pipe_file(url[5:], text.encode())

    np.testing.assert_array_equal(read_confounds_file(url), read_confounds_file(local))
    masker = dm.NiftiMasker(detrend=True, standardize="zscore_sample")
    from_url = masker.fit_transform(run, confounds=url).values
    from_file = masker.fit_transform(run, confounds=str(local)).values
    np.testing.assert_array_equal(from_url, from_file)


@pytest.mark.timeout(60)
def test_a_missing_confounds_object_names_the_url(s3_server, s3_bucket, run):
    url = f"s3://{s3_bucket}/no-such-confounds.tsv"
    with pytest.raises(ObjectNotFoundError, match="no-such-confounds.tsv"):
        dm.NiftiMasker().fit_transform(run, confounds=url)
