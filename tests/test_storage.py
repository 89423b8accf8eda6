"""The Zarr results store: save / open_results round trips, atomicity, errors."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskmask._version import __version__
from daskmask.exceptions import DaskmaskError
from daskmask.storage import (
    CorruptStoreError,
    IncompleteStoreError,
    NotAStoreError,
    Results,
    SignalsLayoutError,
    StoreExistsError,
    StoreNotFoundError,
    open_results,
    save,
)
from daskmask.storage import _layout as layout

# ------------------------------------------------------------ building signals


def _counted(block: np.ndarray, counter_dir: str) -> np.ndarray:
    """Identity block function that leaves one file per call (works across processes)."""
    (Path(counter_dir) / uuid.uuid4().hex).touch()
    return block


def _failing(block: np.ndarray, exc: str, slow: float, block_info=None) -> np.ndarray:
    """Raise ``exc`` in the first voxel block; the others are slow, so still running then."""
    if block_info[None]["chunk-location"][-1] == 0:
        raise {"runtime": RuntimeError("block failed"), "interrupt": KeyboardInterrupt()}[exc]
    time.sleep(slow)
    return block


def _watch_parent(block: np.ndarray, store: str, log: str) -> np.ndarray:
    """Record what the store's directory holds while the store is being written."""
    parent = Path(store).parent
    with open(log, "a") as stream:
        stream.write(json.dumps(sorted(os.listdir(parent))) + "\n")
    return block


