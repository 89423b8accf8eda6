"""Lazy signals computed into memory fill one preallocated result (issue 14 §1)."""

from __future__ import annotations

import gc

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask._task_spec import convert_legacy_graph
from dask.core import flatten

from daskmask.maskers._in_memory import InMemoryResult, _finalize, _Result, in_memory_result
from daskmask.signal._clean import clean_columns_in_place


def _signals() -> tuple[da.Array, np.ndarray]:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((40, 1000)).astype(np.float32)
    lazy = da.from_array(values, chunks=(40, 130)) * 2
    return lazy, values * 2


def _fills(array: da.Array) -> bool:
    """Whether the optimised graph copies the blocks into one result."""
    graph = dict(array.__dask_optimize__(array.dask, array.__dask_keys__()))
    return any(isinstance(key, tuple) and key[0].startswith("daskmask-block-") for key in graph)


def test_same_values_through_every_way_into_memory() -> None:
    lazy, expected = _signals()
    wrapped = in_memory_result(lazy)
    assert isinstance(wrapped, InMemoryResult)
    signals = xr.DataArray(wrapped, dims=("time", "voxel"))
    for result in (
        wrapped.compute(),
        np.asarray(wrapped),
        signals.to_numpy(),
        signals.values,
        signals.compute().values,
        wrapped.compute(scheduler="synchronous"),
    ):
        np.testing.assert_array_equal(result, expected)
        assert result.dtype == expected.dtype
        assert result.flags.c_contiguous


def test_two_computations_give_two_arrays() -> None:
    lazy, expected = _signals()
    wrapped = in_memory_result(lazy)
    first, second = wrapped.compute(), wrapped.compute()
    assert not np.shares_memory(first, second)
    first[:] = 0
    np.testing.assert_array_equal(second, expected)


@pytest.mark.parametrize("collecting", [True, False])
def test_the_optimisation_leaves_the_collector_as_it_was(collecting: bool) -> None:
    lazy, expected = _signals()
    seen: list[bool] = []

    def record(block: np.ndarray) -> np.ndarray:
        seen.append(gc.isenabled())  # in a task: after the optimisation's pause
        return block

    was = gc.isenabled()
    (gc.enable if collecting else gc.disable)()
    try:
        wrapped = in_memory_result(lazy.map_blocks(record))
        assert _fills(wrapped)  # the optimisation ran, and left the collector
        assert gc.isenabled() is collecting
        np.testing.assert_array_equal(wrapped.compute(), expected)
        assert gc.isenabled() is collecting
        assert seen and set(seen) == {collecting}
    finally:
        (gc.enable if was else gc.disable)()


def test_threads_fill_one_result_other_schedulers_do_not() -> None:
    lazy, _ = _signals()
    wrapped = in_memory_result(lazy)
    assert _fills(wrapped)
    with dask.config.set(scheduler="processes"):
        assert not _fills(wrapped)


def test_derived_arrays_and_parts_are_ordinary() -> None:
    lazy, expected = _signals()
    wrapped = in_memory_result(lazy)
    part = wrapped[:, :50]
    assert type(part) is da.Array
    np.testing.assert_array_equal(part.compute(), expected[:, :50])
    persisted = wrapped.persist()
    np.testing.assert_array_equal(persisted.compute(), expected)
    total, values = dask.compute(wrapped.sum(), wrapped)
    np.testing.assert_allclose(total, expected.sum(), rtol=1e-5)
    np.testing.assert_array_equal(values, expected)


def test_blocks_viewing_another_array_are_copied() -> None:
    """The final step returns only a result made for the computation, never a user's array."""
    user = np.arange(20.0).reshape(2, 10)
    chunks = ((2,), (5, 5))
    result = _finalize([[user[:, :5], user[:, 5:]]], chunks)
    np.testing.assert_array_equal(result, user)
    assert not np.shares_memory(result, user)


def test_blocks_out_of_place_are_copied() -> None:
    made = _Result((2, 10), np.dtype(float))
    base = made.array()
    base[:] = np.arange(20.0).reshape(2, 10)
    # blocks handed in the wrong order: concatenated as given, not returned as the base
    result = _finalize([[base[:, 5:], base[:, :5]]], ((2,), (5, 5)))
    expected = np.concatenate([base[:, 5:], base[:, :5]], axis=1)
    np.testing.assert_array_equal(result, expected)
    assert not np.shares_memory(result, base)


