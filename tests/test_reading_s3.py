"""Reading runs from object storage: a real S3 server (moto) over HTTP, nothing mocked.

Every read of an object is compared with nibabel (or daskmask) on a local copy of
the same bytes, bit for bit, dtype included.
"""

from __future__ import annotations

import gzip
import os
import threading
import time
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from _isolated_cluster import isolated_cluster  # noqa: F401 - fixture

import daskmask as dm
from daskmask.exceptions import InputChangedError, NiftiReadError

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])

#: (on-disk dtype, scl_slope, scl_inter) cases, as the local reading tests cover them.
SCALINGS = [
    ("int16", None, None),
    ("int16", 2.0, 1.5),
    ("uint8", 0.5, 0.0),
    ("float32", None, None),
    (">i2", None, None),
    ("float64", 3.0, -1.0),
    ("int32", 1.0, 10.0),
]


def _epi(seed: int, shape: tuple[int, ...] = (14, 16, 12, 10)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 5.0, shape).astype(np.float32)
    data[3:-3, 3:-3, 2:-2] += 500.0  # a bright "brain" for the epi mask
    return data


def _save(path: Path, data: np.ndarray, slope=None, inter=None) -> Path:
    image = nib.Nifti1Image(data, AFFINE)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


def _upload(s3_server, local: Path, url: str) -> str:
    s3_server.filesystem().put(str(local), url.removeprefix("s3://"))
    return url


def _same(remote: xr.DataArray, local: xr.DataArray) -> None:
    """Values (bytes), dtype, dims, coords and attrs equal, but for the source."""
    remote_values, local_values = remote.values, local.values
    assert remote_values.dtype == local_values.dtype
    assert remote_values.tobytes() == local_values.tobytes()
    assert remote.dims == local.dims
    if not str(local.name).startswith("nifti-"):  # a list is named after its dask array
        assert remote.name == local.name
    assert remote.chunks == local.chunks
    for name in local.coords:
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    assert remote.attrs.keys() == local.attrs.keys()
    for key, value in local.attrs.items():
        if key != "source":
            np.testing.assert_array_equal(remote.attrs[key], value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(("dtype", "slope", "inter"), SCALINGS)
def test_object_reads_equal_nibabel_on_a_local_copy(
    s3_server, s3_bucket, tmp_path, suffix, dtype, slope, inter
):
    rng = np.random.default_rng(0)
    data = rng.normal(60.0, 20.0, (7, 8, 6, 13)).clip(0, 120).astype(dtype)
    local = _save(tmp_path / f"run{suffix}", data, slope, inter)
    url = _upload(s3_server, local, f"s3://{s3_bucket}/sub/run{suffix}")
    remote = dm.open_nifti(url, chunks=4)
    assert remote.attrs["source"] == url
    _same(remote, dm.open_nifti(local, chunks=4))
    expected = np.asanyarray(nib.load(local).dataobj)
    assert remote.dtype == expected.dtype
    # A spatial subset and a strided time selection read only what covers them.
    np.testing.assert_array_equal(remote[1:3, 2, :, 5:12:3].values, expected[1:3, 2, :, 5:12:3])
    np.testing.assert_array_equal(remote[..., 7].values, expected[..., 7])


@pytest.mark.timeout(60)
def test_nifti2_and_3d_objects(s3_server, s3_bucket, tmp_path):
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    for name, klass in (("v1.nii.gz", nib.Nifti1Image), ("v2.nii", nib.Nifti2Image)):
        local = tmp_path / name
        nib.save(klass(data, AFFINE), local)
        url = _upload(s3_server, local, f"s3://{s3_bucket}/{name}")
        _same(dm.open_nifti(url), dm.open_nifti(local))


@pytest.mark.timeout(60)
def test_globs_and_lists_of_urls(s3_server, s3_bucket, tmp_path):
    urls = []
    for index in (2, 0, 1):
        local = _save(tmp_path / f"run-{index}.nii.gz", _epi(index, (5, 6, 4, 3)))
        urls.append(_upload(s3_server, local, f"s3://{s3_bucket}/runs/run-{index}.nii.gz"))
    by_glob = dm.open_nifti(f"s3://{s3_bucket}/runs/run-*.nii.gz", concat="time")
    assert by_glob.attrs["source"] == sorted(urls)
    local_files = sorted(str(path) for path in tmp_path.glob("run-*.nii.gz"))
    _same(by_glob, dm.open_nifti(local_files, concat="time"))
    by_list = dm.open_nifti(urls, concat="time")
    assert by_list.attrs["source"] == urls
    local_list = [str(tmp_path / Path(url).name) for url in urls]
    _same(by_list, dm.open_nifti(local_list, concat="time"))


@pytest.mark.timeout(60)
def test_options_travel_with_the_array(s3_server, s3_bucket, tmp_path, monkeypatch):
    """Credentials given to open_nifti reach the reads without the environment."""
    local = _save(tmp_path / "run.nii", _epi(0))
    url = _upload(s3_server, local, f"s3://{s3_bucket}/run.nii")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key)
    remote = dm.open_nifti(url, storage_options=s3_server.storage_options)
    with dask.config.set(scheduler="processes", num_workers=2):
        values = remote.values
    assert values.tobytes() == np.asanyarray(nib.load(local).dataobj).tobytes()
    assert "secret" not in repr(remote.attrs)
    # The dask config key serves code that only passes URLs.
    with dask.config.set({"daskmask.storage-options": {"s3": s3_server.storage_options}}):
        assert dm.open_nifti(url).values.tobytes() == values.tobytes()


