"""Tests of the pure time-chunk planner (daskmask.reading._chunks)."""

from __future__ import annotations

import math

import dask
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskmask.reading._chunks import default_chunk_bytes, plan_time_chunks, volumes_per_chunk

spatial_shapes = st.tuples(*(st.integers(1, 64) for _ in range(3)))
itemsizes = st.sampled_from([1, 2, 4, 8, 16])


def _check_plan(plan, shape):
    """A plan covers the shape, keeps space whole and cuts time into slabs."""
    assert len(plan) == len(shape)
    for dim_chunks, size in zip(plan[:3], shape[:3], strict=False):
        assert dim_chunks == (size,)
    time_chunks = plan[3]
    assert sum(time_chunks) == shape[3]
    assert all(chunk > 0 for chunk in time_chunks)
    # all chunks equal except a smaller last one
    assert len(set(time_chunks[:-1])) <= 1
    assert time_chunks[-1] <= time_chunks[0]


@settings(max_examples=60, deadline=None)
@given(spatial=spatial_shapes, n_volumes=st.integers(1, 500), per_chunk=st.integers(1, 600))
def test_int_chunks_give_that_many_volumes(spatial, n_volumes, per_chunk):
    shape = (*spatial, n_volumes)
    plan = plan_time_chunks(shape, 4, per_chunk)
    _check_plan(plan, shape)
    assert plan[3][0] == min(per_chunk, n_volumes)
    assert len(plan[3]) == math.ceil(n_volumes / min(per_chunk, n_volumes))
    # the dict form means the same
    assert plan_time_chunks(shape, 4, {"time": per_chunk}) == plan


@settings(max_examples=60, deadline=None)
@given(
    spatial=spatial_shapes,
    n_volumes=st.integers(1, 300),
    itemsize=itemsizes,
    budget=st.integers(1, 2**22),
)
def test_byte_chunks_fit_whole_volumes_in_budget(spatial, n_volumes, itemsize, budget):
    shape = (*spatial, n_volumes)
    plan = plan_time_chunks(shape, itemsize, f"{budget}B")
    _check_plan(plan, shape)
    volume_bytes = math.prod(spatial) * itemsize
    per_chunk = plan[3][0]
    if per_chunk > 1:
        assert per_chunk * volume_bytes <= budget
    if per_chunk < n_volumes:
        # one more volume would not fit
        assert (per_chunk + 1) * volume_bytes > budget
    assert plan_time_chunks(shape, itemsize, {"time": f"{budget}B"}) == plan


@settings(max_examples=30, deadline=None)
@given(spatial=spatial_shapes, n_volumes=st.integers(1, 300), itemsize=itemsizes)
def test_auto_uses_dask_chunk_size(spatial, n_volumes, itemsize):
    shape = (*spatial, n_volumes)
    with dask.config.set({"array.chunk-size": "64KiB"}):
        auto = plan_time_chunks(shape, itemsize, "auto")
        assert plan_time_chunks(shape, itemsize, {}) == auto
    assert auto == plan_time_chunks(shape, itemsize, "64KiB")


def test_auto_default_is_the_task_budget():
    shape = (91, 109, 91, 1200)
    expected_bytes = default_chunk_bytes()
    per_chunk = volumes_per_chunk(shape, 4, "auto")
    assert per_chunk == expected_bytes // (91 * 109 * 91 * 4)


def test_volume_bigger_than_budget_gives_one_volume_per_chunk():
    plan = plan_time_chunks((100, 100, 100, 7), 8, "1KiB")
    assert plan[3] == (1,) * 7


@pytest.mark.parametrize("shape", [(5,), (5, 6), (5, 6, 7)])
def test_fewer_than_four_dims_is_one_chunk(shape):
    assert plan_time_chunks(shape, 4, 3) == tuple((size,) for size in shape)


@pytest.mark.parametrize(
    "chunks",
    [0, -3, "0B", "-5MiB", "lots", {"x": 3}, {"time": 0}, {"time": 2, "y": 4}, {"time": "bad"}],
)
def test_bad_values_raise_value_error(chunks):
    with pytest.raises(ValueError, match="chunks must be 'auto'"):
        plan_time_chunks((2, 2, 2, 10), 4, chunks)


@pytest.mark.parametrize("chunks", [None, 2.5, True, [3], (3,), {"time": None}, {"time": {}}])
def test_bad_types_raise_type_error(chunks):
    with pytest.raises(TypeError, match="chunks must be 'auto'"):
        plan_time_chunks((2, 2, 2, 10), 4, chunks)


def test_bad_chunks_rejected_for_3d_too():
    with pytest.raises(ValueError, match="chunks must be 'auto'"):
        plan_time_chunks((2, 2, 2), 4, -1)
