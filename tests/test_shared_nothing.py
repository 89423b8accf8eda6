"""A cluster whose workers share no disk: correct results, and a killed worker changes nothing.

The cluster of ``tests/_isolated_cluster.py`` (a scheduler and two ``dask
worker`` processes, each with its own tmpfs on /tmp) reads its inputs from and
writes its outputs to the S3 server of ``tests/_s3.py``. On it daskmask must
not use files in the client's scratch folder: the time-to-voxel reorganisation
is dask's P2P rechunk, and ``fit`` of a ``.nii.gz`` keeps no decoded copy.

A worker is SIGKILLed (the process under its nanny, found with
``client.run(os.getpid)``) by a scheduler plugin at a chosen moment: in the
middle of the P2P exchange, and in the middle of the inflate pass of ``fit``.
The result must equal an undisturbed run's bit for bit. A client killed during
``save`` leaves no store that opens as complete.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import _killer
import cloudpickle
import dask
import numpy as np
import pytest
from _isolated_cluster import WORKER_SCRATCH, isolated_cluster  # noqa: F401 - fixture
from _killer import WorkerKiller
from distributed import Client
from distributed.utils import key_split

import daskmask as dm
from daskmask import NiftiMasker
from daskmask._scratch import scratch_is_shared
from daskmask.datasets import generate_epi
from daskmask.exceptions import DaskmaskError

# The scheduler and workers cannot import the test modules: send their code by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(_killer)

#: Small tasks: many time slabs and voxel blocks, and a run that does not fit in one.
SMALL_BLOCKS = "256KiB"
SHAPE, N_TIMEPOINTS = (40, 40, 30), 160
PARAMS = {"mask_strategy": "epi", "detrend": True, "standardize": "zscore_sample"}


@pytest.fixture(scope="module")
def cluster(s3_server, isolated_cluster):  # noqa: F811 - fixture
    """The isolated cluster, started with the S3 credentials in the workers' environment."""
    return isolated_cluster


@pytest.fixture(scope="module")
def inputs(s3_server, tmp_path_factory):
    """The same run as .nii and .nii.gz, local and in a bucket; the local threaded result."""
    folder = tmp_path_factory.mktemp("shared-nothing")
    bucket = s3_server.new_bucket("nothing")
    filesystem = s3_server.filesystem()
    urls, expected = {}, {}
    for suffix in (".nii", ".nii.gz"):
        path = generate_epi(
            folder / f"run{suffix}", shape=SHAPE, n_timepoints=N_TIMEPOINTS, seed=5
        )
        urls[suffix] = f"s3://{bucket}/in/run{suffix}"
        filesystem.put(str(path), urls[suffix])
        with dask.config.set({"scheduler": "threads", "daskmask.block-bytes": SMALL_BLOCKS}):
            masker = NiftiMasker(**PARAMS).fit(path)
            expected[suffix] = (masker, masker.transform(path).values)
    return bucket, urls, expected


def _layers(X) -> list[str]:
    return [str(name) for name in X.data.__dask_graph__().layers]


@pytest.fixture
def client(cluster, tmp_path):
    """A client of the isolated cluster with both workers up, and a client-side scratch."""
    config = {
        "daskmask.block-bytes": SMALL_BLOCKS,
        "daskmask.temporary-directory": str(tmp_path / "client-scratch"),
    }
    with dask.config.set(config), Client(cluster.address, timeout=60) as client:
        client.wait_for_workers(2, timeout=90)
        yield client


@pytest.mark.timeout(120)
def test_the_probe_sees_no_shared_scratch(client):
    assert scratch_is_shared(client) is False
    assert scratch_is_shared() is False  # the current client
    with dask.config.set({"scheduler": "threads"}):
        assert scratch_is_shared() is True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_fit_transform_save_to_s3_equal_the_threaded_run(client, inputs, suffix, tmp_path):
    bucket, urls, expected = inputs
    masker = NiftiMasker(**PARAMS).fit(urls[suffix])
    X = masker.transform(urls[suffix])
    layers = _layers(X)
    assert any("p2p" in name for name in layers), layers
    assert not any(name.startswith("daskmask-voxel-blocks") for name in layers)
    assert masker._fitted_run.decoded is None
    out = f"s3://{bucket}/out/{suffix.strip('.')}-{tmp_path.name}.zarr"
    dm.save(X, out)
    stored = dm.open_results(out).signals.values
    reference_masker, reference = expected[suffix]
    np.testing.assert_array_equal(
        masker.mask_img_.get_fdata(), reference_masker.mask_img_.get_fdata()
    )
    assert np.array_equal(stored, reference)
    # Nothing went through the client's scratch folder.
    scratch = tmp_path / "client-scratch"
    assert not scratch.exists() or [p.name for p in scratch.iterdir()] == []


@pytest.mark.timeout(120)
def test_a_forced_strategy_wins(client, inputs):
    _, urls, expected = inputs
    masker = expected[".nii"][0]
    with dask.config.set({"daskmask.reorganise": "in-memory"}):
        assert not any("p2p" in name for name in _layers(masker.transform(urls[".nii"])))
    with dask.config.set({"daskmask.reorganise": "p2p", "scheduler": "threads"}):
        with pytest.raises(ValueError, match="distributed.Client"):
            masker.transform(urls[".nii"])