def test_a_pickled_result_detaches() -> None:
    import pickle

    made = _Result((2, 3), np.dtype(np.float32))
    copy = pickle.loads(pickle.dumps(made))
    assert made.attached
    assert not copy.attached


@pytest.mark.parametrize("chunks", [(40, 1000), (10, 300)])
def test_any_block_layout(chunks: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((40, 1000))
    wrapped = in_memory_result(da.from_array(values, chunks=chunks) + 1)
    np.testing.assert_array_equal(wrapped.compute(), values + 1)
    assert len(list(flatten(wrapped.__dask_keys__()))) == wrapped.npartitions


# --- The extraction's intermediate kept in the result (no scratch file) -----------


def _extracted(n_time: int = 30) -> tuple[da.Array, np.ndarray]:
    """Masked signals of a small run through the raw intermediate, in 4 voxel blocks."""
    from daskmask.extraction import extract_signals

    rng = np.random.default_rng(2)
    run = (rng.standard_normal((6, 5, 4, n_time)) * 10 + 100).astype(np.float32)
    mask = rng.random((6, 5, 4)) < 0.8
    signals = extract_signals(
        da.from_array(run, chunks=(6, 5, 4, 7)),
        mask,
        strategy="intermediate",
        block_bytes=n_time * 4 * 25,
    )
    assert signals.numblocks[1] > 2
    return signals, run[mask].T


def _scratch_file(array: da.Array) -> str:
    """The path of the raw intermediate file ``array``'s graph would write."""
    import os

    from daskmask.extraction import _store

    (store,) = [
        task[1]
        for name, layer in array.dask.layers.items()
        if name.startswith(_store.LAYER_PREFIX)
        for task in layer.values()
        if isinstance(task, tuple) and task and task[0] is _store.prepare_store
    ]
    return os.path.join(os.fspath(store), _store.RAW)


def _subtasks(node: object) -> list[object]:
    """``node`` and the tasks fused into it."""
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(getattr(current, "dependencies_tasks", None) or ())
        stack.extend(getattr(current, "tasks", None) or ())
        stack.extend(arg for arg in getattr(current, "args", ()) if hasattr(arg, "func"))
    return found


def test_intermediate_is_kept_in_the_result() -> None:
    """Same values as through the file, and the file is never written."""
    import os

    from daskmask.signal import clean

    signals, raw = _extracted()
    cleaned = clean(signals, detrend=True, standardize="zscore_sample")
    wrapped = in_memory_result(cleaned)
    for scheduler in ("threads", "synchronous"):
        in_result = wrapped.compute(scheduler=scheduler)
        assert not os.path.exists(_scratch_file(wrapped))
        assert in_result.flags.c_contiguous
    through_file = cleaned.compute()  # an ordinary array: the file
    assert os.path.exists(_scratch_file(cleaned))
    np.testing.assert_array_equal(in_result, through_file)
    # every block was cleaned in the result's own columns (no copy in, none back)
    graph = convert_legacy_graph(
        dict(wrapped.__dask_optimize__(wrapped.dask, wrapped.__dask_keys__()))
    )
    in_place = [
        node
        for node in graph.values()
        if clean_columns_in_place in {getattr(sub, "func", None) for sub in _subtasks(node)}
    ]
    assert len(in_place) == wrapped.numblocks[1]
    np.testing.assert_array_equal(np.asarray(in_memory_result(signals)), raw)


@pytest.mark.parametrize("case", ["psc", "scrubbed", "float64", "reversed"])
def test_intermediate_stays_a_file_when_blocks_are_not_their_own_columns(case: str) -> None:
    """psc (every block waits for all), fewer rows, another dtype, blocks reading other columns."""
    import os

    from daskmask.signal import clean

    signals, raw = _extracted()
    if case == "psc":
        lazy = clean(signals, detrend=True, standardize="psc")
        expected = clean(raw, detrend=True, standardize="psc")
    elif case == "scrubbed":
        kept = np.arange(2, 30)
        lazy = clean(signals, standardize="zscore_sample", sample_mask=kept)
        expected = clean(raw, standardize="zscore_sample", sample_mask=kept)
    elif case == "float64":
        lazy = signals.astype(np.float64)
        expected = raw.astype(np.float64)
    else:
        lazy = signals[:, ::-1].rechunk(signals.chunks)
        expected = raw[:, ::-1]
    result = in_memory_result(lazy).compute(scheduler="synchronous")
    assert os.path.exists(_scratch_file(lazy))
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
