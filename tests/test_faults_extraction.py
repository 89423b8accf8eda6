"""Fault injection: concurrent computations, lost workers, recomputed tasks.

* Two computations of one lazy result (threads, ``.compute()``, ``.mean()``,
  ``save``) share its on-disk intermediate and must each give the right bits.
* A worker SIGKILLed at any phase of a run on a real 2-worker ``LocalCluster``
  (its nanny restarts it) must change nothing: the result equals an
  undisturbed run's bit for bit.
* A block cleaned by a process with other BLAS threads gives the same bits.
"""

from __future__ import annotations

import gc
import glob
import os
import threading

import dask
import numpy as np
import pytest
import threadpoolctl
from _killer import WorkerKiller
from dask.callbacks import Callback
from distributed import Client, LocalCluster
from distributed.utils import key_split

import daskmask as dm
from daskmask import NiftiMasker
from daskmask.datasets import generate_epi

#: Stage-2 reads of the intermediate, and stage-1 writes.
READ = "daskmask-voxel-blocks"
WRITE = "daskmask-intermediate-write"
#: A small task budget: many time slabs and voxel blocks, on-disk intermediate.
SMALL_BLOCKS = "256KiB"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 20 MB int16 run."""
    folder = tmp_path_factory.mktemp("faults-extraction")
    return generate_epi(folder / "run.nii", shape=(40, 40, 30), n_timepoints=200, seed=7)


@pytest.fixture
def scratch(tmp_path):
    with dask.config.set({"daskmask.temporary-directory": str(tmp_path / "scratch")}):
        yield tmp_path / "scratch"


def _transform(run, **config):
    with dask.config.set({"daskmask.block-bytes": SMALL_BLOCKS, **config}):
        X = NiftiMasker(detrend=True, standardize="zscore_sample").fit_transform(run)
    assert X.data.numblocks[1] > 8
    assert any(name.startswith(READ) for name in X.data.dask.layers)
    return X


class _StartAfter(Callback):
    """Set ``event`` when the threaded scheduler has finished ``count`` tasks of ``prefix``."""

    def __init__(self, prefix: str, count: int, event: threading.Event) -> None:
        super().__init__()
        self.prefix, self.count, self.event, self.seen = prefix, count, event, 0
        self.lock = threading.Lock()

    def _posttask(self, key, result, dsk, state, worker_id):
        if key_split(key) == self.prefix:
            with self.lock:
                self.seen += 1
                if self.seen >= self.count:
                    self.event.set()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("second_starts_after", [(WRITE, 1), (READ, 1), (READ, 6)])
def test_two_threads_compute_one_result(run, scratch, second_starts_after):
    with dask.config.set({"scheduler": "threads"}):
        X = _transform(run)
        expected = _transform(run).values
        started = threading.Event()
        results: dict[int, object] = {}

        def compute(slot: int) -> None:
            try:
                results[slot] = np.asarray(X)
            except Exception as error:  # reported below
                results[slot] = error
            finally:
                started.set()  # never leave the other thread waiting

        # The second computation starts while the first writes or reads the intermediate.
        with _StartAfter(*second_starts_after, started):
            first = threading.Thread(target=compute, args=(0,))
            first.start()
            assert started.wait(60)
            second = threading.Thread(target=compute, args=(1,))
            second.start()
            first.join(60)
            second.join(60)
    for slot in (0, 1):
        assert isinstance(results[slot], np.ndarray), results[slot]
        assert np.array_equal(results[slot], expected), f"computation {slot} is wrong"


@pytest.mark.timeout(120)
def test_compute_mean_and_save_in_a_row_and_at_once(run, scratch, tmp_path):
    with dask.config.set({"scheduler": "threads"}):
        X = _transform(run)
        whole = X.compute().values
        assert np.array_equal(X.mean("time").values, whole.mean(axis=0))
        dm.save(X, tmp_path / "a.zarr")
        assert np.array_equal(dm.open_results(tmp_path / "a.zarr").signals.values, whole)
        assert np.array_equal(X.compute().values, whole)  # again, after all that

        results: dict[str, object] = {}

        def run_one(name, function):
            try:
                results[name] = function()
            except Exception as error:
                results[name] = error

        jobs = {
            "compute": lambda signals=X: signals.compute().values,
            "mean": lambda signals=X: signals.mean("time").values,
            "save": lambda signals=X: dm.save(signals, tmp_path / "b.zarr"),
        }
        threads = [threading.Thread(target=run_one, args=item) for item in jobs.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
    assert np.array_equal(results["compute"], whole), results["compute"]
    assert np.array_equal(results["mean"], whole.mean(axis=0)), results["mean"]
    assert np.array_equal(dm.open_results(tmp_path / "b.zarr").signals.values, whole)
    # The intermediate lives as long as the lazy result, then goes.
    assert len(glob.glob(str(scratch / "daskmask-extract-*"))) == 1
    del X, jobs, threads
    gc.collect()
    assert glob.glob(str(scratch / "daskmask-extract-*")) == []


@pytest.mark.timeout(120)
def test_cleaned_blocks_do_not_depend_on_blas_threads(run, scratch):
    # Wide blocks: OpenBLAS splits a gemv of this width between its threads.
    with dask.config.set({"scheduler": "threads", "daskmask.block-bytes": "8MiB"}):
        X = NiftiMasker(detrend=True, standardize="zscore_sample").fit_transform(run)
        assert max(X.data.chunks[1]) > 4096
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            one = np.asarray(X)
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            two = np.asarray(X)
    assert np.array_equal(one, two)


@pytest.mark.timeout(60)
def test_a_lost_read_can_run_again_after_every_block_was_read(run, scratch):
    # What a scheduler does after losing a worker late: the barrier's result is
    # still in memory, so only the lost reads run again.
    with dask.config.set({"scheduler": "threads"}):
        X = _transform(run)
        graph = dict(X.data.__dask_graph__())
        gate = next(key for key in graph if key_split(key) == "daskmask-intermediate-barrier")
        reads = sorted(key for key in graph if key_split(key) == READ)
        path = dask.get(graph, gate)  # stage 1
        blocks = dask.get(graph, reads)
        whole = np.asarray(X)  # every block read (once more)
        graph[gate] = path
        again = dask.get(graph, [reads[0], reads[-1]])
    assert np.array_equal(again[0], blocks[0])
    assert np.array_equal(again[1], blocks[-1])
    assert np.array_equal(whole, _transform(run).values)


# --- a worker killed at every phase ---------------------------------------------------


@pytest.fixture(scope="module")
def cluster_client():
    with (
        dask.config.set({"daskmask.block-bytes": SMALL_BLOCKS}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def fitted(cluster_client, run, tmp_path_factory):
    """The masker fitted on the cluster, and the undisturbed result."""
    scratch = tmp_path_factory.mktemp("faults-cluster-scratch")
    with dask.config.set({"daskmask.temporary-directory": str(scratch)}):
        masker = NiftiMasker(detrend=True, standardize="zscore_sample").fit(run)
        X = masker.transform(run)
        assert X.data.numblocks[1] > 8
        return masker, X.values, scratch


def _killed_run(client, masker, run, scratch, killer, save_to=None):
    client.wait_for_workers(2, timeout=60)
    killer.pids = client.run(os.getpid)
    client.register_plugin(killer)
    try:
        with dask.config.set({"daskmask.temporary-directory": str(scratch)}):
            X = masker.transform(run)
            if save_to is None:
                result = X.values
            else:
                dm.save(X, save_to)
                result = dm.open_results(save_to).signals.values
        killed = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins[WorkerKiller.name].killed
        )
    finally:
        client.unregister_scheduler_plugin(WorkerKiller.name)
    assert killed, "no worker was killed: the phase was never reached"
    return result


PHASES = {
    # the first slab written: nearly everything is still to do
    "early": dict(prefix=WRITE, count=1),
    # half of stage 1 written
    "mid": dict(prefix=WRITE, count=20),
    # three quarters of the blocks read
    "late": dict(prefix=READ, count=-4),
    # the last block is being read by one worker: the other dies with read blocks
    "last-read": dict(prefix=READ, count=-1, state="processing", victim="other"),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("phase", list(PHASES))
def test_worker_killed_during_extraction(cluster_client, fitted, run, phase):
    masker, expected, scratch = fitted
    n_blocks = len(masker.transform(run).data.chunks[1])
    settings = dict(PHASES[phase])
    if settings["count"] < 0:
        settings["count"] = max(3 * n_blocks // 4 if phase == "late" else n_blocks, 1)
    result = _killed_run(cluster_client, masker, run, scratch, WorkerKiller(pids={}, **settings))
    assert np.array_equal(result, expected)


@pytest.mark.timeout(180)
def test_worker_killed_during_save(cluster_client, fitted, run, tmp_path):
    masker, expected, scratch = fitted
    # Zarr chunk writes of the signals ("store-map" tasks of to_zarr)
    killer = WorkerKiller("store", 3, pids={})
    result = _killed_run(
        cluster_client, masker, run, scratch, killer, save_to=tmp_path / "out.zarr"
    )
    assert np.array_equal(result, expected)
