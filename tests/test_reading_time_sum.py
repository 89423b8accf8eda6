"""The sum over time of a local ``.nii`` folded straight from its bytes (``time_sum``).

The oracle is numpy's float64 mean of the data nibabel reads (what nilearn
computes): the mean must be the same bit for bit, and the fast path must be
the one taken where it applies.
"""

from __future__ import annotations

import gzip
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest

import daskmask as dm
from daskmask._folding import exact_sum_dtype
from daskmask.exceptions import InputChangedError, NiftiReadError
from daskmask.masking._mean import mean_volume, mean_volumes
from daskmask.reading._array import time_sum

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _write(
    path: Path,
    data: np.ndarray,
    *,
    big_endian: bool = False,
    slope: float | None = None,
    inter: float | None = None,
) -> Path:
    """Write ``data`` byte by byte in its own dtype, with exactly the given scaling."""
    # NIfTI-1 dimensions are int16: longer runs need a NIfTI-2 header.
    kind = nib.Nifti2Header if max(data.shape) > 32767 else nib.Nifti1Header
    header = kind(endianness=">" if big_endian else "<")
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_sform(AFFINE, code=1)
    header.set_qform(AFFINE, code=1)
    if slope is not None:
        header["scl_slope"] = slope
    if inter is not None:
        header["scl_inter"] = inter
    offset = int(header.single_vox_offset)
    header.set_data_offset(offset)
    on_disk = data.astype(header.get_data_dtype())
    block = header.binaryblock
    payload = block + bytes(offset - len(block)) + on_disk.tobytes(order="F")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as stream:
        stream.write(payload)
    return path


def _extreme(dtype: np.dtype, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values at the ends of the dtype's range: a narrow or float32 sum would show it."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    return rng.choice([info.min, info.min + 1, 0, info.max - 1, info.max], size=shape).astype(
        dtype
    )


def _numpy_mean(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).mean(axis=-1)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16", "int32", "uint32"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_integer_mean_equals_numpy_bit_for_bit(tmp_path, dtype, big_endian):
    path = _write(
        tmp_path / "run.nii", _extreme(np.dtype(dtype), (5, 6, 7, 41), 0), big_endian=big_endian
    )
    run = dm.open_nifti(path, chunks=4)
    assert time_sum(run.data) is not None  # the fold from the file's bytes, not dask's sum
    mean = mean_volume(run)
    expected = _numpy_mean(path)
    assert mean.dtype == expected.dtype == np.float64
    np.testing.assert_array_equal(mean, expected)


@pytest.mark.parametrize(
    ("block_bytes", "slabs"), [(1, 41), (5 * 6 * 7 * 2 * 3, 14), ("32MiB", 1)]
)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_slabs_and_lanes_do_not_change_the_bits(tmp_path, block_bytes, slabs, threads):
    # One volume per slab, 3 volumes per slab (41 is not a multiple), all in one;
    # 1 to 3 tasks, each taking every n-th slab.
    path = _write(tmp_path / "run.nii", _extreme(np.dtype(np.int16), (5, 6, 7, 41), 1))
    with dask.config.set({"daskmask.block-bytes": block_bytes, "num_workers": threads}):
        run = dm.open_nifti(path)
        graph = dict(time_sum(run.data).__dask_graph__())
        mean = mean_volume(run)
    tasks = [key for key in graph if str(key).startswith("nifti-time-sum-")]
    assert len(tasks) == min(threads, slabs) + 1  # the lanes and their float64 addition
    np.testing.assert_array_equal(mean, _numpy_mean(path))


def test_graph_does_not_grow_with_the_chunks(tmp_path):
    path = _write(tmp_path / "run.nii", _extreme(np.dtype(np.int16), (3, 3, 3, 300), 2))
    sizes = {
        chunks: len(dict(time_sum(dm.open_nifti(path, chunks=chunks).data).__dask_graph__()))
        for chunks in (1, 7, 300)
    }
    assert len(set(sizes.values())) == 1, sizes


@pytest.mark.parametrize(("volumes", "narrow"), [(1 << 15, True), ((1 << 15) + 1, False)])
@pytest.mark.parametrize("dtype", ["int16", "uint16"])
def test_longest_int32_run_and_the_next_are_exact(tmp_path, volumes, narrow, dtype):
    info = np.iinfo(dtype)
    data = np.full((2, 1, 1, volumes), info.max, dtype)
    data[1] = info.min
    path = _write(tmp_path / "long.nii", data)
    run = dm.open_nifti(path)
    assert time_sum(run.data) is not None
    mean = mean_volume(run)
    np.testing.assert_array_equal(mean, _numpy_mean(path))
    assert mean[0, 0, 0] == info.max and mean[1, 0, 0] == info.min
    assert (exact_sum_dtype(np.dtype(dtype), volumes) == np.int32) == narrow


