"""Scheduler choice: embedded LocalCluster, address, environment variable, Client, threads."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

import numpy as np
import psutil
import pytest
from distributed import Client, LocalCluster, get_task_stream

import daskmask as dm
from daskmask.cluster import SCHEDULER_ENV_VAR
from daskmask.datasets import generate_epi

PARAMS = {"mask_strategy": "epi", "detrend": True, "standardize": "zscore_sample"}


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster_run")
    return generate_epi(folder / "run.nii.gz", shape=(20, 24, 18), n_timepoints=30, seed=5)


@pytest.fixture(scope="module")
def expected(run_path):
    """Signals computed on dask's threads, without any cluster."""
    return dm.NiftiMasker(**PARAMS).fit_transform(run_path).to_numpy()


@pytest.fixture(scope="module")
def scheduler_address():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def _signals_on(client: Client, run_path) -> np.ndarray:
    """Signals computed while ``client`` is current; its workers must run the tasks."""
    with get_task_stream(client) as stream:
        signals = dm.NiftiMasker(**PARAMS).fit_transform(run_path).to_numpy()
    assert len(stream.data) > 0
    return signals


def test_existing_client_is_returned_as_is(scheduler_address, run_path, expected):
    with Client(scheduler_address) as client:
        assert dm.connect(client) is client
        np.testing.assert_array_equal(_signals_on(client, run_path), expected)


def test_address_joins_that_scheduler(scheduler_address, run_path, expected):
    client = dm.connect(scheduler_address)
    try:
        assert client.scheduler.address == scheduler_address
        assert len(client.scheduler_info()["workers"]) == 2
        np.testing.assert_array_equal(_signals_on(client, run_path), expected)
    finally:
        client.close()


def test_environment_variable_names_the_scheduler(scheduler_address, monkeypatch):
    monkeypatch.setenv(SCHEDULER_ENV_VAR, scheduler_address)
    with dm.connect() as client:
        assert client.scheduler.address == scheduler_address


def test_dask_scheduler_address_is_used_when_daskmask_scheduler_is_not_set(
    scheduler_address, monkeypatch
):
    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", scheduler_address)
    with dm.connect() as client:
        assert client.scheduler.address == scheduler_address
    # daskmask's own variable wins (nothing listens at the other address)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    monkeypatch.setenv(SCHEDULER_ENV_VAR, scheduler_address)
    with dm.connect() as client:
        assert client.scheduler.address == scheduler_address


def test_explicit_argument_wins_over_the_environment(scheduler_address, monkeypatch):
    monkeypatch.setenv(SCHEDULER_ENV_VAR, "tcp://127.0.0.1:1")  # nothing listens there
    with dm.connect(scheduler_address) as client:
        assert client.scheduler.address == scheduler_address


def test_an_explicit_kind_of_cluster_wins_over_the_environment(monkeypatch, run_path, expected):
    monkeypatch.setenv(SCHEDULER_ENV_VAR, "tcp://127.0.0.1:1")  # nothing listens there
    with dm.connect(cluster="local", processes=False, n_workers=1) as client:
        assert client.scheduler.address.startswith("inproc://")
        np.testing.assert_array_equal(_signals_on(client, run_path), expected)


def test_no_dashboard_when_asked_and_no_warning_when_its_port_is_taken(monkeypatch):
    import urllib.error
    import urllib.request
    import warnings

    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    with dm.connect(processes=False, n_workers=1, dashboard_address=None) as client:
        port = client.scheduler_info()["services"]["dashboard"]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with dm.connect(processes=False, n_workers=1, dashboard_address=":8787") as first:
            with dm.connect(processes=False, n_workers=1, dashboard_address=":8787") as second:
                assert first.dashboard_link != second.dashboard_link


@pytest.mark.parametrize("bad", [8786, 1.5, ["tcp://a:1"]])
def test_bad_scheduler_is_a_type_error(bad):
    with pytest.raises(TypeError, match="scheduler must be a distributed.Client"):
        dm.connect(bad)


def test_embedded_cluster_is_sized_to_the_machine(monkeypatch, run_path, expected):
    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    with dm.connect(dashboard_address=None) as client:
        workers = client.scheduler_info()["workers"].values()
        assert len(workers) == os.cpu_count()
        assert all(worker["nthreads"] == 1 for worker in workers)
        share = 0.9 * psutil.virtual_memory().total / os.cpu_count()
        assert all(abs(worker["memory_limit"] - share) < 2**20 for worker in workers)
        pids = set(client.run(os.getpid).values())
        assert os.getpid() not in pids and len(pids) == os.cpu_count()
        np.testing.assert_array_equal(_signals_on(client, run_path), expected)


def _imported(modules: tuple[str, ...]) -> list[bool]:
    return [module in sys.modules for module in modules]


