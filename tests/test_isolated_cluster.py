"""The test cluster whose workers share no disk really shares none."""

from __future__ import annotations

import os

import dask.config
import pytest
from _isolated_cluster import WORKER_SCRATCH, isolated_cluster  # noqa: F401 - fixture
from distributed import Client


@pytest.mark.timeout(180)
def test_workers_see_neither_each_other_nor_the_client(isolated_cluster):  # noqa: F811
    with Client(isolated_cluster.address, timeout=30) as client:
        workers = sorted(client.scheduler_info()["workers"])
        assert len(workers) == 2
        first, second = workers
        path = "/tmp/daskmask-isolation"
        # Functions of the standard library: the workers cannot import this test module.
        client.submit(os.makedirs, path, workers=[first]).result()
        assert client.submit(os.path.exists, path, workers=[first], pure=False).result()
        assert not client.submit(os.path.exists, path, workers=[second], pure=False).result()
        assert not os.path.exists(path)
        scratch = client.run(dask.config.get, "daskmask.temporary-directory")
        assert set(scratch.values()) == {WORKER_SCRATCH}
