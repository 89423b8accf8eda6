"""The task budget: configured, capped by the memory per thread, seen from workers."""

from __future__ import annotations

import dask
import pytest
from distributed import Client, LocalCluster

from daskmask._memory import (
    BUDGET_KEY,
    COPIES_PER_TASK,
    MAX_AUTO_BYTES,
    MIN_AUTO_BYTES,
    memory_per_thread,
    task_budget_bytes,
)
from daskmask.reading._chunks import default_chunk_bytes

MiB = 2**20


@pytest.mark.parametrize(("value", "expected"), [("48MiB", 48 * MiB), (5_000_000, 5_000_000)])
def test_configured_budget_wins(value, expected):
    with dask.config.set({BUDGET_KEY: value, "array.chunk-size": "1KiB"}):
        assert task_budget_bytes() == expected
        assert default_chunk_bytes() == expected


def test_auto_is_dask_chunk_size_capped_by_memory_per_thread():
    with dask.config.set({"array.chunk-size": "3MiB"}):
        assert task_budget_bytes() == min(3 * MiB, memory_per_thread() // COPIES_PER_TASK)
    with dask.config.set({"array.chunk-size": "1TiB"}):
        by_memory = max(MIN_AUTO_BYTES, memory_per_thread() // COPIES_PER_TASK)
        assert task_budget_bytes() == min(MAX_AUTO_BYTES, by_memory)


def test_more_threads_means_less_memory_per_thread():
    with dask.config.set({"num_workers": 1}):
        one = memory_per_thread()
    with dask.config.set({"num_workers": 4}):
        four = memory_per_thread()
    assert four < one


@pytest.mark.parametrize("value", ["lots", -3, 0, [1], True])
def test_bad_budget_is_a_clear_error(value):
    with dask.config.set({BUDGET_KEY: value}):
        with pytest.raises((TypeError, ValueError), match=BUDGET_KEY):
            task_budget_bytes()


def test_budget_follows_the_workers_memory_limit():
    limit = 256 * MiB
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            memory_limit=limit,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
        dask.config.set({"array.chunk-size": "1TiB"}),
    ):
        # on the client: the smallest share among the workers
        assert memory_per_thread() == limit // 2
        assert task_budget_bytes() == limit // 2 // COPIES_PER_TASK
        # inside a worker: its own limit over its threads
        # inside a worker (dask's default chunk size there): its limit over its threads
        inside = client.submit(task_budget_bytes, pure=False).result()
        assert inside == limit // 2 // COPIES_PER_TASK
