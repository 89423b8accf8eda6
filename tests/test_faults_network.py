"""Bad input over the network: each fault gives a typed daskmask error naming the URL.

Real S3 servers (moto, over HTTP on 127.0.0.1): one that accepts any key and
one that checks credentials; a closed port for an endpoint that does not
answer. Each case must fail within a bounded time, with no botocore or
aiohttp traceback in what the user sees, and no retry loop.
"""

from __future__ import annotations

import gzip
import socket
import time
import traceback

import nibabel as nib
import numpy as np
import pytest

import daskmask as dm
from daskmask.exceptions import (
    NiftiReadError,
    ObjectNotFoundError,
    StorageAccessError,
    StorageUnreachableError,
)

#: Longest a fault may take to be reported (s3fs/botocore retries included).
BOUND_SECONDS = 30


def _nifti_bytes(shape=(10, 12, 8, 20), dtype=np.int16) -> bytes:
    data = np.random.default_rng(0).integers(0, 1000, shape).astype(dtype)
    image = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    return image.to_bytes()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _check_reported(error: BaseException, url: str, fix: str, elapsed: float) -> None:
    """The error names the URL and the fix, quickly, without library tracebacks."""
    message = str(error)
    assert url in message, message
    assert fix in message, message
    assert elapsed < BOUND_SECONDS, elapsed
    shown = "".join(traceback.format_exception(error))
    for library in ("botocore", "aiohttp", "aiobotocore", "s3fs"):
        assert f"{library}/" not in shown, shown


def _case(name, s3_server, s3_auth, bucket, monkeypatch):
    """Return ``(url, storage_options, expected type, words of the fix)`` for a fault."""
    fs = s3_server.filesystem()
    options = dict(s3_server.storage_options)
    if name == "missing object":
        return f"s3://{bucket}/absent.nii.gz", options, ObjectNotFoundError, "Check the path"
    if name == "missing bucket":
        return "s3://no-such-bucket-dm/run.nii", options, ObjectNotFoundError, "bucket"
    # The server that checks credentials refuses every request of an unknown
    # key before it looks for the bucket: no bucket is needed there.
    if name == "no credentials":
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance to ask
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        return (
            "s3://auth-bucket-dm/run.nii",
            {"endpoint_url": s3_auth.endpoint_url, "skip_instance_cache": True},
            StorageAccessError,
            "AWS_ACCESS_KEY_ID",
        )
    if name == "wrong credentials":
        wrong = {"key": "not-a-key", "secret": "nope", "endpoint_url": s3_auth.endpoint_url}
        return "s3://auth-bucket-dm/run.nii", wrong, StorageAccessError, "storage_options"
    if name == "unreachable endpoint":
        dead = {**options, "endpoint_url": f"http://127.0.0.1:{_closed_port()}"}
        return f"s3://{bucket}/run.nii", dead, StorageUnreachableError, "endpoint"
    if name == "object cut short":
        fs.pipe(f"{bucket}/short.nii", _nifti_bytes()[:5000])
        return f"s3://{bucket}/short.nii", options, NiftiReadError, "truncated"
    if name == "gzip cut short in its header":
        fs.pipe(f"{bucket}/short.nii.gz", gzip.compress(_nifti_bytes())[:40])
        return f"s3://{bucket}/short.nii.gz", options, NiftiReadError, "re-upload"
    raise AssertionError(name)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "name",
    [
        "missing object",
        "missing bucket",
        "no credentials",
        "wrong credentials",
        "unreachable endpoint",
        "object cut short",
        "gzip cut short in its header",
    ],
)
def test_fault_at_open_is_typed_and_named(
    name, s3_server, s3_server_with_auth, s3_bucket, monkeypatch
):
    url, options, expected, fix = _case(
        name, s3_server, s3_server_with_auth, s3_bucket, monkeypatch
    )
    start = time.monotonic()
    with pytest.raises(expected) as caught:
        dm.open_nifti(url, storage_options=options)
    _check_reported(caught.value, url, fix, time.monotonic() - start)


def _corrupt_gzip(payload: bytes) -> bytes:
    """A .nii.gz whose header inflates but whose deflate stream breaks in the data."""
    compressed = bytearray(gzip.compress(payload, 6))
    middle = len(compressed) // 2
    compressed[middle : middle + 64] = b"\xff" * 64  # invalid codes, or a CRC mismatch
    return bytes(compressed)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["lazy read", "fit (decode-once pass)"])
def test_corrupt_deflate_stream_named(how, s3_server, s3_bucket):
    url = f"s3://{s3_bucket}/corrupt.nii.gz"
    s3_server.filesystem().pipe(url.removeprefix("s3://"), _corrupt_gzip(_nifti_bytes()))
    run = dm.open_nifti(url)  # the header is intact
    start = time.monotonic()
    with pytest.raises(NiftiReadError) as caught:
        if how == "lazy read":
            np.asarray(run)
        else:
            dm.NiftiMasker(mask_strategy="epi").fit(url)
    _check_reported(caught.value, url, "Re-create or re-download", time.monotonic() - start)
    assert "corrupt" in str(caught.value)


@pytest.mark.timeout(120)
def test_object_removed_after_open(s3_server, s3_bucket):
    url = f"s3://{s3_bucket}/gone.nii"
    fs = s3_server.filesystem()
    fs.pipe(url.removeprefix("s3://"), _nifti_bytes())
    run = dm.open_nifti(url)
    fs.rm(url.removeprefix("s3://"))
    start = time.monotonic()
    with pytest.raises(ObjectNotFoundError) as caught:
        np.asarray(run)
    _check_reported(caught.value, url, "Check the path", time.monotonic() - start)


@pytest.mark.timeout(120)
def test_endpoint_gone_after_open(s3_server, s3_bucket):
    """A worker that loses the endpoint reports it, within the bounded retries."""
    url = f"s3://{s3_bucket}/run.nii"
    s3_server.filesystem().pipe(url.removeprefix("s3://"), _nifti_bytes())
    dead = {**s3_server.storage_options, "endpoint_url": f"http://127.0.0.1:{_closed_port()}"}
    good = dm.open_nifti(url)
    spec = good.encoding["nifti_spec"]
    # The same array, read through options whose endpoint no longer answers.
    from daskmask._fs import locate
    from daskmask.reading._array import NiftiArrayWrapper

    moved = NiftiArrayWrapper(spec._replace(location=locate(url, dead)))
    start = time.monotonic()
    with pytest.raises(StorageUnreachableError) as caught:
        moved[..., 0:5]
    _check_reported(caught.value, url, "endpoint", time.monotonic() - start)