# --- a worker killed in the middle ------------------------------------------------------


def _with_killer(client, killer, compute):
    """Run ``compute()`` with ``killer`` registered; return its result and what was killed."""
    killer.pids = client.run(os.getpid)
    client.register_plugin(killer)
    try:
        result = compute()
        state = client.run_on_scheduler(
            lambda dask_scheduler, name=killer.name: (
                dask_scheduler.plugins[name].killed,
                dask_scheduler.plugins[name].killed_in_state,
            )
        )
    finally:
        client.unregister_scheduler_plugin(killer.name)
    assert state[0], "no worker was killed: the phase was never reached"
    return result, state[1]


@pytest.mark.timeout(150)
def test_worker_killed_during_the_p2p_exchange(client, inputs):
    _, urls, expected = inputs
    masker, reference = expected[".nii"]
    X = masker.transform(urls[".nii"])
    transfers = [k for k in X.data.__dask_graph__() if key_split(k) == "rechunk-transfer"]
    assert len(transfers) > 4
    # Half of the slabs were handed to the exchange: the rest is still to come.
    killer = WorkerKiller("rechunk-transfer", len(transfers) // 2, pids={})
    result, _ = _with_killer(client, killer, lambda: X.values)
    assert np.array_equal(result, reference)


@pytest.fixture(scope="module")
def larger_gz(s3_server, inputs, tmp_path_factory):
    """A .nii.gz whose inflate pass takes long enough to be interrupted (98 MB decoded)."""
    bucket = inputs[0]
    path = generate_epi(
        tmp_path_factory.mktemp("larger") / "run.nii.gz", shape=(64, 64, 40), n_timepoints=300
    )
    url = f"s3://{bucket}/in/larger.nii.gz"
    s3_server.filesystem().put(str(path), url)
    with dask.config.set({"scheduler": "threads"}):
        return url, NiftiMasker(**PARAMS).fit(path)


def _task_duration(prefix, dask_scheduler=None):
    return dask_scheduler.task_prefixes[prefix].duration_average


@pytest.mark.timeout(150)
def test_worker_killed_while_fit_inflates_a_nii_gz(client, larger_gz):
    url, reference = larger_gz
    undisturbed = NiftiMasker(**PARAMS).fit(url)
    assert np.array_equal(undisturbed._fitted_run.mean, reference._fitted_run.mean)
    # Kill the worker a third of the way into the pass (it was timed just above).
    duration = client.run_on_scheduler(_task_duration, "daskmask-decode-mean")
    assert duration > 0.05, duration
    killer = WorkerKiller(
        "daskmask-decode-mean", 1, pids={}, state="processing", victim="running",
        delay=duration / 3,
    )  # fmt: skip
    masker, state = _with_killer(client, killer, lambda: NiftiMasker(**PARAMS).fit(url))
    assert state == "processing", "the worker was killed before or after the inflate pass"
    assert np.array_equal(masker._fitted_run.mean, reference._fitted_run.mean)
    np.testing.assert_array_equal(masker.mask_img_.get_fdata(), reference.mask_img_.get_fdata())


# --- a killed client ---------------------------------------------------------------------

_CLIENT = textwrap.dedent(
    """
    import sys, dask
    from distributed import Client
    import daskmask as dm
    address, url, out, scratch = sys.argv[1:5]
    config = {"daskmask.block-bytes": "256KiB", "daskmask.temporary-directory": scratch}
    with dask.config.set(config), Client(address, timeout=60):
        X = dm.NiftiMasker(detrend=True).fit_transform(url)
        print("saving", flush=True)
        dm.save(X, out)
    print("saved", flush=True)
    """
)


@pytest.mark.timeout(150)
def test_a_killed_client_leaves_no_complete_store(client, inputs, s3_server, tmp_path):
    bucket, urls, _ = inputs
    out = f"s3://{bucket}/killed/{tmp_path.name}.zarr"
    scratch = tmp_path / "killed-scratch"
    process = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, client.scheduler.address, urls[".nii"], out, str(scratch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "saving"
        time.sleep(0.5)  # inside save: the extraction and the chunk writes run
    finally:
        process.kill()
        process.wait(timeout=10)
    with pytest.raises(DaskmaskError):
        dm.open_results(out)
    # The next run on the same cluster: the store is written whole, and the workers
    # dropped what the dead client's exchange spilled to their disks.
    X = NiftiMasker(detrend=True).fit_transform(urls[".nii"])
    dm.save(X, out, overwrite=True)
    assert np.array_equal(dm.open_results(out).signals.values, X.values)
    deadline = time.monotonic() + 30
    while True:
        left = client.run(_shuffle_leftovers, WORKER_SCRATCH)
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not any(left.values()), left


def _shuffle_leftovers(folder: str) -> list[str]:
    """Files of P2P exchanges still on a worker's disk."""
    found = []
    for root, _, files in os.walk(folder):
        if "shuffle" in root or "p2p" in root:
            found.extend(os.path.join(root, name) for name in files)
    return found
