"""The seam of where data lives: local paths and URLs on a real S3 server."""

from __future__ import annotations

import io
import json
import os
import pickle
import time

import dask.config
import numpy as np
import pytest
from fsspec.asyn import sync

from daskmask._fs import (
    BufferBody,
    Location,
    UploadBuffer,
    has_glob,
    is_url,
    locate,
    pipe_buffer,
    share_botocore_models,
    split_protocol,
)
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


def test_buffer_body_reads_the_owners_memory_without_a_copy():
    data = np.arange(1000, dtype=np.uint8)
    body = BufferBody(data)
    assert isinstance(body, io.BytesIO)  # what aiohttp streams in pieces
    assert body.readable() and body.seekable() and not body.writable()
    with body.getbuffer() as view:  # as aiohttp asks for the size
        assert len(view) == 1000 and np.shares_memory(np.frombuffer(view, np.uint8), data)
    assert body.read(10) == bytes(range(10)) and body.tell() == 10
    data[10] = 99  # the owner's memory itself is served
    assert body.read(2) == bytes([99, 11])
    assert body.seek(0, io.SEEK_END) == 1000 and body.read() == b""  # botocore's length
    assert body.seek(-3, io.SEEK_CUR) == 997 and body.read(100) == bytes(data[997:])
    target = bytearray(6)
    assert body.seek(0) == 0 and body.readinto(target) == 6 and target == bytes(data[:6])
    assert body.getvalue() == data.tobytes()
    with pytest.raises(io.UnsupportedOperation):
        body.write(b"x")
    with pytest.raises(ValueError, match="negative"):
        body.seek(-1)
    body.close()
    with pytest.raises(ValueError, match="closed"):
        body.read(1)


def test_upload_buffer_is_sliced_for_multipart_uploads():
    data = np.arange(100, dtype=np.uint8)
    upload = UploadBuffer(data)
    assert len(upload) == 100
    part = upload[10:20]
    assert isinstance(part, UploadBuffer) and bytes(part.view) == bytes(range(10, 20))
    with pytest.raises(TypeError, match="sliced"):
        upload[3]


def test_pipe_buffer_uploads_the_buffer_to_s3(s3_server, s3_bucket):
    location = locate(f"s3://{s3_bucket}/chunk.bin")
    fs = location.fs
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8)
    sync(fs.loop, pipe_buffer, fs, location.path, data)
    assert fs.cat_file(location.path) == data.tobytes()
    # every request gets its own body from the start: the same buffer again
    sync(fs.loop, pipe_buffer, fs, location.path, data[::-1].copy())
    assert fs.cat_file(location.path) == data[::-1].tobytes()


def test_pipe_buffer_multipart_upload(s3_server, s3_bucket):
    location = locate(f"s3://{s3_bucket}/large.bin")
    fs = location.fs
    data = np.random.default_rng(1).integers(0, 256, 11 << 20, dtype=np.uint8)
    # s3fs uploads 5 MiB parts of anything from twice its part size up
    sync(fs.loop, fs.set_session)
    original = fs._pipe_file

    async def in_parts(path, value, **kwargs):
        return await original(path, value, chunksize=5 << 20, **kwargs)

    fs._pipe_file = in_parts
    try:
        sync(fs.loop, pipe_buffer, fs, location.path, data)
    finally:
        del fs._pipe_file
    assert fs.cat_file(location.path) == data.tobytes()


def test_pipe_buffer_on_other_file_systems():
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
    from fsspec.implementations.memory import MemoryFileSystem

    fs = AsyncFileSystemWrapper(MemoryFileSystem(), asynchronous=True)
    data = np.arange(50, dtype=np.uint8)

    async def write() -> None:
        await pipe_buffer(fs, "/daskmask-tests/buffer.bin", data)

    import asyncio

    asyncio.run(write())
    assert MemoryFileSystem().cat_file("/daskmask-tests/buffer.bin") == data.tobytes()


def test_share_botocore_models(s3_server, s3_bucket):
    import s3fs

    location = locate(f"s3://{s3_bucket}/x")
    location.fs.ls(s3_bucket)  # connected: its session has loaded the S3 models
    fresh = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options)
    share_botocore_models(fresh, location.fs)
    loader = location.fs.session.get_component("data_loader")
    assert fresh.session is not location.fs.session
    assert fresh.session.get_component("data_loader") is loader
    fresh.pipe_file(f"{s3_bucket}/shared.bin", b"abc")  # its own client works
    assert location.fs.cat_file(f"{s3_bucket}/shared.bin") == b"abc"
    # a file system with a session of its own, or not s3fs, is left alone
    own = fresh.session
    share_botocore_models(fresh, location.fs)
    assert fresh.session is own
    share_botocore_models(locate("memory://x").fs, location.fs)
