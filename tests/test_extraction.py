"""Masked (time, voxel) blocks from time slabs, per-chunk image operations, unmasking.

nilearn is the oracle, computed in each test on the same files.
"""

from __future__ import annotations

import gc
import glob
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from _runs import RUNS
from distributed import Client, LocalCluster
from nilearn import image as nl_image
from nilearn import masking as nl_masking
from test_masker_in_memory import _scratch_file

from daskmask._memory import total_threads
from daskmask.datasets import generate_epi
from daskmask.extraction import (
    apply_mask,
    extract_signals,
    resample_volumes,
    smooth_volumes,
    unmask,
    unmask_to_file,
)
from daskmask.extraction._plan import n_stage_tasks, plan_extraction
from daskmask.reading import open_nifti

PARITY_RUNS = ["example4d", "nitime-fmri1", "nipy-functional", "generated-raw", "nans"]
#: Small budgets forcing several voxel blocks (and several time slabs).
STRATEGIES = [("auto", None), ("intermediate", 40_000)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("extraction-runs")


@pytest.fixture(scope="module")
def isolated_tmp(tmp_path_factory):
    """Temporary stores go into their own folder, so that leftovers can be counted."""
    folder = tmp_path_factory.mktemp("extraction-scratch")
    with dask.config.set({"daskmask.temporary-directory": str(folder)}):
        yield folder


def _leftovers(folder: Path) -> list[str]:
    return glob.glob(os.path.join(folder, "daskmask-*"))


def _run_and_mask(name: str, folder: Path) -> tuple[Path, nib.Nifti1Image]:
    path = RUNS[name](folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = nl_masking.compute_epi_mask(str(path))
        if not np.asarray(mask.dataobj).any():  # nipy's sample: the EPI mask is empty
            mask = nl_masking.compute_background_mask(str(path))
    return path, mask


@pytest.mark.parametrize(("strategy", "block_bytes"), STRATEGIES)
@pytest.mark.parametrize("name", PARITY_RUNS)
def test_apply_mask_equals_nilearn(name, strategy, block_bytes, run_dir, isolated_tmp):
    path, mask = _run_and_mask(name, run_dir)
    expected = nl_masking.apply_mask(str(path), mask)
    signals = apply_mask(path, mask, strategy=strategy, block_bytes=block_bytes)
    assert signals.chunks[0] == (expected.shape[0],)
    if strategy == "intermediate":
        n_time, n_voxels = expected.shape
        voxel_block = max(1, block_bytes // (n_time * expected.dtype.itemsize))
        fewest = -(-n_voxels // voxel_block)
        # within the budget, rounded up to a multiple of the threads
        assert max(signals.chunks[1]) <= voxel_block
        assert fewest <= signals.numblocks[1] < fewest + total_threads()
    result = signals.compute()
    assert result.dtype == expected.dtype
    np.testing.assert_array_equal(result, expected)
    del signals
    gc.collect()
    assert _leftovers(isolated_tmp) == []


@pytest.mark.parametrize("dtype", ["int16", "float32", "float64"])
def test_apply_mask_dtype_rules(dtype, tmp_path, isolated_tmp):
    path = generate_epi(tmp_path / "run.nii", shape=(14, 16, 12), n_timepoints=9)
    if dtype != "int16":
        source = nib.load(path)
        data = np.asarray(source.dataobj).astype(dtype) / 7
        path = tmp_path / f"run_{dtype}.nii.gz"
        nib.save(nib.Nifti1Image(data, source.affine), path)
    mask = nl_masking.compute_epi_mask(str(path))
    for requested in ("f", np.float64, "float32"):
        expected = nl_masking.apply_mask(str(path), mask, dtype=requested)
        result = np.asarray(apply_mask(path, mask, dtype=requested, block_bytes=3_000))
        assert result.dtype == expected.dtype
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("fwhm", [4.0, "fast", (3.0, 5.0, 2.0)])
@pytest.mark.parametrize(("strategy", "block_bytes"), STRATEGIES)
def test_smoothing_equals_nilearn(fwhm, strategy, block_bytes, run_dir):
    path, mask = _run_and_mask("nans", run_dir)
    if not isinstance(fwhm, float):
        # nilearn's apply_mask rejects tuples (reference section 8.8) and "fast";
        # its smooth_array accepts them, so the oracle is smooth then mask.
        data = nl_image.get_data(nib.load(path)).astype(np.float32)
        smoothed = nl_image.image.smooth_array(data, nib.load(path).affine, fwhm=fwhm)
        expected = smoothed[nl_image.get_data(mask).astype(bool)].T
    else:
        expected = nl_masking.apply_mask(str(path), mask, smoothing_fwhm=fwhm)
    result = np.asarray(
        apply_mask(path, mask, smoothing_fwhm=fwhm, strategy=strategy, block_bytes=block_bytes)
    )
    assert result.dtype == expected.dtype == np.float32
    # Same float32 operations in the same order; the tolerance only absorbs
    # scipy's choice of code path for Fortran- versus C-ordered arrays.
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_non_finite_kept_without_ensure_finite(run_dir):
    path, mask = _run_and_mask("nans", run_dir)
    expected = nl_masking.apply_mask(str(path), mask, ensure_finite=False)
    result = np.asarray(apply_mask(path, mask, ensure_finite=False, block_bytes=50_000))
    assert np.isnan(expected).any()
    np.testing.assert_array_equal(result, expected)


def test_3d_and_list_inputs(run_dir):
    path, mask = _run_and_mask("generated-raw", run_dir)
    volume = nl_image.index_img(str(path), 3)
    expected = nl_masking.apply_mask(volume, mask)
    result = apply_mask(volume, mask)
    assert result.ndim == 1
    np.testing.assert_array_equal(np.asarray(result), expected)
    volumes = [nl_image.index_img(str(path), t) for t in range(4)]
    expected = nl_masking.apply_mask(volumes, mask)
    np.testing.assert_array_equal(
        np.asarray(apply_mask(volumes, mask, block_bytes=5000)), expected
    )


def test_mismatched_mask_is_rejected(run_dir):
    path, mask = _run_and_mask("generated-raw", run_dir)
    shifted = nib.Nifti1Image(np.asarray(mask.dataobj), mask.affine + np.diag([0, 0, 0, 0]) + 1)
    with pytest.raises(ValueError, match="is different from img affine"):
        apply_mask(path, shifted)
    cropped = nib.Nifti1Image(np.asarray(mask.dataobj)[:-1], mask.affine)
    with pytest.raises(ValueError, match="is different from img shape"):
        apply_mask(path, cropped)


def test_intermediate_graph_is_linear(run_dir):
    path, mask = _run_and_mask("generated-raw", run_dir)
    run = open_nifti(path, chunks=3)
    mask_array = np.asarray(mask.dataobj).astype(bool)
    signals = extract_signals(run, mask_array, strategy="intermediate", block_bytes=20_000)
    plan = plan_extraction(
        20, run.chunks[3], int(mask_array.sum()), 4, 20_000, parallelism=total_threads()
    )
    n_slabs = len(run.chunks[3])
    # reads + casts/masks (fused or not) per slab, the staging tasks, the index array
    assert len(signals.__dask_graph__()) <= 3 * n_slabs + n_stage_tasks(plan) + 1
    assert signals.numblocks == (1, plan.n_blocks)
    # Culling one block keeps the whole stage 1 (every block needs every slab).
    np.testing.assert_array_equal(
        signals.blocks[0, 1].compute(),
        nl_masking.apply_mask(str(path), mask)[:, plan.voxel_block : 2 * plan.voxel_block],
    )


def test_store_lives_as_long_as_the_graph(run_dir, isolated_tmp):
    path, mask = _run_and_mask("generated-raw", run_dir)
    signals = apply_mask(path, mask, strategy="intermediate", block_bytes=200_000)
    assert len(_leftovers(isolated_tmp)) == 1  # reserved, empty
    first = signals[:, :3].compute()
    assert len(_leftovers(isolated_tmp)) == 1
    whole = signals.compute()
    np.testing.assert_array_equal(whole[:, :3], first)
    # A full compute keeps it: a task recomputed later (a lost worker) reads it again.
    assert len(_leftovers(isolated_tmp)) == 1
    np.testing.assert_array_equal(signals.compute(), whole)
    np.testing.assert_array_equal((signals * 2).compute(), whole * 2)
    partial = apply_mask(path, mask, strategy="intermediate", block_bytes=200_000)
    partial[:, :2].compute()
    assert len(_leftovers(isolated_tmp)) == 2
    del partial, signals
    gc.collect()
    assert _leftovers(isolated_tmp) == []


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as connected,
    ):
        yield connected


def test_distributed_intermediate_equals_nilearn(client, run_dir, isolated_tmp):
    path, mask = _run_and_mask("nans", run_dir)
    signals = apply_mask(path, mask, strategy="intermediate", block_bytes=30_000)
    smoothed = apply_mask(path, mask, smoothing_fwhm=5.0, block_bytes=30_000)
    result, result_smoothed = client.gather(client.compute([signals, smoothed]))
    np.testing.assert_array_equal(result, nl_masking.apply_mask(str(path), mask))
    expected = nl_masking.apply_mask(str(path), mask, smoothing_fwhm=5.0)
    np.testing.assert_allclose(result_smoothed, expected, rtol=1e-5, atol=1e-5)
    del signals, smoothed
    gc.collect()
    assert _leftovers(isolated_tmp) == []


@pytest.mark.parametrize("name", ["generated-raw", "nans", "oblique"])
def test_resample_volumes_equals_resample_img(name, run_dir):
    path = RUNS[name](run_dir)
    image = nib.load(path)
    target_affine = np.diag([4.0, 4.5, 3.5, 1.0])
    target_affine[:3, 3] = image.affine[:3, 3] + 3
    target_shape = (12, 11, 13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = nl_image.resample_img(
            image,
            target_affine=target_affine,
            target_shape=target_shape,
            interpolation="continuous",
            force_resample=True,
            copy_header=True,
        ).get_fdata(dtype=np.float32)
        run = open_nifti(path, chunks=3)
        resampled = resample_volumes(run.data, image.affine, target_affine, target_shape)
    assert resampled.chunks[3] == run.chunks[3]
    result = resampled.compute()
    assert result.shape == expected.shape
    # float32 splines; the clip bounds of the whole run are shared by all chunks.
    scale = np.nanmax(np.abs(expected))
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5 * scale)


def test_resample_clip_range_is_the_whole_run(tmp_path):
    data = np.zeros((8, 8, 8, 4), dtype=np.float32)
    data[3:5, 3:5, 3:5, 0] = 100  # only the first chunk has the maximum
    data[2:6, 2:6, 2:6, 1:] = 1
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "spikes.nii")
    target = np.diag([0.7, 0.7, 0.7, 1.0])
    expected = nl_image.resample_img(
        str(tmp_path / "spikes.nii"),
        target_affine=target,
        target_shape=(10, 10, 10),
        force_resample=True,
        copy_header=True,
    ).get_fdata(dtype=np.float32)
    run = open_nifti(tmp_path / "spikes.nii", chunks=1)
    result = resample_volumes(run.data, affine, target, (10, 10, 10)).compute()
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-4)


def test_smooth_volumes_keeps_time_chunks(run_dir):
    path = RUNS["generated-raw"](run_dir)
    run = open_nifti(path, chunks=4)
    smoothed = smooth_volumes(run.data.astype(np.float32), run.attrs["affine"], 6.0)
    assert smoothed.chunks == run.data.chunks
    expected = nl_image.smooth_img(str(path), 6.0).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(smoothed.compute(), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("order", ["F", "C"])
def test_unmask_equals_nilearn(order, run_dir):
    path, mask = _run_and_mask("example4d", run_dir)
    signals = apply_mask(path, mask, strategy="intermediate", block_bytes=8_000)
    series = np.asarray(signals)
    for X in (series, series[1], [series, series[0]]):
        expected = nl_masking.unmask(X, mask, order=order)
        result = unmask(X, mask, order=order)
        for got, want in zip(
            result if isinstance(result, list) else [result],
            expected if isinstance(expected, list) else [expected],
            strict=True,
        ):
            data = np.asanyarray(got.dataobj)
            assert data.dtype == np.asanyarray(want.dataobj).dtype
            np.testing.assert_array_equal(data, np.asanyarray(want.dataobj))
            np.testing.assert_array_equal(got.affine, want.affine)
    lazy = unmask(signals, mask)  # dask input
    np.testing.assert_array_equal(lazy.get_fdata(), nl_masking.unmask(series, mask).get_fdata())


def test_unmask_rejects_wrong_shapes(run_dir):
    _, mask = _run_and_mask("example4d", run_dir)
    n_voxels = int(np.asarray(mask.dataobj).sum())
    for bad in (np.zeros((2, n_voxels + 1)), np.zeros(n_voxels - 1), np.zeros((1, 1, n_voxels))):
        with pytest.raises(TypeError):
            nl_masking.unmask(bad, mask)
        with pytest.raises(TypeError, match="X must be|2D or 1D"):
            unmask(bad, mask)


@pytest.mark.parametrize(
    ("kind", "suffix"),
    [
        ("numpy", ".nii.gz"),
        ("voxel-blocked", ".nii"),
        ("voxel-blocked", ".nii.gz"),
        ("time-chunked", ".nii"),
        ("zarr", ".nii.gz"),
    ],
)
def test_unmask_to_file_reloads_equal(kind, suffix, run_dir, tmp_path, isolated_tmp):
    import zarr

    path, mask = _run_and_mask("generated-raw", run_dir)
    signals = apply_mask(path, mask, strategy="intermediate", block_bytes=200_000)
    series = signals.compute()
    X = {
        "numpy": series,
        "voxel-blocked": signals,
        "time-chunked": signals.rechunk({0: 7, 1: -1}),
        "zarr": zarr.create_array(
            store=str(tmp_path / "x.zarr"), data=series, chunks=(20, 500), zarr_format=3
        ),
    }[kind]
    out = unmask_to_file(X, mask, tmp_path / f"out{suffix}", block_bytes=400_000)
    reloaded = nib.load(out)
    expected = unmask(series, mask)
    data = np.asanyarray(reloaded.dataobj)
    assert data.dtype == series.dtype
    np.testing.assert_array_equal(data, np.asanyarray(expected.dataobj))
    np.testing.assert_allclose(reloaded.affine, expected.affine)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    del signals, X
    gc.collect()
    assert _leftovers(isolated_tmp) == []


def test_unmask_to_file_3d_and_bad_suffix(run_dir, tmp_path):
    path, mask = _run_and_mask("generated-raw", run_dir)
    series = np.asarray(apply_mask(path, mask))
    out = unmask_to_file(series[0], mask, tmp_path / "one.nii.gz")
    np.testing.assert_array_equal(
        nib.load(out).get_fdata(), nl_masking.unmask(series[0], mask).get_fdata()
    )
    with pytest.raises(ValueError, match="must end with"):
        unmask_to_file(series, mask, tmp_path / "out.img")
    with pytest.raises(TypeError):
        unmask_to_file(series[:, :-1], mask, tmp_path / "out.nii")
    assert not (tmp_path / "out.nii").exists()


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    import dask
    import numpy as np
    import nibabel as nib
    from daskmask.extraction import apply_mask

    path, out, scratch = sys.argv[1:4]
    shape = nib.load(path).shape[:3]
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    radius = (np.array(shape) * 0.42)[:, None, None, None]
    mask = (((grid - centre) / radius) ** 2).sum(axis=0) <= 1
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), nib.load(path).affine)
    with dask.config.set({"daskmask.temporary-directory": scratch, "scheduler": "threads",
                          "num_workers": 2}):
        signals = apply_mask(path, mask_img, block_bytes="32MiB")
        assert signals.numblocks[1] > 10, signals.numblocks
        signals.to_zarr(out)
    peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    print(int(peak.split()[1]) * 1024, signals.shape[1])
    """
)


@pytest.mark.slow
def test_peak_memory_is_bounded_by_the_block_size(tmp_path, big_run):
    path = big_run
    n_timepoints = nib.load(path).shape[3]
    size = os.path.getsize(path)
    assert size > 1.5e9
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = tmp_path / "measure.py"
    script.write_text(_MEMORY_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(path), str(tmp_path / "out.zarr"), str(scratch)],
        capture_output=True,
        text=True,
        check=True,
    )
    peak, n_voxels = (int(value) for value in done.stdout.split())
    masked_bytes = n_timepoints * n_voxels * 4
    assert masked_bytes > 1e9  # the float32 result is bigger than the budget ...
    assert peak < 500 * 2**20, peak  # ... and the process stays several times smaller
    assert list(scratch.iterdir()) == []
    import zarr

    stored = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert stored.shape == (n_timepoints, n_voxels)
    # The first volumes, masked in memory, are the oracle for the stored rows.
    image = nib.load(path)
    shape = image.shape[:3]
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    radius = (np.array(shape) * 0.42)[:, None, None, None]
    mask = (((grid - centre) / radius) ** 2).sum(axis=0) <= 1
    first = np.asarray(image.dataobj[..., :3]).astype(np.float32)
    np.testing.assert_array_equal(stored[:3], first[mask].T)


def test_stores_of_killed_processes_are_removed(tmp_path):
    from daskmask._scratch import TemporaryStore

    script = (
        "import os, signal, sys\n"
        "from daskmask._scratch import TemporaryStore\n"
        "store = TemporaryStore(directory=sys.argv[1])\n"
        "print(store.root, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # no finaliser runs\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True
    )
    orphan = killed.stdout.strip()
    assert killed.returncode == -9 and os.path.isdir(orphan)
    other_host = tmp_path / "daskmask-extract-elsewhere-1-abcd"
    other_host.mkdir()
    mine = TemporaryStore(directory=str(tmp_path))
    other_prefix = TemporaryStore(prefix="daskmask-decoded-", directory=str(tmp_path))
    assert not os.path.exists(orphan)
    assert other_host.is_dir() and os.path.isdir(mine.root) and os.path.isdir(other_prefix.root)
    # a second store of this (live) process leaves the first one alone
    second = TemporaryStore(directory=str(tmp_path))
    assert os.path.isdir(mine.root) and os.path.isdir(second.root)


# The reorganisation's intermediate in the input's narrower dtype (issue 14).


def _saved(
    folder: Path, name: str, data: np.ndarray, affine: np.ndarray, slope: float | None = None
) -> Path:
    """Write ``data`` as a .nii in its own dtype, scaled by ``slope`` (intercept 1.5) if given."""
    path = folder / name
    nib.save(nib.Nifti1Image(data, affine), path)
    if slope is not None:  # nibabel resets the scaling on save: write the header's bytes
        header = nib.load(path).header.copy()
        header["scl_slope"], header["scl_inter"] = slope, 1.5
        with open(path, "r+b") as stream:
            stream.write(header.binaryblock)
    return path


@pytest.fixture(scope="module")
def typed_runs(tmp_path_factory):
    """One run per input dtype: int16, uint8, float32 with NaN and infinities, scaled int16."""
    folder = tmp_path_factory.mktemp("typed-runs")
    base = generate_epi(folder / "base.nii", shape=(14, 16, 12), n_timepoints=23, seed=3)
    raw, affine = np.asanyarray(nib.load(base).dataobj), nib.load(base).affine
    assert raw.dtype == np.int16
    floats = (raw / 7).astype(np.float32)
    floats[7, 8, 6, ::3] = np.nan  # inside the EPI mask: the centre of the field of view
    floats[6, 8, 6, 1::4] = np.inf
    floats[7, 7, 5, 2] = -np.inf
    runs = {
        "int16": _saved(folder, "int16.nii", raw, affine),
        "uint8": _saved(folder, "uint8.nii", (raw // 16).clip(0, 255).astype(np.uint8), affine),
        "float32": _saved(folder, "float32.nii", floats, affine),
        "scaled": _saved(folder, "scaled.nii", raw, affine, slope=0.5),
    }
    # nibabel (so daskmask) scales int16 by a float32 slope and intercept into float64
    assert np.asanyarray(nib.load(runs["scaled"]).dataobj).dtype == np.float64
    mask = nl_masking.compute_epi_mask(str(base))
    assert np.asarray(mask.dataobj)[[7, 6, 7], [8, 8, 7], [6, 6, 5]].all()
    return runs, mask


@pytest.mark.parametrize(
    ("kind", "requested", "stored"),
    [
        ("int16", "f", np.int16),
        ("uint8", "f", np.uint8),
        ("float32", "f", np.float32),
        ("float32", "float64", np.float32),
        ("scaled", "f", np.float64),
        ("int16", "float64", np.int16),
        ("scaled", "float32", np.float32),  # never wider than the result
    ],
)
def test_intermediate_file_holds_the_narrow_dtype(
    kind, requested, stored, typed_runs, monkeypatch
):
    from daskmask.extraction import _store

    runs, mask = typed_runs
    expected = nl_masking.apply_mask(str(runs[kind]), mask, dtype=requested)
    # Pieces of 3 rows of a block: reads cast piece by piece, the last piece shorter.
    monkeypatch.setattr(_store, "PIECE_BYTES", 3 * 40 * np.dtype(stored).itemsize)
    signals = apply_mask(
        runs[kind], mask, dtype=requested, strategy="intermediate", block_bytes=4_000
    )
    assert signals.numblocks[1] > 2
    result = signals.compute()
    # The file holds the input's (scaled) values, not the result's wider ones.
    assert Path(_scratch_file(signals)).stat().st_size == expected.size * np.dtype(stored).itemsize
    assert result.dtype == expected.dtype
    np.testing.assert_array_equal(result, expected)
    if kind == "float32":
        assert np.isfinite(result).all() and (result == 0).sum() > (expected.shape[0] // 3)


@pytest.mark.parametrize("kind", ["int16", "uint8", "float32", "scaled"])
@pytest.mark.parametrize("requested", ["f", "float64", "float32"])
def test_in_graph_rechunk_of_narrow_values_equals_nilearn(kind, requested, typed_runs):
    runs, mask = typed_runs
    expected = nl_masking.apply_mask(str(runs[kind]), mask, dtype=requested)
    signals = apply_mask(
        runs[kind], mask, dtype=requested, strategy="in-memory", block_bytes=4_000
    )
    assert signals.dtype == expected.dtype
    result = signals.compute()
    assert result.dtype == expected.dtype
    np.testing.assert_array_equal(result, expected)


def test_non_finite_kept_in_a_narrow_float_intermediate(typed_runs):
    runs, mask = typed_runs
    expected = nl_masking.apply_mask(
        str(runs["float32"]), mask, dtype="float64", ensure_finite=False
    )
    assert np.isnan(expected).any() and np.isinf(expected).any()
    signals = apply_mask(
        runs["float32"],
        mask,
        dtype="float64",
        ensure_finite=False,
        strategy="intermediate",
        block_bytes=4_000,
    )
    np.testing.assert_array_equal(signals.compute(), expected)


@pytest.mark.parametrize(
    ("input_dtype", "out_dtype", "expected"),
    [
        ("int16", "float32", "int16"),
        ("uint8", "float32", "uint8"),
        ("float32", "float64", "float32"),
        ("int32", "float64", "int32"),
        ("float64", "float32", "float32"),  # never widened: cast in stage 1
        ("int32", "float32", "float32"),  # same size (and inexact)
        ("float32", "int64", "int64"),  # narrower but not exact
        (">i2", "float32", "int16"),  # native byte order
    ],
)
def test_intermediate_dtype_rules(input_dtype, out_dtype, expected):
    from daskmask.extraction._apply_mask import intermediate_dtype

    chosen = intermediate_dtype(input_dtype, out_dtype)
    assert chosen == np.dtype(expected) and chosen.isnative


@pytest.mark.cluster
def test_p2p_moves_the_narrow_values(client, typed_runs):
    runs, mask = typed_runs
    expected = nl_masking.apply_mask(str(runs["int16"]), mask)
    with client.as_current():
        signals = apply_mask(runs["int16"], mask, strategy="p2p", block_bytes=4_000)
        result = signals.compute()
    (exchange,) = [name for name in signals.dask.layers if "rechunk-p2p" in name]
    # The exchange moves stage 1's int16 rows; the cast to float32 follows it.
    assert signals.dask.dependencies[signals.name] == {exchange}
    exchanged = da.Array(signals.dask, exchange, chunks=signals.chunks, meta=np.empty((0, 0)))
    with client.as_current():
        assert exchanged.compute().dtype == np.int16
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)
