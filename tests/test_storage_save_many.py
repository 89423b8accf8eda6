"""save_many: many results stores in one dask computation, each complete and atomic."""

from __future__ import annotations

import os
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

import daskmask as dm
from daskmask.datasets import generate_epi
from daskmask.exceptions import InputChangedError
from daskmask.storage import StoreExistsError, open_results, save_many


def _runs(folder: Path, n: int, n_timepoints: int = 12) -> list[Path]:
    """``n`` generated runs of different shapes and lengths (one .nii.gz)."""
    return [
        generate_epi(
            folder / f"run{index}{'.nii.gz' if index == 1 else '.nii'}",
            shape=(14 + index, 16, 12),
            n_timepoints=n_timepoints + index,
            kind="raw",
            seed=index,
        )
        for index in range(n)
    ]


def _signals(paths: list[Path]) -> list[xr.DataArray]:
    """The lazy cleaned signals of each run (its own mask)."""
    return [
        dm.NiftiMasker(detrend=True, standardize="zscore_sample").fit(path).transform(path)
        for path in paths
    ]


def _assert_store_equals(store: Path | str, signals: xr.DataArray) -> None:
    results = open_results(store)
    np.testing.assert_array_equal(results.signals.values, signals.values)
    np.testing.assert_array_equal(results.signals["i"].values, signals["i"].values)


def test_many_stores_each_equal_to_its_signals(tmp_path: Path) -> None:
    runs = _runs(tmp_path, 3)
    signals = _signals(runs)
    paths = [tmp_path / f"out{index}.zarr" for index in range(3)]
    written = save_many(signals, paths)
    assert written == [path.absolute() for path in paths]
    for path, one in zip(paths, signals, strict=True):
        _assert_store_equals(path, one)
    # same content as save(): same arrays, same root attributes but the creation time
    dm.save(signals[0], tmp_path / "single.zarr")
    one, many = open_results(tmp_path / "single.zarr"), open_results(paths[0])
    assert set(one.dataset.variables) == set(many.dataset.variables)
    keep = {key for key in one.dataset.attrs if key not in ("created", "manifest")}
    assert {k: one.dataset.attrs[k] for k in keep} == {k: many.dataset.attrs[k] for k in keep}


def test_one_failing_store_is_absent_and_the_rest_complete_or_absent(tmp_path: Path) -> None:
    runs = _runs(tmp_path, 3)
    signals = _signals(runs)
    # the second run changes on disk after it was opened: reading it fails
    os.utime(runs[2], ns=(0, 0))
    paths = [tmp_path / f"out{index}.zarr" for index in range(3)]
    with dask.config.set(scheduler="threads"):
        outcomes = save_many(signals, paths, on_error="return")
    assert isinstance(outcomes[2], InputChangedError)
    assert not paths[2].exists()
    for outcome, path, one in zip(outcomes[:2], paths[:2], signals[:2], strict=True):
        # the local scheduler stops at the first error: a store is complete or absent
        if isinstance(outcome, BaseException):
            assert not path.exists()
        else:
            _assert_store_equals(path, one)
    # no work folder is left beside the stores
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]
    with pytest.raises(InputChangedError):
        save_many(signals, [tmp_path / f"again{index}.zarr" for index in range(3)])


def test_existing_store_refused_before_anything_is_written(tmp_path: Path) -> None:
    runs = _runs(tmp_path, 2)
    signals = _signals(runs)
    dm.save(signals[1], tmp_path / "b.zarr")
    with pytest.raises(StoreExistsError, match=r"b\.zarr already exists"):
        save_many(signals, [tmp_path / "a.zarr", tmp_path / "b.zarr"])
    assert not (tmp_path / "a.zarr").exists()
    outcomes = save_many(signals, [tmp_path / "a.zarr", tmp_path / "b.zarr"], on_error="return")
    assert isinstance(outcomes[1], StoreExistsError)
    _assert_store_equals(outcomes[0], signals[0])
    save_many(signals, [tmp_path / "a.zarr", tmp_path / "b.zarr"], overwrite=True)
    _assert_store_equals(tmp_path / "b.zarr", signals[1])


def test_bad_arguments_name_the_problem(tmp_path: Path) -> None:
    signals = _signals(_runs(tmp_path, 2))
    with pytest.raises(TypeError, match="2 signals and 1 paths"):
        save_many(signals, [tmp_path / "a.zarr"])
    with pytest.raises(TypeError, match="paths is a str.*daskmask.save"):
        save_many(signals, str(tmp_path / "a.zarr"))
    with pytest.raises(TypeError, match="signals_list is a DataArray"):
        save_many(signals[0], [tmp_path / "a.zarr"])
    with pytest.raises(TypeError, match="on_error"):
        save_many(signals, [tmp_path / "a", tmp_path / "b"], on_error="ignore")
    with pytest.raises(ValueError, match=r"paths\[0\] and paths\[1\] are the same store"):
        save_many(signals, [tmp_path / "a.zarr", tmp_path / "." / "a.zarr"])
    assert not (tmp_path / "a.zarr").exists()
    assert save_many([], []) == []


def test_object_store_urls(tmp_path: Path, s3_bucket: str) -> None:
    runs = _runs(tmp_path, 2)
    signals = _signals(runs)
    urls = [f"s3://{s3_bucket}/sub-{index}.zarr" for index in range(2)]
    assert save_many(signals, urls) == urls
    for url, one in zip(urls, signals, strict=True):
        _assert_store_equals(url, one)


@pytest.mark.cluster
def test_one_computation_on_a_cluster_and_failures_kept_apart(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    runs = _runs(tmp_path, 4, n_timepoints=20)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        signals = _signals(runs)

        def computations(dask_scheduler) -> int:  # type: ignore[no-untyped-def]
            return len(dask_scheduler.computations)

        before = client.run_on_scheduler(computations)
        paths = [tmp_path / f"out{index}.zarr" for index in range(4)]
        assert save_many(signals, paths) == [path.absolute() for path in paths]
        assert client.run_on_scheduler(computations) == before + 1
        for path, one in zip(paths, signals, strict=True):
            _assert_store_equals(path, one)

        # a run that fails does not stop the others on a cluster
        failing = _signals(runs)
        os.utime(runs[0], ns=(0, 0))
        again = [tmp_path / f"again{index}.zarr" for index in range(4)]
        outcomes = save_many(failing, again, on_error="return")
        assert isinstance(outcomes[0], InputChangedError)
        assert not again[0].exists()
        for path, one in zip(again[1:], signals[1:], strict=True):
            _assert_store_equals(path, one)
