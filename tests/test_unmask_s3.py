"""inverse_transform / unmask_to_file streaming into an object store (a real S3 server)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import daskmask as dm
from daskmask.datasets import generate_epi
from daskmask.exceptions import ObjectNotFoundError, StorageUnreachableError
from daskmask.extraction._unmask import unmask_to_file


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    run = generate_epi(folder / "run.nii", shape=(20, 24, 16), n_timepoints=30, seed=5)
    masker = dm.NiftiMasker(standardize="zscore_sample").fit(run)
    return masker, masker.transform(run).chunk({"voxel": 1000})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("kind", ["dask", "numpy", "1d"])
def test_inverse_transform_to_s3_equals_local(
    s3_server, s3_bucket, fitted, tmp_path, suffix, kind
):
    masker, X = fitted
    signals = {"dask": X, "numpy": X.values, "1d": X.values[3]}[kind]
    local = masker.inverse_transform(signals, filename=tmp_path / f"out{suffix}")
    url = f"s3://{s3_bucket}/derivatives/out{suffix}"
    image = masker.inverse_transform(signals, filename=url)
    assert image.shape == local.shape
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(local.dataobj))
    np.testing.assert_array_equal(image.affine, local.affine)
    # the object is the local file, byte for byte (same header, deterministic gzip; a 3D
    # image is saved by nibabel locally, whose gzip header differs, not its content)
    stored = s3_server.filesystem().cat_file(url[5:])
    written = (tmp_path / f"out{suffix}").read_bytes()
    raw = gzip.decompress(stored) if suffix == ".nii.gz" else stored
    if kind == "1d" and suffix == ".nii.gz":
        assert raw == gzip.decompress(written)
    else:
        assert stored == written
    again = nib.Nifti1Image.from_bytes(raw)
    np.testing.assert_array_equal(np.asarray(again.dataobj), np.asarray(local.dataobj))


@pytest.mark.timeout(60)
def test_inverse_transform_on_a_cluster_to_s3(s3_server, s3_bucket, fitted, tmp_path):
    """On a cluster the time slabs go to a prefix beside the output, removed afterwards."""
    from distributed import Client, LocalCluster

    masker, X = fitted
    local = masker.inverse_transform(X, filename=tmp_path / "out.nii.gz")
    url = f"s3://{s3_bucket}/out.nii.gz"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        masker.inverse_transform(X, filename=url)
    fs = s3_server.filesystem()
    assert fs.cat_file(url[5:]) == (tmp_path / "out.nii.gz").read_bytes()
    assert [Path(p).name for p in fs.find(s3_bucket)] == ["out.nii.gz"]
    del local


class _FailingRows(np.ndarray):
    """Signals whose rows past ``fail_at`` cannot be read (a source failing mid-stream)."""

    fail_at = 600

    def __getitem__(self, index):
        if isinstance(index, slice) and (index.start or 0) >= self.fail_at:
            raise RuntimeError("the source failed")
        return super().__getitem__(index)


@pytest.mark.timeout(60)
def test_failed_stream_never_appears(s3_server, s3_bucket, fitted):
    """A write failing after parts were uploaded aborts the upload: the old object stays."""
    masker, X = fitted
    fs = s3_server.filesystem()
    url = f"s3://{s3_bucket}/out.nii"
    fs.pipe_file(url[5:], b"the old object")
    n_voxels = X.sizes["voxel"]
    rows = np.random.default_rng(0).standard_normal((1200, n_voxels)).astype(np.float32)
    failing = rows.view(_FailingRows)
    # parts of 5 MiB: several are uploaded before the source fails
    options = {"default_block_size": 5 * 2**20}
    with pytest.raises(RuntimeError, match="source failed"):
        unmask_to_file(failing, masker.mask_img_, url, storage_options=options, block_bytes=2**20)
    assert fs.cat_file(url[5:]) == b"the old object"
    assert fs.list_multipart_uploads(s3_bucket) == []
    # the same write without the failure replaces it whole
    unmask_to_file(rows, masker.mask_img_, url, storage_options=options)
    image = nib.Nifti1Image.from_bytes(fs.cat_file(url[5:]))
    assert image.shape[-1] == 1200


@pytest.mark.timeout(60)
def test_missing_bucket_and_unreachable_endpoint(s3_server, fitted):
    import socket

    masker, X = fitted
    with pytest.raises(ObjectNotFoundError, match="no-such-bucket-dm"):
        masker.inverse_transform(X.values, filename="s3://no-such-bucket-dm/out.nii.gz")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {"endpoint_url": f"http://127.0.0.1:{port}"}
    with pytest.raises(StorageUnreachableError, match="bucket-dm/out.nii"):
        masker.inverse_transform(
            X.values, filename="s3://bucket-dm/out.nii", storage_options=options
        )
