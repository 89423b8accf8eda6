"""The pure planning of the time-slab to voxel-block reorganisation."""

from __future__ import annotations

import dask
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daskmask.extraction._plan import (
    n_stage_tasks,
    plan_extraction,
    plan_slab_volumes,
    resolve_block_bytes,
    split_evenly,
)


@st.composite
def runs(draw):
    n_time = draw(st.integers(1, 5000))
    slab = draw(st.integers(1, n_time))
    time_chunks = split_evenly(n_time, slab)
    n_voxels = draw(st.integers(1, 300_000))
    itemsize = draw(st.sampled_from([1, 2, 4, 8]))
    block_bytes = draw(st.integers(1, 2**31))
    return n_time, time_chunks, n_voxels, itemsize, block_bytes


@given(runs())
def test_plan_blocks_cover_the_voxels_within_the_budget(run):
    n_time, time_chunks, n_voxels, itemsize, block_bytes = run
    plan = plan_extraction(n_time, time_chunks, n_voxels, itemsize, block_bytes)
    assert sum(plan.voxel_chunks) == n_voxels
    assert all(size == plan.voxel_block for size in plan.voxel_chunks[:-1])
    assert 0 < plan.voxel_chunks[-1] <= plan.voxel_block
    # A block fits the budget unless a single voxel's series is already bigger.
    assert plan.block_nbytes <= block_bytes or plan.voxel_block == 1
    # The largest block that fits: one more voxel would not fit.
    if plan.voxel_block < n_voxels:
        assert n_time * (plan.voxel_block + 1) * itemsize > block_bytes
    assert plan.time_chunks == tuple(time_chunks)


@given(runs())
def test_strategy_is_in_memory_exactly_when_the_run_fits(run):
    n_time, time_chunks, n_voxels, itemsize, block_bytes = run
    plan = plan_extraction(n_time, time_chunks, n_voxels, itemsize, block_bytes)
    fits = n_time * n_voxels * itemsize <= block_bytes
    assert plan.strategy == ("in-memory" if fits else "intermediate")
    if plan.strategy == "in-memory":
        assert plan.n_blocks == 1


@given(runs())
def test_intermediate_graph_is_linear_in_chunks(run):
    n_time, time_chunks, n_voxels, itemsize, block_bytes = run
    plan = plan_extraction(n_time, time_chunks, n_voxels, itemsize, block_bytes)
    assert n_stage_tasks(plan) == len(time_chunks) + plan.n_blocks + 2


@given(st.integers(0, 10_000), st.integers(1, 10**9), st.integers(1, 2**31))
def test_slab_volumes_fit_the_budget(n_time, per_timepoint, block_bytes):
    volumes = plan_slab_volumes(n_time, per_timepoint, block_bytes)
    assert 1 <= volumes <= max(n_time, 1)
    assert volumes * per_timepoint <= block_bytes or volumes == 1


@given(st.integers(0, 10_000), st.integers(1, 500))
def test_split_evenly_sums(total, block):
    chunks = split_evenly(total, block)
    assert sum(chunks) == total
    assert all(0 < size <= block for size in chunks) or chunks == (0,)


def test_forced_strategy_and_block():
    plan = plan_extraction(10, (5, 5), 100, 4, "1MiB", strategy="intermediate", voxel_block=7)
    assert plan.strategy == "intermediate"
    assert plan.voxel_chunks == (7,) * 14 + (2,)
    assert plan.block_bytes == 2**20


def test_default_budget_is_dask_chunk_size():
    with dask.config.set({"array.chunk-size": "3MiB"}):
        assert resolve_block_bytes(None) == 3 * 2**20
        assert plan_extraction(1, (1,), 1, 4).block_bytes == 3 * 2**20


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"time_chunks": (3, 3)}, ValueError),
        ({"strategy": "p2p"}, ValueError),
        ({"voxel_block": 0}, ValueError),
        ({"block_bytes": -1}, ValueError),
        ({"block_bytes": 1.5}, TypeError),
        ({"block_bytes": "lots"}, ValueError),
    ],
)
def test_bad_plan_arguments(kwargs, error):
    arguments = {"n_timepoints": 5, "time_chunks": (5,), "n_voxels": 10, "itemsize": 4}
    arguments.update(kwargs)
    with pytest.raises(error):
        plan_extraction(**arguments)


