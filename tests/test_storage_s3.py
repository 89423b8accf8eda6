"""Results stores in an object store: a real S3 server (moto, over HTTP), nothing mocked."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import dask.config
import numpy as np
import pytest

import daskmask as dm
from daskmask.datasets import generate_epi
from daskmask.exceptions import (
    ObjectNotFoundError,
    StorageAccessError,
    StorageError,
    StorageUnreachableError,
)
from daskmask.storage import (
    CorruptStoreError,
    IncompleteStoreError,
    NotAStoreError,
    StoreExistsError,
    StoreNotFoundError,
    open_results,
)

VOXEL_BLOCK = 1000
ARRAYS = ("time", "voxel", "i", "j", "k", "x", "y", "z")


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    """A small generated EPI run (uncompressed NIfTI)."""
    folder = tmp_path_factory.mktemp("run")
    return Path(generate_epi(folder / "run.nii", shape=(20, 24, 16), n_timepoints=30, seed=3))


@pytest.fixture(scope="module")
def signals(run_file):
    """Real masker output, in several voxel chunks."""
    X = dm.NiftiMasker(standardize="zscore_sample").fit_transform(run_file)
    return X.chunk({"voxel": VOXEL_BLOCK})


@pytest.fixture(scope="module")
def local_store(signals, tmp_path_factory) -> Path:
    return dm.save(signals, tmp_path_factory.mktemp("local") / "sub-01.zarr")


def read_everything(path, **kwargs) -> dict:
    """Open a store and read every array and attribute a user would."""
    results = open_results(path, **kwargs)
    values = {
        "signals": results.signals.values,
        "mask": np.asarray(results.mask_img.dataobj),
        "mean_image": np.asarray(results.mean_img.dataobj),
        "affine": results.affine,
        "attrs": json.dumps(
            {k: v for k, v in results.dataset.attrs.items() if k not in ("created", "manifest")},
            sort_keys=True,
        ),
        "signal_attrs": json.dumps(dict(results.signals.attrs), sort_keys=True, default=str),
    }
    for name in ARRAYS:
        values[name] = results.signals[name].values
    return values


def assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, np.ndarray):
            assert got[name].dtype == value.dtype, name
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        else:
            assert got[name] == value, name


def keys(s3_server, url: str) -> list[str]:
    prefix = url.removeprefix("s3://")
    return sorted(p[len(prefix) + 1 :] for p in s3_server.filesystem().find(prefix))


@pytest.mark.timeout(60)
def test_round_trip_equals_the_local_store(s3_server, s3_bucket, signals, local_store):
    url = f"s3://{s3_bucket}/out/sub-01.zarr"
    assert dm.save(signals, url) == url
    expected = read_everything(local_store)
    assert_same(read_everything(url), expected)
    results = open_results(url)
    assert results.path == url and results.url == url
    assert url in repr(results)
    # the same chunk objects as the local files, every one checksummed
    local_chunks = sorted(
        p.relative_to(local_store).as_posix() for p in local_store.rglob("*") if p.is_file()
    )
    assert keys(s3_server, url) == local_chunks
    fs = s3_server.filesystem()
    root = json.loads(fs.cat_file(f"{url[5:]}/zarr.json"))
    assert root["attributes"]["complete"] is True
    # reopened signals from S3 save again to S3, and locally, unchanged
    copy = f"s3://{s3_bucket}/copy.zarr"
    dm.save(results.signals, copy, mean_img=results.mean_img)
    assert_same(read_everything(copy), expected)


@pytest.mark.timeout(60)
def test_storage_options_and_dask_config(s3_server, s3_bucket, signals, local_store, monkeypatch):
    """Credentials and endpoint from storage_options, or from daskmask.storage-options."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    url = f"s3://{s3_bucket}/sub-01.zarr"
    options = dict(s3_server.storage_options)
    dm.save(signals, url, options)
    expected = read_everything(local_store)
    assert_same(read_everything(url, storage_options=options), expected)
    with dask.config.set({"daskmask.storage-options": {"s3": options}}):
        assert_same(read_everything(url), expected)
        dm.save(signals, f"s3://{s3_bucket}/again.zarr")
        assert_same(read_everything(f"s3://{s3_bucket}/again.zarr"), expected)


