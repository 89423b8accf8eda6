"""Lazy signals computed into memory fill one preallocated result (issue 14 §1)."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.core import flatten

from daskmask.maskers._in_memory import InMemoryResult, _finalize, _Result, in_memory_result


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