@given(runs(), st.integers(1, 16))
def test_parallelism_only_splits_blocks_further(run, parallelism):
    n_time, time_chunks, n_voxels, itemsize, block_bytes = run
    base = plan_extraction(n_time, time_chunks, n_voxels, itemsize, block_bytes)
    plan = plan_extraction(
        n_time, time_chunks, n_voxels, itemsize, block_bytes, parallelism=parallelism
    )
    assert sum(plan.voxel_chunks) == n_voxels
    assert plan.voxel_block <= base.voxel_block
    assert plan.n_blocks >= base.n_blocks
    if base.n_blocks == 1:
        assert plan == base  # a run that fits one block is not split


@pytest.mark.parametrize(
    ("n_voxels", "parallelism", "expected_blocks"),
    [(134_979, 2, 6), (134_979, 1, 5), (134_979, 4, 8), (134_979, 3, 6), (20_000, 2, 1)],
)
def test_block_count_is_a_multiple_of_the_threads(n_voxels, parallelism, expected_blocks):
    # HCP-like: 1200 float32 time points, 128 MiB blocks -> 5 blocks of 27,962 voxels alone
    plan = plan_extraction(1200, (1200,), n_voxels, 4, 128 * 2**20, parallelism=parallelism)
    assert plan.n_blocks == expected_blocks


# --- the facts of where it runs ---------------------------------------------------------

#: A run that does not fit in the budget: 100 time points x 1000 voxels x 4 bytes > 1 KiB.
LARGE = dict(n_timepoints=100, time_chunks=(50, 50), n_voxels=1000, itemsize=4, block_bytes=1024)


@pytest.mark.parametrize(
    ("distributed", "shared", "chosen"),
    [(False, True, "intermediate"), (True, True, "intermediate"), (True, False, "p2p")],
)
def test_auto_follows_who_sees_the_scratch_folder(distributed, shared, chosen):
    plan = plan_extraction(**LARGE, distributed=distributed, scratch_shared=shared)
    assert plan.strategy == chosen
    # A run that fits is rechunked in the graph wherever it runs.
    small = plan_extraction(**{**LARGE, "block_bytes": 2**20}, distributed=distributed)
    assert small.strategy == "in-memory"


@pytest.mark.parametrize("forced", ["in-memory", "intermediate", "p2p"])
def test_a_forced_strategy_wins_over_the_facts(forced):
    plan = plan_extraction(**LARGE, strategy=forced, distributed=True, scratch_shared=True)
    assert plan.strategy == forced


def test_p2p_needs_a_distributed_client():
    with pytest.raises(ValueError, match=r"distributed\.Client.*daskmask\.reorganise"):
        plan_extraction(**LARGE, strategy="p2p", distributed=False)
    with pytest.raises(ValueError, match="daskmask.reorganise"):
        plan_extraction(**LARGE, strategy="files")


# --- values moved narrower than the result (an int16 run's, for float32 signals) ---------


@pytest.mark.parametrize("strategy", ["in-memory", "intermediate", "p2p"])
def test_a_p2p_block_holds_its_narrow_values_and_their_cast_in_budget(strategy):
    wide = plan_extraction(**LARGE, strategy=strategy, distributed=True)
    narrow = plan_extraction(**LARGE, strategy=strategy, distributed=True, intermediate_itemsize=2)
    assert (wide.intermediate_itemsize, narrow.intermediate_itemsize) == (4, 2)
    if strategy == "p2p":  # a whole narrow block is cast at once
        held = LARGE["n_timepoints"] * narrow.voxel_block * (4 + 2)
        assert held <= LARGE["block_bytes"] < held + LARGE["n_timepoints"] * (4 + 2)
        assert narrow.voxel_block < wide.voxel_block
    else:  # the raw file is read piecewise; the in-graph rechunk holds the run anyway
        assert narrow.voxel_block == wide.voxel_block


@pytest.mark.parametrize("intermediate_itemsize", [0, 8])
def test_the_intermediate_is_never_wider_than_the_result(intermediate_itemsize):
    with pytest.raises(ValueError, match="intermediate's at most the result's"):
        plan_extraction(**LARGE, intermediate_itemsize=intermediate_itemsize)