@pytest.mark.timeout(60)
def test_save_on_a_cluster_writes_from_the_workers(s3_server, s3_bucket, signals, local_store):
    from distributed import Client, LocalCluster, get_task_stream

    url = f"s3://{s3_bucket}/sub-01.zarr"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        # the workers reach the server through the environment they inherited
        with get_task_stream(client) as stream:
            dm.save(signals, url)
        # the chunk writes ran on the workers, straight to the server
        workers = {entry["worker"] for entry in stream.data if "store" in entry["key"][0]}
        assert workers and workers <= set(client.scheduler_info()["workers"])
        assert_same(read_everything(url), read_everything(local_store))


@pytest.mark.timeout(60)
def test_overwrite(s3_server, s3_bucket, signals, local_store):
    url = f"s3://{s3_bucket}/sub-01.zarr"
    dm.save(signals, url)
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        dm.save(signals, url)
    # a different store (fewer chunks) replaces every object of the old one
    first = set(keys(s3_server, url))
    local = open_results(local_store)
    dm.save(local.signals.chunk({"voxel": 2000}), url, overwrite=True, mean_img=local.mean_img)
    second = set(keys(s3_server, url))
    assert first != second
    # the old chunks the new store does not rewrite are gone, those it rewrites replaced
    n_voxels = local.signals.shape[1]
    signal_chunks = {key for key in second if key.startswith("signals/c/")}
    assert signal_chunks == {f"signals/c/0/{index}" for index in range(-(-n_voxels // 2000))}
    assert_same(read_everything(url), read_everything(local_store))
    # the same store again: every object is rewritten, none is left over or missing
    dm.save(local.signals.chunk({"voxel": 2000}), url, overwrite=True, mean_img=local.mean_img)
    assert set(keys(s3_server, url)) == second
    assert_same(read_everything(url), read_everything(local_store))


def test_memory_url_store(signals, local_store):
    # an fsspec file system whose listings name keys differently ("/" first)
    url = "memory://daskmask-tests/sub-01.zarr"
    dm.save(signals, url, overwrite=True)
    assert_same(read_everything(url), read_everything(local_store))
    dm.save(signals.chunk({"voxel": 2000}), url, overwrite=True)
    assert_same(read_everything(url), read_everything(local_store))


def test_chunks_are_written_from_their_own_memory(s3_server, s3_bucket):
    """The store a save writes chunks through: zarr's checks, the chunk's bytes, picklable."""
    import pickle

    import s3fs
    import zarr

    from daskmask._fs import locate
    from daskmask.storage._backends import ObjectStoreBackend, ObjectWriteStore

    # fsspec keeps one file system per set of options: a test before this one may have left
    # zarr's already connected (which then keeps its own models); this is a first save
    s3fs.S3FileSystem.clear_instance_cache()
    location = locate(f"s3://{s3_bucket}/direct.zarr")
    target = ObjectStoreBackend().begin(location, overwrite=False)
    store = target.store
    assert isinstance(store, ObjectWriteStore)
    # its own client, on zarr's event loop, with the S3 models the reading one loaded
    loader = location.fs.session.get_component("data_loader")
    assert store.fs is not location.fs
    assert store.fs.session.get_component("data_loader") is loader
    values = np.random.default_rng(4).standard_normal((40, 3000)).astype("float32")
    array = zarr.create_array(store, name="x", shape=values.shape, chunks=(40, 1000), dtype="f4")
    array[:] = values  # chunks of 160 kB: uploaded as they are, without a trim
    # a worker rebuilds it from a pickle (its own session and client)
    clone = pickle.loads(pickle.dumps(store))
    assert isinstance(clone, ObjectWriteStore)
    zarr.open_array(clone, path="x", mode="r+")[:, 2000:] = values[:, :1000]
    expected = np.concatenate([values[:, :2000], values[:, :1000]], axis=1)
    np.testing.assert_array_equal(zarr.open_array(store, path="x", mode="r")[:], expected)
    assert len(s3_server.filesystem().ls(f"{s3_bucket}/direct.zarr/x/c/0")) == 3


@pytest.mark.timeout(60)
def test_only_stores_are_replaced(s3_server, s3_bucket, signals):
    fs = s3_server.filesystem()
    fs.pipe(f"{s3_bucket}/file.zarr", b"not a store")
    with pytest.raises(StoreExistsError, match="is an object"):
        dm.save(signals, f"s3://{s3_bucket}/file.zarr", overwrite=True)
    fs.pipe(f"{s3_bucket}/data/notes.txt", b"mine")
    with pytest.raises(StoreExistsError, match="not a Zarr store"):
        dm.save(signals, f"s3://{s3_bucket}/data", overwrite=True)
    assert fs.cat(f"{s3_bucket}/data/notes.txt") == b"mine"
    with pytest.raises(NotAStoreError):
        open_results(f"s3://{s3_bucket}/data")
    with pytest.raises(StoreNotFoundError):
        open_results(f"s3://{s3_bucket}/nothing.zarr")


# ------------------------------------------------------------ damage


@pytest.fixture
def damaged(s3_server, s3_bucket, signals) -> str:
    url = f"s3://{s3_bucket}/sub-01.zarr"
    dm.save(signals, url)
    return url


def middle_chunk(s3_server, url: str, name: str) -> str:
    chunks = [k for k in keys(s3_server, url) if k.startswith(f"{name}/c/")]
    assert len(chunks) > 1 or name != "signals"
    return f"{url[5:]}/{chunks[len(chunks) // 2]}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["signals", "mask", "i"])
def test_deleted_chunk_is_refused(s3_server, damaged, name):
    fs = s3_server.filesystem()
    fs.rm(middle_chunk(s3_server, damaged, name))
    with pytest.raises(CorruptStoreError, match=f"missing .* array '{name}'") as caught:
        open_results(damaged)
    assert caught.value.array == name


@pytest.mark.timeout(60)
def test_chunk_deleted_after_open_is_refused_at_read(s3_server, damaged):
    results = open_results(damaged)
    s3_server.filesystem().rm(middle_chunk(s3_server, damaged, "signals"))
    with pytest.raises(CorruptStoreError, match="missing from the results store s3://"):
        results.signals.compute()


@pytest.mark.timeout(60)
def test_flipped_bit_is_refused(s3_server, damaged):
    fs = s3_server.filesystem()
    key = middle_chunk(s3_server, damaged, "signals")
    data = bytearray(fs.cat_file(key))
    data[len(data) // 2] ^= 0x10
    fs.pipe_file(key, bytes(data))
    with pytest.raises(CorruptStoreError, match="CRC-32C") as caught:
        open_results(damaged).signals.compute()
    assert caught.value.array == "signals"


@pytest.mark.timeout(60)
def test_root_without_marker_is_incomplete(s3_server, damaged):
    fs = s3_server.filesystem()
    root = f"{damaged[5:]}/zarr.json"
    document = json.loads(fs.cat_file(root))
    document["attributes"]["complete"] = False
    fs.pipe_file(root, json.dumps(document).encode())
    with pytest.raises(IncompleteStoreError, match="overwrite=True"):
        open_results(damaged)
    fs.rm_file(root)  # the arrays without their root: still incomplete, not "not a store"
    with pytest.raises(IncompleteStoreError, match="overwrite=True"):
        open_results(damaged)


# ------------------------------------------------------------ killed saves

PRELUDE = """
import os, signal, sys
import dask
import daskmask as dm
from daskmask.storage import _backends

run, target = sys.argv[1], sys.argv[2]
X = dm.NiftiMasker(standardize="zscore_sample").fit_transform(run).chunk({"voxel": 1000})

def die():
    os.kill(os.getpid(), signal.SIGKILL)
"""


def run_killed(tmp_path: Path, body: str, run_file: Path, target: str) -> None:
    """Run PRELUDE + body in a new interpreter (same S3 environment); it must die of SIGKILL."""
    script = tmp_path / "killed.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    done = subprocess.run(
        [sys.executable, str(script), str(run_file), target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


#: Where a save is killed, and what the URL then holds.
KILLS = {
    # killed after the old root was invalidated, before its objects were deleted
    "after-invalidation": """
        backend = _backends.ObjectStoreBackend
        real = backend._remove
        def _remove(self, location, keep_root, keep=frozenset()):
            die()
        backend._remove = _remove
        """,
    # the old store deleted, the new one half written
    "mid-write": """
        import numpy as np
        from daskmask._fs import locate

        def chunk_versions():
            fs = locate(target).fs
            fs.invalidate_cache()
            found = fs.find(target[5:] + "/signals/c", detail=True)
            return {key: info["ETag"] for key, info in found.items()}

        # an overwrite leaves the old chunks the new store rewrites: count new versions
        old_chunks = chunk_versions()

        def kill_mid_write(block):
            written = chunk_versions().items() - old_chunks.items()
            if block.size and len(written) >= 2:
                die()
            return block
        X = X.copy(
            data=X.data.map_blocks(kill_mid_write, meta=np.array((), dtype=X.dtype))
        )
        """,
    # every chunk written, the marker not yet
    "before-marker": """
        _backends.mark_complete = lambda store, tree: die()
        """,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("case", "fresh"),
    [(case, False) for case in KILLS] + [("mid-write", True), ("before-marker", True)],
    ids=lambda value: {False: "overwrite", True: "fresh"}.get(value, value),
)
def test_killed_save_is_refused_then_rewritten(
    tmp_path, s3_server, s3_bucket, run_file, signals, local_store, case, fresh
):
    url = f"s3://{s3_bucket}/sub-01.zarr"
    if not fresh:
        dm.save(open_results(local_store).signals.chunk({"voxel": 3000}), url)
    body = textwrap.dedent(KILLS[case]) + (
        "\nwith dask.config.set(scheduler='threads', num_workers=1):\n"
        f"    dm.save(X, target, overwrite={not fresh})\n"
    )
    run_killed(tmp_path, body, run_file, url)
    with pytest.raises(IncompleteStoreError, match="overwrite=True"):
        open_results(url)
    with pytest.raises(StoreExistsError):
        dm.save(signals, url)
    dm.save(signals, url, overwrite=True)
    assert_same(read_everything(url), read_everything(local_store))


@pytest.mark.timeout(60)
def test_failed_write_leaves_nothing_that_opens(s3_server, s3_bucket, signals):
    def fail(block):
        raise RuntimeError("boom")

    broken = signals.copy(data=signals.data.map_blocks(fail, dtype=signals.dtype))
    url = f"s3://{s3_bucket}/sub-01.zarr"
    with pytest.raises(RuntimeError, match="boom"):
        dm.save(broken, url)
    # a fresh save that failed removes what it wrote; a chunk written late by a task
    # still running may remain, but never a root
    assert "zarr.json" not in keys(s3_server, url)
    with pytest.raises((StoreNotFoundError, IncompleteStoreError)):
        open_results(url)
    dm.save(signals, url)  # what a failed save left is no store: no overwrite needed
    with pytest.raises(RuntimeError, match="boom"):
        dm.save(broken, url, overwrite=True)
    # an overwrite that failed has deleted the old store: its root says so
    assert "zarr.json" in keys(s3_server, url)
    with pytest.raises(IncompleteStoreError, match="overwrite=True"):
        open_results(url)
    dm.save(signals, url, overwrite=True)
    assert np.isfinite(open_results(url).signals.values).all()


# ------------------------------------------------------------ bad network


@pytest.mark.timeout(60)
def test_missing_bucket(s3_server, signals):
    url = "s3://no-such-bucket-dm/sub-01.zarr"
    with pytest.raises(ObjectNotFoundError, match="no-such-bucket-dm") as caught:
        dm.save(signals, url)
    assert "bucket" in str(caught.value)
    with pytest.raises(ObjectNotFoundError, match="no-such-bucket-dm"):
        open_results(url)


@pytest.mark.timeout(60)
def test_wrong_credentials(s3_server_with_auth, signals):
    options = {"key": "wrong", "secret": "wrong", "endpoint_url": s3_server_with_auth.endpoint_url}
    url = "s3://any-bucket-dm/sub-01.zarr"
    for call in (lambda: dm.save(signals, url, options), lambda: open_results(url, options)):
        with pytest.raises(StorageAccessError, match="any-bucket-dm") as caught:
            call()
        assert "AWS_ACCESS_KEY_ID" in str(caught.value)


@pytest.mark.timeout(60)
def test_no_credentials(s3_server_with_auth, signals, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    options = {"endpoint_url": s3_server_with_auth.endpoint_url, "skip_instance_cache": True}
    with pytest.raises(StorageAccessError, match="credentials"):
        dm.save(signals, "s3://any-bucket-dm/sub-01.zarr", options)


@pytest.mark.timeout(60)
def test_unreachable_endpoint_fails_fast(signals, s3_server):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
    url = "s3://bucket-dm/sub-01.zarr"
    for call in (lambda: dm.save(signals, url, options), lambda: open_results(url, options)):
        start = time.monotonic()
        with pytest.raises(StorageUnreachableError, match="bucket-dm") as caught:
            call()
        assert time.monotonic() - start < 30
        assert "endpoint" in str(caught.value)
        assert isinstance(caught.value, StorageError)