@pytest.mark.timeout(60)
def test_xarray_engine_opens_urls(s3_server, s3_bucket, tmp_path):
    local = _save(tmp_path / "run.nii.gz", _epi(3))
    url = _upload(s3_server, local, f"s3://{s3_bucket}/run.nii.gz")
    opened = xr.open_dataarray(
        url, engine="nifti", chunks={}, storage_options=s3_server.storage_options
    )
    np.testing.assert_array_equal(opened.values, dm.open_nifti(local).values)
    assert opened.attrs["source"] == url


@pytest.mark.timeout(120)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_masker_on_urls_equals_local_bit_for_bit(s3_server, s3_bucket, tmp_path, suffix):
    local = _save(tmp_path / f"run{suffix}", _epi(5))
    url = _upload(s3_server, local, f"s3://{s3_bucket}/run{suffix}")
    expected_masker = dm.NiftiMasker(mask_strategy="epi")
    expected = expected_masker.fit_transform(local)
    masker = dm.NiftiMasker(mask_strategy="epi")
    signals = masker.fit_transform(url)
    np.testing.assert_array_equal(
        masker.mask_img_.get_fdata(), expected_masker.mask_img_.get_fdata()
    )
    assert np.asarray(signals).tobytes() == np.asarray(expected).tobytes()
    provenance = signals.attrs["provenance"]
    assert provenance["paths"] == [url]
    assert provenance["sizes"] == [local.stat().st_size]
    assert provenance["versions"][0].startswith("ETag=")
    assert provenance["header_sha256"] == expected.attrs["provenance"]["header_sha256"]
    # A DataArray opened from the URL works too, and the same mean was kept by fit.
    opened = dm.open_nifti(url)
    again = dm.NiftiMasker(mask_strategy="epi").fit(opened).transform(opened)
    assert np.asarray(again).tobytes() == np.asarray(expected).tobytes()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_changed_object_refused(s3_server, s3_bucket, tmp_path, suffix):
    first = _save(tmp_path / f"first{suffix}", _epi(0))
    second = _save(tmp_path / f"second{suffix}", _epi(1))
    url = _upload(s3_server, first, f"s3://{s3_bucket}/run{suffix}")
    masker = dm.NiftiMasker(mask_strategy="epi").fit(url)
    signals = masker.transform(url)
    opened = dm.open_nifti(url)
    _upload(s3_server, second, url)  # same size, another ETag
    for lazy in (signals, opened):
        with pytest.raises(InputChangedError, match=rf"'{url}' changed") as error:
            np.asarray(lazy)
        assert "open_nifti" in str(error.value)
    with pytest.raises(InputChangedError, match=rf"'{url}' changed"):
        dm.NiftiMasker(mask_strategy="epi").fit(opened)
    # A new transform reads the new version, not the decoded copy or mean of the old.
    fresh, reference = masker.transform(url), masker.transform(second)
    assert np.asarray(fresh).tobytes() == np.asarray(reference).tobytes()
    np.testing.assert_array_equal(
        np.asarray(fresh.attrs.get("mean_image")), np.asarray(reference.attrs.get("mean_image"))
    )