def make_signals(
    shape=(5, 6, 7),
    n_time=12,
    block=20,
    dtype=np.float32,
    seed=0,
    lazy=True,
    with_mean=True,
    one_d=False,
    raw_fn=None,
    signals_fn=None,
    **fn_kwargs,
):
    """Signals as the contract describes them: masked raw data, coords, attrs, lazy mean.

    ``raw_fn`` is mapped over the raw time slabs (to count reads), ``signals_fn``
    over the voxel blocks of the signals (to inject failures), both with ``fn_kwargs``.
    Returns ``(X, raw, mask, affine)``.
    """
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) > 0.4
    mask.flat[0] = True
    affine = np.diag([2.0, 3.0, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 7.5]
    values = rng.normal(100, 10, shape + (n_time,)).astype(dtype)
    raw = da.from_array(values, chunks=shape + (max(1, n_time // 3),))
    if raw_fn is not None:
        raw = raw.map_blocks(raw_fn, meta=np.empty((0,) * 4, raw.dtype), **fn_kwargs)
    i, j, k = np.nonzero(mask)
    signals = raw.reshape(-1, n_time)[np.flatnonzero(mask)].T
    if one_d:
        signals = signals[0]
    signals = signals.rechunk(signals.shape[:-1] + (block,))
    if signals_fn is not None:
        signals = signals.map_blocks(
            signals_fn, meta=np.empty((0,) * signals.ndim, signals.dtype), **fn_kwargs
        )
    xyz = affine @ np.vstack([i, j, k, np.ones(i.size)])
    dims = ("voxel",) if one_d else ("time", "voxel")
    coords = {
        "voxel": np.arange(i.size),
        "i": ("voxel", i.astype(np.int32)),
        "j": ("voxel", j.astype(np.int32)),
        "k": ("voxel", k.astype(np.int32)),
        "x": ("voxel", xyz[0]),
        "y": ("voxel", xyz[1]),
        "z": ("voxel", xyz[2]),
    }
    if not one_d:
        coords["time"] = np.arange(n_time) * 2.0
    attrs = {
        "affine": affine.tolist(),
        "mask_shape": list(shape),
        "masker_params": {
            "standardize": "zscore_sample",
            "low_pass": None,
            "t_r": 2.0,
            "target_affine": None,
            "smoothing_fwhm": [4.0, 4.0, 4.0],
            "mask_img": "/data/mask.nii.gz",
        },
        "provenance": {
            "paths": ["/data/run.nii.gz"],
            "sizes": [12345],
            "header_sha256": ["ab" * 32],
        },
        "daskmask_version": __version__,
    }
    if with_mean:
        attrs["mean_image"] = raw.mean(axis=-1)
    X = xr.DataArray(signals, dims=dims, coords=coords, attrs=attrs, name="signals")
    if not lazy:
        X = X.copy(data=X.values)
        if with_mean:
            X.attrs["mean_image"] = np.asarray(attrs["mean_image"])
    return X, raw, mask, affine


def json_attrs(X: xr.DataArray) -> dict:
    return json.loads(json.dumps({k: v for k, v in X.attrs.items() if k != "mean_image"}))


def siblings(path: Path) -> list[str]:
    return [name for name in os.listdir(path.parent) if layout.is_sibling_of(name, path)]


def assert_round_trip(X: xr.DataArray, results: Results) -> None:
    signals = results.signals
    assert isinstance(signals.data, da.Array)
    assert signals.name == "signals"
    assert signals.dims == X.dims
    assert signals.dtype == X.dtype
    expected_chunks = X.chunks if X.chunks is not None else signals.chunks
    assert signals.chunks == expected_chunks
    assert signals.attrs == json_attrs(X)
    xr.testing.assert_identical(
        signals.drop_attrs().compute(), X.drop_attrs().compute().rename("signals")
    )
    for name in ("i", "j", "k", "x", "y", "z"):
        assert signals[name].dtype == X[name].dtype


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture(params=["threads", "distributed"])
def scheduler(request):
    """Run the test on the threaded scheduler and on a real LocalCluster."""
    if request.param == "threads":
        with dask.config.set(scheduler="threads"):
            yield "threads"
    else:
        client = request.getfixturevalue("client")
        with client.as_current(), dask.config.set(scheduler=client.get):
            yield "distributed"


# ------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lazy_round_trip(tmp_path, scheduler, dtype):
    X, raw, mask, affine = make_signals(dtype=dtype)
    path = save(X, tmp_path / "sub-01.zarr")
    assert path == (tmp_path / "sub-01.zarr").absolute()
    results = open_results(path)
    assert_round_trip(X, results)
    np.testing.assert_array_equal(results.mask_img.get_fdata(), mask)
    assert results.mask_img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(results.mask_img.affine, affine)
    mean = results.mean_img.get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(mean, raw.mean(axis=-1).astype(np.float32).compute())
    assert results.mean_img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(results.mean_img.affine, affine)
    np.testing.assert_array_equal(results.affine, affine)
    assert results.masker_params == X.attrs["masker_params"]
    assert results.provenance == X.attrs["provenance"]
    assert results.version == __version__
    assert results.format_version == layout.FORMAT_VERSION == 2
    assert siblings(path) == []


def test_numpy_round_trip_plans_voxel_block_chunks(tmp_path):
    X, _, _, _ = make_signals(lazy=False, n_time=40, shape=(9, 10, 11))
    assert X.chunks is None
    results = open_results(save(X, tmp_path / "np.zarr"))
    assert_round_trip(X, results)
    # small signals: one chunk holding all time and all voxels
    assert results.signals.chunks == ((40,), (X.sizes["voxel"],))
    assert results.mean_img is not None


def test_numpy_chunks_are_voxel_blocks_of_bounded_size():
    assert layout.plan_chunks((1000, 50_000), 4, target_bytes=4_000_000) == (1000, 1000)
    assert layout.plan_chunks((100_000, 7), 8, target_bytes=1) == (100_000, 1)
    assert layout.plan_chunks((7,), 4) == (7,)


def test_one_dimensional_signals(tmp_path):
    X, _, _, _ = make_signals(one_d=True, block=30)
    results = open_results(save(X, tmp_path / "one.zarr"))
    assert results.signals.dims == ("voxel",)
    assert_round_trip(X, results)


def test_irregular_chunks_are_made_regular(tmp_path):
    X, _, _, _ = make_signals(with_mean=False)
    X = X.chunk({"voxel": (5, 30, 100, X.sizes["voxel"] - 135)})
    results = open_results(save(X, tmp_path / "irregular.zarr"))
    np.testing.assert_array_equal(results.signals.values, X.values)
    assert layout.regular_chunks(results.signals.chunks) is not None
    assert results.mean_img is None


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    shape=st.tuples(*(st.integers(1, 6),) * 3),
    n_time=st.integers(1, 9),
    block=st.integers(1, 50),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_any_shape(tmp_path, shape, n_time, block, dtype, seed):
    X, _, mask, _ = make_signals(shape=shape, n_time=n_time, block=block, dtype=dtype, seed=seed)
    path = tmp_path / f"{uuid.uuid4().hex}.zarr"
    with dask.config.set(scheduler="threads"):
        results = open_results(save(X, path))
    assert_round_trip(X, results)
    np.testing.assert_array_equal(results.mask_img.get_fdata(), mask)


@given(
    shape=st.tuples(*(st.integers(1, 7),) * 3),
    seed=st.integers(0, 2**16),
)
def test_mask_from_indices_inverts_nonzero(shape, seed):
    mask = np.random.default_rng(seed).random(shape) > 0.5
    rebuilt = layout.mask_from_indices(*np.nonzero(mask), shape)
    assert rebuilt.dtype == np.uint8
    np.testing.assert_array_equal(rebuilt, mask)


@given(chunks=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_regular_chunks_accepts_only_zarr_grids(chunks):
    regular = all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]
    got = layout.regular_chunks(((4,), tuple(chunks)))
    assert got == ((4, chunks[0]) if regular else None)


def test_store_is_self_describing_for_plain_zarr(tmp_path):
    X, _, _, _ = make_signals(block=25)
    path = save(X, tmp_path / "plain.zarr")
    group = zarr.open_group(path, mode="r")
    attrs = dict(group.attrs)
    assert list(attrs) == list(layout.ROOT_ATTRS)
    assert attrs["complete"] is True
    assert attrs["format_version"] == 2
    arrays = attrs["manifest"]["arrays"]
    assert {k: v for k, v in arrays["signals"].items() if k != "metadata_sha256"} == {
        "shape": [12, X.sizes["voxel"]],
        "chunks": [12, 25],
        "dtype": "float32",
        "n_chunks": -(-X.sizes["voxel"] // 25),
    }
    assert set(arrays) == {
        *("signals", "mask", "mean_image", "time", "voxel"),
        *("i", "j", "k", "x", "y", "z"),
    }
    assert len(attrs["manifest"]["attributes_sha256"]) == 64
    assert attrs["daskmask_version"] == __version__
    assert attrs["mask_shape"] == [5, 6, 7]
    assert attrs["affine"] == X.attrs["affine"]
    assert attrs["created"].endswith("+00:00")
    signals = group["signals"]
    assert signals.metadata.dimension_names == ("time", "voxel")
    assert signals.chunks == (12, 25)
    codec, checksum = signals.compressors
    assert checksum.to_dict() == {"name": "crc32c"}
    assert codec.to_dict()["configuration"] == {
        "typesize": 4,
        "cname": "lz4",
        "clevel": 5,
        "shuffle": "shuffle",
        "blocksize": 0,
    }
    assert group["mask"].dtype == np.uint8
    assert group["mean_image"].dtype == np.float32
    for name in ("time", "voxel", "i", "j", "k", "x", "y", "z"):
        assert name in group
        assert group[name].compressors[-1].to_dict() == {"name": "crc32c"}


@pytest.mark.parametrize(
    ("compressor", "expected"),
    [
        (None, ["crc32c"]),
        ("default", ["blosc", "crc32c"]),
        ([zarr.codecs.ZstdCodec(level=1)], ["zstd", "crc32c"]),
    ],
)
def test_compressor_choice(tmp_path, compressor, expected):
    X, _, _, _ = make_signals()
    path = save(X, tmp_path / "c.zarr", compressor=compressor)
    group = zarr.open_group(path, mode="r")
    for name in ("signals", "mask", "mean_image"):
        assert [c.to_dict()["name"] for c in group[name].compressors] == expected
    np.testing.assert_array_equal(open_results(path).signals.values, X.values)


@pytest.mark.parametrize(("compressor", "error"), [("lz4", ValueError), (3, TypeError)])
def test_bad_compressor(tmp_path, compressor, error):
    X, _, _, _ = make_signals()
    with pytest.raises(error, match="compressor"):
        save(X, tmp_path / "c.zarr", compressor=compressor)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ mask and mean images


def test_mask_and_mean_images_override_and_complete_bare_signals(tmp_path):
    X, raw, mask, affine = make_signals()
    mean = np.asarray(raw.mean(axis=-1)) + 1
    bare = xr.DataArray(X.values, dims=X.dims)
    mask_img = nib.Nifti1Image(mask.astype(np.int8), affine)
    results = open_results(
        save(
            bare,
            tmp_path / "bare.zarr",
            mask_img=mask_img,
            mean_img=nib.Nifti1Image(mean, affine),
        )
    )
    np.testing.assert_array_equal(results.signals.values, X.values)
    for name in ("i", "j", "k"):
        np.testing.assert_array_equal(results.signals[name], X[name])
        assert results.signals[name].dtype == np.int32
    for name in ("x", "y", "z"):
        np.testing.assert_allclose(results.signals[name], X[name], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(results.signals["voxel"], np.arange(mask.sum()))
    np.testing.assert_array_equal(results.mask_img.get_fdata(), mask)
    np.testing.assert_array_equal(results.mean_img.get_fdata(), mean.astype(np.float32))
    np.testing.assert_array_equal(results.affine, affine)


def test_mean_image_on_another_grid_keeps_its_affine(tmp_path):
    X, _, _, affine = make_signals()
    other = np.diag([4.0, 4.0, 4.0, 1.0])
    mean = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    results = open_results(save(X, tmp_path / "m.zarr", mean_img=nib.Nifti1Image(mean, other)))
    assert results.dataset["mean_image"].dims == layout.MEAN_DIMS
    np.testing.assert_array_equal(results.mean_img.affine, other)
    np.testing.assert_array_equal(results.mean_img.get_fdata(), mean)
    np.testing.assert_array_equal(results.mask_img.affine, affine)


def test_mask_img_must_select_the_signals_voxels(tmp_path):
    X, _, mask, affine = make_signals()
    other = mask.copy()
    other.flat[np.flatnonzero(mask)[:2]] = 0
    other.flat[np.flatnonzero(~mask)[:2]] = 1
    with pytest.raises(SignalsLayoutError, match="does not select the voxels"):
        save(X, tmp_path / "a.zarr", mask_img=nib.Nifti1Image(other.astype(np.uint8), affine))
    with pytest.raises(SignalsLayoutError, match="another affine"):
        save(X, tmp_path / "a.zarr", mask_img=nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)))
    with pytest.raises(SignalsLayoutError, match="shape"):
        save(X, tmp_path / "a.zarr", mask_img=nib.Nifti1Image(np.ones((2, 2, 2), "u1"), affine))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda X: X.rename({"voxel": "feature"}), SignalsLayoutError, "dims"),
        (lambda X: X.T, SignalsLayoutError, "dims"),
        (lambda X: X.values, TypeError, "DataArray"),
        (lambda X: X.drop_vars(["i", "j", "k"]), SignalsLayoutError, "mask_img"),
        (lambda X: X.drop_vars(["k"]), SignalsLayoutError, "not all"),
        (lambda X: X.assign_attrs(affine=None), SignalsLayoutError, "affine"),
        (lambda X: X.assign_attrs(mask_shape=None), SignalsLayoutError, "mask shape"),
        (lambda X: X.isel(voxel=slice(None, None, -1)), SignalsLayoutError, "C order"),
        (lambda X: X.isel(voxel=[0, 0, 1]), SignalsLayoutError, "C order"),
        (
            lambda X: X.assign_attrs(mean_image=da.zeros((2, 2, 2))),
            SignalsLayoutError,
            "mean_image",
        ),
        (
            lambda X: X.assign_attrs(mean_image=da.zeros((5, 6, 7, 2))),
            SignalsLayoutError,
            "mean_image",
        ),
    ],
)
def test_signals_breaking_the_contract(tmp_path, change, error, match):
    X, _, _, _ = make_signals()
    with pytest.raises(error, match=match):
        save(change(X), tmp_path / "bad.zarr")
    assert os.listdir(tmp_path) == []


def test_mask_with_fewer_voxels_than_signals(tmp_path):
    X, _, mask, affine = make_signals()
    bare = xr.DataArray(X.values[:, :-1], dims=X.dims)
    with pytest.raises(SignalsLayoutError, match="voxels"):
        save(bare, tmp_path / "bad.zarr", mask_img=nib.Nifti1Image(mask.astype("u1"), affine))


# ------------------------------------------------------------ one computation, one read


def test_signals_and_mean_read_the_input_once(tmp_path, scheduler):
    counter = tmp_path / "reads"
    counter.mkdir()
    X, raw, _, _ = make_signals(n_time=12, raw_fn=_counted, counter_dir=str(counter))
    n_slabs = raw.npartitions
    assert n_slabs == 3
    save(X, tmp_path / "once.zarr")
    assert len(os.listdir(counter)) == n_slabs
    # computing them apart would read it twice: the test can tell
    for entry in counter.iterdir():
        entry.unlink()
    dask.compute(X.data)
    dask.compute(X.attrs["mean_image"])
    assert len(os.listdir(counter)) == 2 * n_slabs


def test_open_reads_no_signals(tmp_path):
    X, _, _, _ = make_signals()
    path = save(X, tmp_path / "lazy.zarr")
    results = open_results(path)
    shutil.rmtree(path / "signals" / "c")  # the chunks of the signals
    assert "signals" in repr(results)
    assert results.mask_img.shape == (5, 6, 7)
    assert results.mean_img.shape == (5, 6, 7)
    # the chunks are gone, so open did not read them; reading them now says so
    with pytest.raises(CorruptStoreError, match=r"Chunk c/0/\d of array 'signals' is missing"):
        results.signals.compute()


def test_write_goes_through_a_hidden_partial_directory(tmp_path):
    log = tmp_path / "log"
    store = tmp_path / "out" / "sub.zarr"
    X, _, _, _ = make_signals(raw_fn=_watch_parent, store=str(store), log=str(log))
    with dask.config.set(scheduler="threads"):
        save(X, store)
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert seen
    for names in seen:
        assert "sub.zarr" not in names
        assert len([n for n in names if n.startswith(".sub.zarr.partial-")]) == 1
    assert os.listdir(store.parent) == ["sub.zarr"]


# ------------------------------------------------------------ failures and interruptions


@pytest.mark.parametrize("exc", ["runtime", "interrupt"])
def test_failed_write_leaves_nothing(tmp_path, exc):
    X, _, _, _ = make_signals(n_time=12, signals_fn=_failing, exc=exc, slow=0.2)
    expected = {"runtime": RuntimeError, "interrupt": KeyboardInterrupt}[exc]
    path = tmp_path / "sub.zarr"
    with dask.config.set(scheduler="threads", num_workers=2), pytest.raises(expected):
        save(X, path)
    time.sleep(0.5)  # let the blocks still running finish: they must not recreate anything
    assert os.listdir(tmp_path) == []


def test_failed_write_on_a_cluster_leaves_nothing(tmp_path, client):
    X, _, _, _ = make_signals(n_time=12, signals_fn=_failing, exc="runtime", slow=0.2)
    path = tmp_path / "sub.zarr"
    with (
        client.as_current(),
        dask.config.set(scheduler=client.get),
        pytest.raises(RuntimeError, match="block failed"),
    ):
        save(X, path)
    time.sleep(0.5)
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_old_store(tmp_path):
    old, _, _, _ = make_signals(seed=1)
    path = save(old, tmp_path / "sub.zarr")
    X, _, _, _ = make_signals(n_time=12, signals_fn=_failing, exc="runtime", slow=0.0)
    with pytest.raises(RuntimeError):
        save(X, path, overwrite=True)
    np.testing.assert_array_equal(open_results(path).signals.values, old.values)
    assert os.listdir(tmp_path) == ["sub.zarr"]


# ------------------------------------------------------------ overwrite rules


def test_existing_store_needs_overwrite(tmp_path):
    old, _, _, _ = make_signals(seed=1)
    new, _, _, _ = make_signals(seed=2, n_time=7)
    path = save(old, tmp_path / "sub.zarr")
    with pytest.raises(StoreExistsError, match="overwrite=True") as info:
        save(new, path)
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, DaskmaskError)
    np.testing.assert_array_equal(open_results(path).signals.values, old.values)
    save(new, path, overwrite=True)
    results = open_results(path)
    np.testing.assert_array_equal(results.signals.values, new.values)
    assert results.signals.sizes["time"] == 7
    assert os.listdir(tmp_path) == ["sub.zarr"]