@pytest.mark.cluster
def test_embedded_workers_are_forks_of_a_server_that_imported_the_task_modules(
    monkeypatch, run_path, expected
):
    import dask

    from daskmask.cluster import _TASK_MODULES

    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    with dm.connect(n_workers=2, dashboard_address=None) as client:
        # Asked at once, before any task: the modules came with the fork (no warm-up).
        assert all(all(done) for done in client.run(_imported, _TASK_MODULES).values())
        pids = set(client.run(os.getpid).values())
        servers = {psutil.Process(pid).parent() for pid in pids}
        assert len(servers) == 1
        server = servers.pop()
        assert "multiprocessing.forkserver" in " ".join(server.cmdline())
        assert server.ppid() == os.getpid()
        # What distributed sets before it spawns a worker holds in the forked ones.
        environment = client.run(
            lambda: (os.environ["OPENBLAS_NUM_THREADS"], sys.flags.hash_randomization)
        )
        assert set(environment.values()) == {("1", 1)}
        # Blocks of up to 32 MiB come from the workers' heaps, as in a threaded run;
        # this process's environment is left without it.
        thresholds = client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_"))
        assert set(thresholds.values()) == {str(32 * 2**20)}
        assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
        # The user's setting is back: a cluster they start themselves spawns.
        assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"
        np.testing.assert_array_equal(_signals_on(client, run_path), expected)
        processes = [server, *map(psutil.Process, pids)]
    # Closing the client stops the workers and the server they came from.
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == []


@pytest.mark.cluster
def _python(*arguments: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run this interpreter with ``arguments`` in a fresh process, no scheduler named."""
    return subprocess.run(
        [sys.executable, *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != SCHEDULER_ENV_VAR},
    )


def test_this_process_imports_the_task_modules_while_the_workers_start():
    """connect() imports what the client's graphs and masker need while the workers start."""
    code = (
        "import sys, threading\n"
        "import daskmask as dm\n"
        "with dm.connect(n_workers=1, dashboard_address=None):\n"
        "    for thread in threading.enumerate():\n"
        "        if thread.name == 'daskmask-imports':\n"
        "            thread.join(60)\n"
        "    print([module in sys.modules for module in ('daskmask.reading._array', "
        "'daskmask.extraction._apply_mask', 'daskmask.maskers._nifti', 'sklearn.base')])\n"
    )
    completed = _python("-c", code)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == "[True, True, True, True]"


def _descendants() -> dict[int, psutil.Process]:
    """This process's children, but multiprocessing's resource tracker (it lives as long)."""
    found = {}
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(process.cmdline()):
                found[process.pid] = process
    return found


@pytest.mark.cluster
def test_closing_the_embedded_cluster_leaves_no_process(monkeypatch):
    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    before = _descendants()
    client = dm.connect(n_workers=2, dashboard_address=None)
    started = {pid: process for pid, process in _descendants().items() if pid not in before}
    assert len(started) == 3, started  # the fork server and its two workers
    client.close()
    _, alive = psutil.wait_procs(list(started.values()), timeout=10)
    assert alive == []
    # The next cluster of the process starts as the first did.
    with dm.connect(n_workers=1, dashboard_address=None) as again:
        assert len(again.scheduler_info()["workers"]) == 1


@pytest.mark.cluster
def test_closing_the_cluster_reports_every_worker_as_exited(monkeypatch, caplog):
    """The fork server outlives its workers: their exits are reported, not taken for kills."""
    import logging

    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    # Not in a `with` block: a client closed inside its own block leaves dask's
    # scheduler setting on it (distributed's doing), and the next test without one.
    client = dm.connect(n_workers=2, dashboard_address=None)
    try:
        workers = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        server = workers[0].parent()
    finally:
        with caplog.at_level(logging.INFO, logger="distributed.nanny"):
            client.close()
    # A nanny logs a worker's exit code when it is not 0 (255: "killed by unknown signal").
    deaths = [record for record in caplog.records if "Worker process" in record.getMessage()]
    assert deaths == []
    _, alive = psutil.wait_procs([server, *workers], timeout=10)
    assert alive == []


@pytest.mark.cluster
def test_a_process_that_never_closes_its_cluster_leaves_nothing_at_exit():
    """At exit the cluster closes before distributed's hooks run: no worker taken for killed."""
    code = (
        "import os, psutil\n"
        "import daskmask as dm\n"
        "client = dm.connect(n_workers=2, dashboard_address=None)\n"
        "workers = client.run(os.getpid).values()\n"
        "print(*{psutil.Process(pid).ppid() for pid in workers}, *workers)\n"
    )
    # The output's pipes close once every process holding them (the server too) has ended.
    completed = _python("-c", code)
    assert completed.returncode == 0, completed.stderr
    assert "Worker process" not in completed.stderr
    pids = [int(pid) for pid in completed.stdout.split()]
    assert len(pids) == 3  # one server, two workers
    left = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            left.append(psutil.Process(pid))
    # Orphans once the process has exited: gone as soon as the system has reaped them.
    _, alive = psutil.wait_procs(left, timeout=10)
    assert alive == []


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_killed_forked_worker_is_replaced_and_the_result_unchanged(
    monkeypatch, run_path, expected, tmp_path
):
    import dask
    from _killer import WorkerKiller

    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    config = {"daskmask.temporary-directory": str(tmp_path), "daskmask.block-bytes": "16KiB"}
    with dm.connect(n_workers=2, dashboard_address=None) as client, dask.config.set(config):
        pids = client.run(os.getpid)
        killer = WorkerKiller("daskmask-intermediate-write", 2, pids=pids)
        client.register_plugin(killer)
        try:
            signals = dm.NiftiMasker(**PARAMS).fit_transform(run_path).to_numpy()
            killed = client.run_on_scheduler(
                lambda dask_scheduler: dask_scheduler.plugins[WorkerKiller.name].killed
            )
        finally:
            client.unregister_scheduler_plugin(WorkerKiller.name)
        assert killed, "no worker was killed"
        np.testing.assert_array_equal(signals, expected)
        # The nanny noticed the death through the fork server and started a new worker.
        client.wait_for_workers(2, timeout=60)
        assert pids[killed] not in client.run(os.getpid).values()
        np.testing.assert_array_equal(_signals_on(client, run_path), expected)


def test_threaded_local_cluster_runs_in_this_process(monkeypatch, run_path, expected):
    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    with dm.connect(processes=False, n_workers=1, threads_per_worker=2) as client:
        assert set(client.run(os.getpid).values()) == {os.getpid()}
        np.testing.assert_array_equal(_signals_on(client, run_path), expected)


@pytest.mark.parametrize("scheduler", ["threads", "address"])
def test_demo_runs_on_the_chosen_scheduler(scheduler, scheduler_address, tmp_path):
    chosen = scheduler_address if scheduler == "address" else "threads"
    output = tmp_path / "demo.zarr"
    completed = _python(
        "-m", "daskmask", "demo", "--scheduler", chosen, "--output", output, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    # the first line after the (first-use) generation of the walkthrough runs
    lines = [line for line in completed.stdout.splitlines() if not line.startswith("Generating")]
    if scheduler == "threads":
        assert lines[0].startswith("Scheduler: dask's threads in this process")
    else:
        assert lines[0].startswith("Dask dashboard:")
    # the walkthrough's raw run: 150 volumes, detrended signals that still vary
    assert re.search(r"Detrended: mean 0.00, std [1-9]", completed.stdout), completed.stdout
    assert dm.open_results(output).signals.shape[0] == 150


def test_a_local_cluster_shares_the_scratch_folder(scheduler_address, run_path, tmp_path):
    import dask

    from daskmask._scratch import scratch_is_shared

    config = {"daskmask.temporary-directory": str(tmp_path), "daskmask.block-bytes": "16KiB"}
    with Client(scheduler_address) as client, dask.config.set(config):
        assert scratch_is_shared(client) is True
        assert scratch_is_shared() is True  # cached: no token file is left behind
        assert [p.name for p in tmp_path.iterdir()] == []
        signals = dm.NiftiMasker(**PARAMS).fit_transform(run_path)
        layers = [str(name) for name in signals.data.__dask_graph__().layers]
    # Workers on this machine read the raw intermediate: no P2P exchange.
    assert any(name.startswith("daskmask-voxel-blocks") for name in layers)
    assert not any("p2p" in name for name in layers)


def test_an_unknown_kind_of_cluster_is_a_typed_value_error():
    from daskmask.cluster import CLUSTER_KINDS, ClusterConfigError

    with pytest.raises(ClusterConfigError, match="'yarn' is not a kind of cluster") as info:
        dm.connect(cluster="yarn")
    assert isinstance(info.value, ValueError)
    assert set(CLUSTER_KINDS) == {"local", "slurm", "pbs", "sge", "lsf", "htcondor", "kubernetes"}


def test_dashboard_link_and_message(monkeypatch):
    import urllib.request

    from daskmask.cluster import dashboard_link, dashboard_message

    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    with dm.connect(processes=False, n_workers=1, dashboard_address=":0") as client:
        link = dashboard_link(client)
        assert link.startswith("http://") and link.endswith("/status")
        assert dashboard_message(client) == f"Dask dashboard: {link}"  # no tunnel on this machine
        with urllib.request.urlopen(link, timeout=10) as answer:
            assert answer.status == 200


def test_a_failed_connection_leaves_no_default_client() -> None:
    """distributed's Client makes itself the default before it connects; connect undoes that."""
    with pytest.raises((OSError, ValueError)):
        dm.connect("tcp://nowhere")
    with pytest.raises(ValueError):
        Client.current(allow_global=True)
    # This process still computes on its own threads.
    import dask.array as da

    assert da.ones(4, chunks=2).sum().compute() == 4