# ------------------------------------------------ a cluster that shares no disk


class _ServedBytes:
    """WSGI middleware counting the bytes of object data sent to this process.

    A request comes from this process when its peer port is the local port of
    one of this process's own sockets (the server runs in this process too).
    """

    def __init__(self, app) -> None:
        import psutil

        self.app = app
        self.process = psutil.Process()
        self.to_this_process = 0
        self.to_others = 0
        #: GET requests from this process.
        self.gets_from_this_process = 0
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        port = int(environ.get("REMOTE_PORT") or 0)
        mine = any(
            connection.laddr and connection.laddr.port == port
            for connection in self.process.net_connections("tcp")
        )
        body = self.app(environ, start_response)
        chunks = list(body)
        size = sum(len(chunk) for chunk in chunks)
        if environ["REQUEST_METHOD"] == "GET":
            with self.lock:
                if mine:
                    self.to_this_process += size
                    self.gets_from_this_process += 1
                else:
                    self.to_others += size
        return chunks


@pytest.fixture(scope="module")
def counting_s3():
    """A moto server whose GET traffic is counted by receiving process."""
    from _s3 import S3Server
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    counter = _ServedBytes(server._server.app)
    server._server.app = counter
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}"), counter
    finally:
        server.stop()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_workers_read_the_object_not_the_client(
    counting_s3,
    isolated_cluster,  # noqa: F811
    tmp_path,
    suffix,
):
    from distributed import Client, get_task_stream

    server, counter = counting_s3
    bucket = server.new_bucket()
    data = (_epi(7, (20, 22, 16, 60)) * 10).astype(np.int16)
    local = _save(tmp_path / f"run{suffix}", data)
    url = _upload(server, local, f"s3://{bucket}/run{suffix}")
    size = local.stat().st_size
    with dask.config.set(scheduler="threads"):
        expected = dm.NiftiMasker(mask_strategy="epi").fit(local)
        expected_mean = np.asarray(dm.open_nifti(local).mean("time"))
    with Client(isolated_cluster.address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        before = counter.to_this_process, counter.to_others
        opened = dm.open_nifti(url, chunks=10, storage_options=server.storage_options)
        with get_task_stream(client) as stream:
            masker = dm.NiftiMasker(mask_strategy="epi").fit(opened)
            mean = opened.mean("time").compute()
        client_bytes = counter.to_this_process - before[0]
        worker_bytes = counter.to_others - before[1]
    np.testing.assert_array_equal(masker.mask_img_.get_fdata(), expected.mask_img_.get_fdata())
    np.testing.assert_array_equal(np.asarray(mean), expected_mean)
    # The client read headers only; the workers read the data (all of it, at least).
    assert client_bytes < 256 << 10, client_bytes
    assert worker_bytes >= size
    workers = {task["worker"] for task in stream.data}
    assert workers and all(worker.startswith("tcp://") for worker in workers)
    # The count sees this process's reads: a whole download by the client is counted.
    counted = counter.to_this_process
    server.filesystem().cat_file(url.removeprefix("s3://"))
    assert counter.to_this_process - counted >= size
    if suffix == ".nii.gz":
        decode = [task for task in stream.data if "daskmask-decode-mean" in str(task["key"])]
        assert len(decode) == 1  # the decode-once pass ran as one task, on a worker


@pytest.mark.timeout(60)
def test_gzip_object_read_in_processes_checks_its_trailer(s3_server, s3_bucket, tmp_path):
    """A lazy read of a remote .nii.gz covers the stream and checks its CRC32."""
    payload = bytearray(gzip.decompress((_save(tmp_path / "r.nii.gz", _epi(2))).read_bytes()))
    compressed = bytearray(gzip.compress(bytes(payload), 0))  # stored blocks: flips decode
    compressed[len(compressed) // 2] ^= 0x10
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(compressed))
    url = _upload(s3_server, bad, f"s3://{s3_bucket}/bad.nii.gz")
    with pytest.raises(NiftiReadError, match=rf"'{url}' is corrupt \(CRC"):
        np.asarray(dm.open_nifti(url))
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint_url


# ------------------------------------------------ fetch once with dask's threads


@pytest.mark.timeout(120)
@pytest.mark.parametrize("given", ["url", "opened"])
def test_threads_download_a_nii_object_once(counting_s3, tmp_path, given):
    """fit's mean pass keeps a local copy that transform reads: one download, not two."""
    server, counter = counting_s3
    bucket = server.new_bucket()
    data = (_epi(8, (20, 22, 16, 60)) * 10).astype(np.int16)
    local = _save(tmp_path / "run.nii", data)
    url = _upload(server, local, f"s3://{bucket}/run.nii")
    size = local.stat().st_size
    expected = dm.NiftiMasker(mask_strategy="epi").fit_transform(local)
    options = {"daskmask.storage-options": {"s3": server.storage_options}}
    with dask.config.set(options, scheduler="threads"):
        # Counted from the open: its GET of the first bytes goes on into fit's pass.
        before = counter.to_this_process
        source = url if given == "url" else dm.open_nifti(url)
        signals = dm.NiftiMasker(mask_strategy="epi").fit_transform(source)
        values = np.asarray(signals)
        served = counter.to_this_process - before
    assert values.tobytes() == np.asarray(expected).tobytes()
    # The data once (a few header reads on top), not once for fit and once more for transform.
    assert size <= served < size + (256 << 10), (served, size)


@pytest.mark.timeout(60)
def test_first_bytes_and_the_pass_from_byte_0_share_one_get(counting_s3, monkeypatch):
    """object_head's streamed GET goes on into open_sequential; unused, it is closed."""
    from daskmask import _fs
    from daskmask._fs import locate, object_head, take_parked_stream
    from daskmask.reading._array import open_sequential

    server, counter = counting_s3
    bucket = server.new_bucket()
    payload = np.random.default_rng(1).integers(0, 255, 3_000_000, np.uint8).tobytes()
    server.filesystem().pipe(f"{bucket}/blob", payload)
    location = locate(f"s3://{bucket}/blob", server.storage_options)
    before = counter.gets_from_this_process
    assert object_head(location) == payload[: _fs.HEAD_BYTES]
    with open_sequential(location) as stream:
        pieces = [stream.read(10), stream.read(100_000), stream.read()]
    assert b"".join(pieces) == payload
    assert counter.gets_from_this_process - before == 1
    # Nobody continues it: closed after PARKED_STREAM_SECONDS, and a pass sends its own GET.
    monkeypatch.setattr(_fs, "PARKED_STREAM_SECONDS", 0.2)
    changed = payload[::-1]
    server.filesystem().pipe(f"{bucket}/blob", changed)
    assert object_head(location) == changed[: _fs.HEAD_BYTES]
    time.sleep(0.6)
    assert take_parked_stream(location) is None
    before = counter.gets_from_this_process
    with open_sequential(location, 1_000_001) as stream:
        assert stream.read() == changed[:1_000_001]
    assert counter.gets_from_this_process - before == 1


@pytest.mark.timeout(60)
def test_sequential_stream_reads_whole_objects_and_stops_where_told(s3_server, s3_bucket):
    from daskmask._fs import locate
    from daskmask.reading._array import open_sequential

    payload = np.random.default_rng(0).integers(0, 255, 3_000_000, np.uint8).tobytes()
    s3_server.filesystem().pipe(f"{s3_bucket}/blob", payload)
    location = locate(f"s3://{s3_bucket}/blob")
    with open_sequential(location) as stream:
        pieces = [stream.read(1), stream.read(70_000), stream.read()]
    assert b"".join(pieces) == payload
    with open_sequential(location, 1_000_001) as stream:
        assert stream.read() == payload[:1_000_001]


@pytest.mark.timeout(60)
def test_connection_broken_mid_stream_is_a_typed_error(tmp_path):
    """A body that ends before its Content-Length: StorageUnreachableError naming the URL."""
    import http.server

    from daskmask._fs import locate
    from daskmask.exceptions import StorageUnreachableError
    from daskmask.reading._array import open_sequential

    class CutShort(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutShort)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/run.nii"
    try:
        with pytest.raises(StorageUnreachableError, match="connection broke") as error:
            with open_sequential(locate(url)) as stream:
                stream.read()
        assert url in str(error.value)
    finally:
        server.shutdown()
        server.server_close()