def test_overwrite_replaces_only_stores(tmp_path):
    X, _, _, _ = make_signals()
    a_file = tmp_path / "file.zarr"
    a_file.write_text("precious")
    a_dir = tmp_path / "dir.zarr"
    a_dir.mkdir()
    (a_dir / "notes.txt").write_text("precious")
    for target in (a_file, a_dir):
        with pytest.raises(StoreExistsError, match="not a Zarr store"):
            save(X, target, overwrite=True)
    assert a_file.read_text() == "precious"
    assert (a_dir / "notes.txt").read_text() == "precious"
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    save(X, empty, overwrite=True)
    assert open_results(empty).signals.shape == X.shape


# ------------------------------------------------------------ opening


def test_incomplete_store_by_hand(tmp_path):
    X, _, _, _ = make_signals()
    path = save(X, tmp_path / "sub.zarr")
    group = zarr.open_group(path, mode="r+")
    group.attrs.update({"complete": False})
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        open_results(path)
    del group.attrs["complete"]
    with pytest.raises(IncompleteStoreError):
        open_results(path)
    # what a killed writer leaves behind: a partial directory without the marker
    partial = tmp_path / ".other.zarr.partial-0000"
    zarr.open_group(partial, mode="w", attributes={"format_version": 1, "daskmask_version": "0"})
    with pytest.raises(IncompleteStoreError):
        open_results(partial)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreNotFoundError) as info:
        open_results(tmp_path / "missing.zarr")
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    zarr.open_group(tmp_path / "other.zarr", mode="w", attributes={"title": "not ours"})
    for name in ("file", "empty", "other.zarr"):
        with pytest.raises(NotAStoreError):
            open_results(tmp_path / name)
    zarr.open_group(
        tmp_path / "future.zarr",
        mode="w",
        attributes={"format_version": 99, "daskmask_version": "9", "complete": True},
    )
    with pytest.raises(NotAStoreError, match="format version 99"):
        open_results(tmp_path / "future.zarr")


def test_results_repr(tmp_path):
    X, _, _, _ = make_signals(block=20)
    n_blocks = -(-X.sizes["voxel"] // 20)
    text = repr(open_results(save(X, tmp_path / "r.zarr")))
    assert "time: 12" in text
    assert f"voxel: {X.sizes['voxel']}" in text
    assert f"{n_blocks} voxel block(s)" in text
    assert "/data/run.nii.gz" in text
    assert "mean image: yes" in text


def test_reopened_signals_save_again(tmp_path):
    X, _, _, _ = make_signals()
    first = open_results(save(X, tmp_path / "a.zarr"))
    second = open_results(save(first.signals, tmp_path / "b.zarr", mean_img=first.mean_img))
    assert_round_trip(first.signals, second)
    np.testing.assert_array_equal(second.mask_img.get_fdata(), first.mask_img.get_fdata())
    np.testing.assert_array_equal(second.mean_img.get_fdata(), first.mean_img.get_fdata())