@pytest.mark.parametrize(
    ("dtype", "slope", "inter"),
    [("float32", None, None), ("int16", 2.0, 0.0), ("int16", 1.0, 3.0), ("int16", 0.5, -1.0)],
)
def test_scaled_and_float_runs_keep_the_reduction(tmp_path, dtype, slope, inter):
    rng = np.random.default_rng(3)
    data = (rng.standard_normal((4, 5, 6, 23)) * 1000).astype(dtype)
    path = _write(tmp_path / "run.nii", data, slope=slope, inter=inter)
    run = dm.open_nifti(path, chunks=5)
    assert run.dtype.kind == "f"
    assert time_sum(run.data) is None  # scaled values are not the file's bytes
    expected = _numpy_mean(path)
    mean = mean_volume(run)
    assert mean.dtype == expected.dtype
    np.testing.assert_array_equal(mean, expected)


def test_derived_and_compressed_runs_keep_the_reduction(tmp_path):
    data = _extreme(np.dtype(np.int16), (4, 5, 6, 20), 4)
    path = _write(tmp_path / "run.nii", data)
    gz = _write(tmp_path / "run.nii.gz", data)
    run = dm.open_nifti(path, chunks=3)
    derived = [run.isel(time=slice(2, 15)), run.chunk({"time": 5}), run + 0]
    for array in [*derived, dm.open_nifti(gz, chunks=3)]:
        assert time_sum(array.data) is None
    means = mean_volumes(derived)
    np.testing.assert_array_equal(means[0], data[..., 2:15].mean(axis=-1))
    np.testing.assert_array_equal(means[1], data.mean(axis=-1))


def test_concurrent_means_on_threads_do_not_share_buffers(tmp_path):
    # Two files of different values, their means computed at once, many times:
    # a buffer shared between tasks would mix them.
    paths = [
        _write(tmp_path / f"run{index}.nii", _extreme(np.dtype(np.int16), (9, 8, 7, 60), index))
        for index in range(2)
    ]
    expected = [_numpy_mean(path) for path in paths]
    runs = [dm.open_nifti(path, chunks=2) for path in paths]
    barrier = threading.Barrier(2)

    def means(index: int) -> list[np.ndarray]:
        barrier.wait()
        with dask.config.set({"daskmask.block-bytes": 9 * 8 * 7 * 2 * 2}):
            return [mean_volume(runs[index]) for _ in range(10)]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(means, range(2)))
    for index, computed in enumerate(results):
        for mean in computed:
            np.testing.assert_array_equal(mean, expected[index])


def test_file_changed_or_removed_after_open(tmp_path):
    data = _extreme(np.dtype(np.int16), (4, 5, 6, 20), 5)
    path = _write(tmp_path / "run.nii", data)
    run = dm.open_nifti(path, chunks=3)
    other = tmp_path / "other.nii"
    _write(other, data[..., :10])
    os.replace(other, path)
    with pytest.raises(InputChangedError, match=r"run\.nii"):
        mean_volume(run)
    path = _write(tmp_path / "gone.nii", data)
    run = dm.open_nifti(path, chunks=3)
    path.unlink()
    with pytest.raises(NiftiReadError, match=r"File not found: .*gone\.nii"):
        mean_volume(run)


def test_epi_mask_of_a_nii_equals_nilearn(tmp_path):
    nl_masking = pytest.importorskip("nilearn.masking")
    rng = np.random.default_rng(6)
    data = rng.normal(300, 40, (20, 22, 18, 30)).astype(np.int16)
    data[5:-5, 5:-5, 4:-4] += 900
    path = _write(tmp_path / "epi.nii", data)
    ours = dm.NiftiMasker(mask_strategy="epi").fit(path).mask_img_
    theirs = nl_masking.compute_epi_mask(str(path))
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


@pytest.mark.cluster
def test_mean_on_a_distributed_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    path = _write(tmp_path / "run.nii", _extreme(np.dtype(np.uint16), (6, 7, 8, 33), 7))
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        dask.config.set({"daskmask.block-bytes": 6 * 7 * 8 * 2 * 4}),  # 9 slabs
    ):
        run = dm.open_nifti(path, chunks=4)
        graph = dict(time_sum(run.data).__dask_graph__())
        mean = mean_volume(run)
    # One task per worker thread, then their addition.
    assert len([key for key in graph if str(key).startswith("nifti-time-sum-")]) == 3
    np.testing.assert_array_equal(mean, _numpy_mean(path))
