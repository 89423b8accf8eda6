"""The seam of where data lives: local paths and URLs on a real S3 server."""

from __future__ import annotations

import json
import os
import pickle
import time

import dask.config
import pytest

from daskmask._fs import Location, has_glob, is_url, locate, split_protocol
from daskmask.exceptions import (
    ObjectNotFoundError,
    StorageAccessError,
    StorageError,
    StorageUnreachableError,
)


@pytest.mark.parametrize(
    ("text", "protocol", "path"),
    [
        ("/a/b.nii", "file", "/a/b.nii"),
        ("file:///a/b.nii", "file", "/a/b.nii"),
        ("s3://bucket/key.nii.gz", "s3", "bucket/key.nii.gz"),
        ("GS://bucket/x", "gs", "bucket/x"),
        ("memory://x/y", "memory", "x/y"),
    ],
)
def test_split_protocol(text, protocol, path):
    assert split_protocol(text) == (protocol, path)
    assert is_url(text) == (protocol != "file")


def test_local_location_is_absolute_and_reads_ranges(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)))
    location = locate(os.path.relpath(path))
    assert location.is_local and os.path.isabs(location.path)
    assert location.read_range(10, 5) == bytes(range(10, 15))
    assert location.stat().size == 256 and location.stat().is_file
    assert locate(f"file://{path}") == location
    assert [item.name for item in locate(str(tmp_path / "*.bin")).glob()] == ["data.bin"]
    assert has_glob("s3://b/*.nii") and not has_glob("s3://b/a.nii")


def test_local_missing_file_is_typed(tmp_path):
    with pytest.raises(ObjectNotFoundError, match="nope.nii"):
        locate(tmp_path / "nope.nii").stat()


def test_s3_location_reads_ranges_and_pickles(s3_server, s3_bucket):
    fs = s3_server.filesystem()
    fs.pipe(f"{s3_bucket}/run.bin", bytes(range(200)))
    location = locate(f"s3://{s3_bucket}/run.bin")
    assert location.storage_options["endpoint_url"] == s3_server.endpoint_url
    assert location.read_range(100, 4) == bytes(range(100, 104))
    first = location.stat()
    assert first.size == 200 and first.version.startswith("ETag=")
    fs.pipe(f"{s3_bucket}/run.bin", bytes(reversed(range(200))))
    assert location.stat().version != first.version
    clone = pickle.loads(pickle.dumps(location))
    assert clone == location and clone.read_range(0, 1) == b"\xc7"
    fs.pipe(f"{s3_bucket}/other.bin", b"x")
    matches = locate(f"s3://{s3_bucket}/*.bin").glob()
    assert [item.url for item in matches] == [
        f"s3://{s3_bucket}/other.bin",
        f"s3://{s3_bucket}/run.bin",
    ]


def test_storage_options_from_dask_config(s3_server, s3_bucket):
    with dask.config.set({"daskmask.storage-options": {"s3": {"anon": False, "key": "k"}}}):
        location = locate(f"s3://{s3_bucket}/x", storage_options={"key": "testing"})
    options = location.storage_options
    assert options["anon"] is False and options["key"] == "testing"
    assert options["config_kwargs"]["retries"]["max_attempts"] == 3


def test_upload_checksums_only_where_required(s3_server, s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION", raising=False)
    location = locate(f"s3://{s3_bucket}/checked.bin")
    assert location.storage_options["config_kwargs"]["request_checksum_calculation"] == (
        "when_required"
    )
    location.fs.pipe_file(location.path, b"x" * 1000)
    assert location.read_range(0, 1000) == b"x" * 1000
    # the user's choice wins, in the options or in the environment
    mine = {"config_kwargs": {"request_checksum_calculation": "when_supported"}}
    asked = locate(f"s3://{s3_bucket}/x", storage_options=mine).storage_options
    assert asked["config_kwargs"]["request_checksum_calculation"] == "when_supported"
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
    from_environment = locate(f"s3://{s3_bucket}/y").storage_options["config_kwargs"]
    assert "request_checksum_calculation" not in from_environment


@pytest.mark.parametrize("missing", ["object", "bucket"])
def test_s3_missing_object_or_bucket(s3_server, s3_bucket, missing):
    url = f"s3://{s3_bucket}/nope.nii" if missing == "object" else "s3://no-such-bucket-x/a.nii"
    with pytest.raises(ObjectNotFoundError, match=url.split("/")[2]) as caught:
        locate(url).read_range(0, 10)
    assert url in str(caught.value)
    if missing == "bucket":
        assert "bucket" in str(caught.value)


@pytest.mark.timeout(60)
def test_s3_unreachable_endpoint_fails_fast(s3_bucket):
    url = f"s3://{s3_bucket}/a.nii"
    options = {"key": "testing", "secret": "testing", "endpoint_url": "http://127.0.0.1:9"}
    started = time.monotonic()
    with pytest.raises(StorageUnreachableError, match="127.0.0.1:9") as caught:
        locate(url, options).stat()
    assert url in str(caught.value)
    assert time.monotonic() - started < 30


def test_s3_without_credentials(s3_server, s3_bucket, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    location = Location(
        f"s3://{s3_bucket}/x.nii",
        json.dumps({"endpoint_url": s3_server.endpoint_url, "skip_instance_cache": True}),
    )
    with pytest.raises(StorageAccessError, match="AWS_ACCESS_KEY_ID"):
        location.stat()


def test_unknown_protocol_is_typed():
    with pytest.raises(StorageError, match="nosuchproto"):
        locate("nosuchproto://a/b").stat()


@pytest.mark.timeout(60)
def test_s3_wrong_credentials(s3_server_with_auth):
    options = {"key": "wrong", "secret": "wrong", "endpoint_url": s3_server_with_auth.endpoint_url}
    url = "s3://some-bucket/run.nii"
    with pytest.raises(StorageAccessError, match="storage_options") as caught:
        locate(url, options).read_range(0, 4)
    assert url in str(caught.value)
