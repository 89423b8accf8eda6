"""Job-queue clusters through ``daskmask.connect``: a real one-node Slurm, and the job scripts
that PBS, SGE, LSF and HTCondor would get (no such server runs here).

The Slurm daemons come from the ``slurm`` fixture (tests/_slurm.py); the tests check what
Slurm itself reports (``squeue``, ``scontrol``), never a mock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import dask
import dask_jobqueue  # noqa: F401 - its defaults in dask's config before any config.set below
import numpy as np
import pytest
import yaml
from _slurm import Slurm
from _slurm import slurm as slurm  # noqa: F401 - the fixture
from distributed import get_task_stream

import daskmask as dm
from daskmask.cluster import (
    ClusterConfigError,
    ClusterError,
    ClusterExtraMissingError,
    dashboard_message,
)
from daskmask.datasets import generate_epi, make_fmriprep_derivatives
from daskmask.storage import open_results

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "daskmask-bids.sbatch"
EXAMPLE_CONFIG = ROOT / "deploy" / "slurm" / "jobqueue.yaml"
PARAMS = {"mask_strategy": "epi", "detrend": True, "standardize": "zscore_sample"}


def _settings(slurm: Slurm, logs: Path) -> dict[str, object]:
    """jobqueue.slurm settings that fit the one test node: 1 CPU and 2 GB per job."""
    return {
        "cores": 1,
        "memory": "2GB",
        "processes": 1,
        "queue": slurm.partition,
        "walltime": "00:10:00",
        "interface": "lo",
        "log-directory": str(logs),
        "scheduler-options": {"dashboard_address": ":0"},
    }


@pytest.fixture(scope="module")
def dask_config_dir(slurm: Slurm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a jobqueue.yaml, for DASK_CONFIG of the commands the tests start."""
    folder = tmp_path_factory.mktemp("dask-config")
    settings = {"jobqueue": {"slurm": _settings(slurm, folder / "logs")}}
    (folder / "jobqueue.yaml").write_text(yaml.safe_dump(settings))
    return folder


@pytest.fixture
def slurm_settings(slurm: Slurm, tmp_path: Path):
    """The same settings in this process's dask config (dotted keys: nothing else replaced)."""
    config = {f"jobqueue.slurm.{key}": v for key, v in _settings(slurm, tmp_path).items()}
    with dask.config.set(config):
        yield
    slurm.cancel_all()


def _environment(config_dir: Path, slurm: Slurm) -> dict[str, str]:
    return {
        **slurm.environment,
        "DASK_CONFIG": str(config_dir),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


def _daskmask(*args: object, env: dict[str, str], timeout: float = 240):
    return subprocess.run(
        [sys.executable, "-m", "daskmask", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


class QueueWatcher:
    """Record, every 0.3 s, what ``squeue`` lists (jobs and job steps) while a test runs."""

    def __init__(self, slurm: Slurm) -> None:
        self.slurm = slurm
        self.jobs: dict[str, dict[str, str]] = {}
        self.steps: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for job in self.slurm.queue():
                self.jobs.setdefault(job["id"], job)
                if job["state"] == "RUNNING":
                    self.jobs[job["id"]] = job
            steps = self.slurm.run("squeue", "--steps", "--noheader", "--format=%i")
            self.steps.update(steps.split())
            self._stop.wait(0.3)

    def running(self) -> dict[str, dict[str, str]]:
        return {k: job for k, job in self.jobs.items() if job["state"] == "RUNNING"}

    def __enter__(self) -> QueueWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _stores(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*.zarr"))}


def _assert_same_stores(expected: Path, actual: Path) -> None:
    """Same stores, with equal signals, coordinates, mask and mean image."""
    want, got = _stores(expected), _stores(actual)
    assert want and list(got) == list(want)
    for name, path in want.items():
        ours, theirs = open_results(got[name]), open_results(path)
        np.testing.assert_array_equal(ours.signals.values, theirs.signals.values)
        for coord in theirs.signals.coords:
            np.testing.assert_array_equal(ours.signals[coord].values, theirs.signals[coord].values)
        for image in ("mask_img", "mean_img"):
            np.testing.assert_array_equal(
                np.asarray(getattr(ours, image).dataobj),
                np.asarray(getattr(theirs, image).dataobj),
            )


# --- the Python API on a real Slurm -------------------------------------------------------------


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jobqueue_run")
    return generate_epi(folder / "run.nii.gz", shape=(20, 24, 18), n_timepoints=30, seed=7)


def _mask_and_save(run_path: Path, store: Path) -> set[str]:
    """fit_transform + save on the current client; return the workers that ran tasks."""
    with get_task_stream() as stream:
        masker = dm.NiftiMasker(**PARAMS)
        signals = masker.fit_transform(run_path)
        dm.save(signals, store, mask_img=masker.mask_img_)
    return {task["worker"] for task in stream.data}


def test_slurm_jobs_are_the_workers_and_results_equal_a_local_cluster(
    slurm: Slurm, slurm_settings: None, run_path: Path, tmp_path: Path
) -> None:
    with dm.connect(cluster="local", n_workers=2, dashboard_address=None) as client:
        _mask_and_save(run_path, tmp_path / "local.zarr")

    client = dm.connect(cluster="slurm", jobs=2)
    try:
        # The jobs were submitted when connect() returned: Slurm lists both.
        jobs = {job["id"]: job for job in slurm.queue()}
        assert len(jobs) == 2 and {job["name"] for job in jobs.values()} == {"dask-worker"}
        client.wait_for_workers(2, timeout=90)
        in_job = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert set(in_job.values()) == set(jobs)
        for job_id in jobs:
            details = slurm.job(job_id)
            assert details["JobState"] == "RUNNING" and details["NodeList"] == slurm.node
            assert details["Partition"] == slurm.partition
        ran_on = _mask_and_save(run_path, tmp_path / "slurm.zarr")
        assert ran_on and ran_on <= set(in_job)  # every task ran inside a Slurm job

        message = dashboard_message(client)
        assert message is not None and "ssh -N -L" in message
        link = message.split()[2]
        with urllib.request.urlopen(link, timeout=10) as answer:
            assert answer.status == 200
    finally:
        client.close()
    # Closing the client closed the cluster: Slurm cancelled both jobs.
    assert slurm.wait_until_empty(timeout=20) == []
    assert {slurm.job(job_id)["JobState"] for job_id in jobs} == {"CANCELLED"}
    assert client.cluster.status.name == "closed"

    local, on_slurm = open_results(tmp_path / "local.zarr"), open_results(tmp_path / "slurm.zarr")
    np.testing.assert_array_equal(on_slurm.signals.values, local.signals.values)
    np.testing.assert_array_equal(
        np.asarray(on_slurm.mask_img.dataobj), np.asarray(local.mask_img.dataobj)
    )


_HOLD_JOBS = textwrap.dedent(
    """
    import time
    import daskmask as dm
    if __name__ == "__main__":
        client = dm.connect(cluster="slurm", jobs=2)
        client.wait_for_workers(2, timeout=90)
        print("ready", flush=True)
        time.sleep(300)
    """
)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_cancels_its_jobs(
    slurm: Slurm, dask_config_dir: Path, number: int
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD_JOBS],
        env=_environment(dask_config_dir, slurm),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        jobs = [job["id"] for job in slurm.queue() if job["state"] == "RUNNING"]
        assert len(jobs) == 2
        process.send_signal(number)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert slurm.wait_until_empty(timeout=20) == []
    assert {slurm.job(job_id)["JobState"] for job_id in jobs} == {"CANCELLED"}
    # SIGTERM ends the process with 128 + 15; SIGINT as Python does on Ctrl-C.
    expected = {signal.SIGTERM: {128 + signal.SIGTERM}, signal.SIGINT: {-signal.SIGINT, 1}}
    assert process.returncode in expected[number]


def test_a_refused_submission_is_a_typed_error_and_leaves_nothing(
    slurm: Slurm, slurm_settings: None
) -> None:
    with pytest.raises(ClusterError, match="invalid partition specified: no-such-partition"):
        dm.connect(cluster="slurm", jobs=1, queue="no-such-partition")
    assert slurm.queue() == []
    assert "SLURMCluster" not in _open_clusters()


# --- the daskmask command on Slurm -------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jobqueue_bids") / "fmriprep"
    make_fmriprep_derivatives(root, subjects=("01", "02"), shape=(16, 18, 16), n_volumes=30)
    return root


@pytest.fixture(scope="module")
def local_output(
    dataset: Path, tmp_path_factory: pytest.TempPathFactory, slurm: Slurm, dask_config_dir: Path
) -> Path:
    """``daskmask bids`` on this machine's LocalCluster: what the Slurm runs must equal."""
    output = tmp_path_factory.mktemp("bids-local") / "out"
    done = _daskmask("bids", dataset, output, "--scheduler", "local", env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert len(_stores(output)) == 2
    return output


def test_bids_command_on_slurm_equals_a_local_run(
    slurm: Slurm, dask_config_dir: Path, dataset: Path, local_output: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    with QueueWatcher(slurm) as watcher:
        done = _daskmask(
            "bids", dataset, output, "--scheduler", "slurm", "--jobs", 2,
            env=_environment(dask_config_dir, slurm),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Dask dashboard: http://" in done.stdout + done.stderr
    running = watcher.running()
    assert len(running) == 2, watcher.jobs
    assert {job["name"] for job in running.values()} == {"dask-worker"}
    assert all(job["node"] == slurm.node for job in running.values())
    assert slurm.wait_until_empty(timeout=20) == []
    assert {slurm.job(job_id)["JobState"] for job_id in running} == {"CANCELLED"}
    _assert_same_stores(local_output, output)


def test_bids_command_asks_one_job_per_run_in_flight_by_default(
    slurm: Slurm, dask_config_dir: Path, dataset: Path, local_output: Path, tmp_path: Path
) -> None:
    # Without --jobs: one job per run in flight (2 by default), never more than the runs
    # to do, rather than connect()'s single job.
    output = tmp_path / "out"
    with QueueWatcher(slurm) as watcher:
        done = _daskmask(
            "bids", dataset, output, "--scheduler", "slurm",
            env=_environment(dask_config_dir, slurm),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Two jobs asked of Slurm; whether the second starts before a fast batch ends is Slurm's
    # timing (seen PENDING once on a loaded machine), not daskmask's choice.
    assert len(watcher.jobs) == 2, watcher.jobs
    assert slurm.wait_until_empty(timeout=20) == []
    _assert_same_stores(local_output, output)


@pytest.fixture(scope="module")
def longer_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough work that the batch is still running when both of its jobs are."""
    root = tmp_path_factory.mktemp("jobqueue_bids_longer") / "fmriprep"
    subjects = [f"{index:02d}" for index in range(1, 7)]
    make_fmriprep_derivatives(root, subjects=subjects, shape=(32, 36, 32), n_volumes=120)
    return root


def test_sigterm_to_the_bids_command_cancels_its_jobs(
    slurm: Slurm, dask_config_dir: Path, longer_dataset: Path, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "daskmask", "bids", longer_dataset, tmp_path / "out"]
        + ["--scheduler", "slurm", "--jobs", "2"],
        env=_environment(dask_config_dir, slurm),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len([j for j in slurm.queue() if j["state"] == "RUNNING"]) < 2:
            assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
            time.sleep(0.2)
        jobs = [job["id"] for job in slurm.queue()]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert slurm.wait_until_empty(timeout=20) == []
    assert {slurm.job(job_id)["JobState"] for job_id in jobs} == {"CANCELLED"}
    assert process.returncode != 0


def test_sbatch_script_runs_a_whole_batch_in_one_allocation(
    slurm: Slurm, dataset: Path, local_output: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    env = {
        **slurm.environment,
        "DASKMASK_PYTHON": sys.executable,
        "DASK_INTERFACE": "lo",
        "DASKMASK_SCHEDULER_FILE": str(tmp_path / "scheduler.json"),
    }
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=2", "--mem-per-cpu=1G"]
        + [f"--output={tmp_path}/job-%j.out", str(SBATCH), str(dataset), str(output)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 180
    with QueueWatcher(slurm) as watcher:
        while slurm.job(job_id)["JobState"] in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            assert time.monotonic() < deadline, "the sbatch job did not end within 180 s"
            time.sleep(0.5)
    details = slurm.job(job_id)
    log = (tmp_path / f"job-{job_id}.out").read_text()
    assert details["JobState"] == "COMPLETED" and details["ExitCode"] == "0:0", log
    # The workers ran as a step of this one allocation (job id 12 -> step 12.0), no other job.
    assert f"{job_id}.0" in watcher.steps
    assert set(watcher.jobs) == {job_id}
    assert f"slurm-{job_id}-0" in log and f"slurm-{job_id}-1" in log
    assert "Dask dashboard: http://127.0.0.1:" in log and "ssh -N -L" in log
    assert "2 runs: 2 done, 0 skipped, 0 failed" in log
    assert not (tmp_path / "scheduler.json").exists()
    assert slurm.queue() == []
    _assert_same_stores(local_output, output)


# --- job scripts for the batch systems that do not run here -------------------------------------

#: Per kind: connect() arguments, and lines its job script must hold.
RENDERED = {
    "pbs": (
        {"queue": "normal", "account": "proj42", "walltime": "01:30:00"},
        ["#PBS -q normal", "#PBS -A proj42", "#PBS -l walltime=01:30:00",
         "#PBS -l select=1:ncpus=2:mem=3815MB", "#PBS -V"],
    ),
    "sge": (
        {"queue": "normal", "project": "proj42", "walltime": "01:30:00",
         "resource_spec": "h_vmem=4G"},
        ["#$ -q normal", "#$ -P proj42", "#$ -l h_rt=01:30:00", "#$ -l h_vmem=4G", "#$ -V"],
    ),
    "lsf": (
        {"queue": "normal", "project": "proj42", "walltime": "01:30"},
        ["#BSUB -q normal", '#BSUB -P "proj42"', "#BSUB -W 01:30", "#BSUB -n 2",
         "#BSUB -M 4000000", "#BSUB -V"],
    ),
    "htcondor": (
        {"disk": "1GB", "job_extra_directives": {"+ProjectName": '"proj42"', "+Flavour": '"v"'}},
        ["MY.DaskWorkerCores = 2", "MY.DaskWorkerMemory = 4000000000",
         "MY.DaskWorkerDisk = 1000000000", 'RequestCpus = MY.DaskWorkerCores',
         '+ProjectName = "proj42"'],
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(RENDERED))
def test_job_script_of_each_batch_system(kind: str) -> None:
    arguments, lines = RENDERED[kind]
    if kind != "htcondor":
        arguments = {**arguments, "job_extra_directives": ["-V"]}
    with dm.connect(
        cluster=kind, jobs=0, cores=2, memory="4GB", processes=1, dashboard_address=None,
        **arguments,
    ) as client:  # fmt: skip
        script = client.cluster.job_script()
        address = client.scheduler.address
    for line in lines:
        assert line in script.splitlines(), f"{line!r} not in\n{script}"
    worker = (
        f"{sys.executable} -m distributed.cli.dask_worker {address} --name dummy-name "
        "--nthreads 2 --memory-limit 3.73GiB --nanny --death-timeout 60"
    )
    assert worker in script


def _open_clusters() -> list[str]:
    from distributed.deploy.spec import SpecCluster

    return [type(c).__name__ for c in SpecCluster._instances if c.status.name != "closed"]


def test_no_pbs_server_here_is_a_typed_error() -> None:
    with pytest.raises(ClusterError, match="`qsub` did not accept.*No such file"):
        dm.connect(cluster="pbs", jobs=1, cores=1, memory="1GB", dashboard_address=None)
    assert "PBSCluster" not in _open_clusters()  # its scheduler was closed too


# --- settings: jobqueue.yaml, then the arguments ------------------------------------------------


def _directives(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_settings_come_from_the_config_and_arguments_override_them() -> None:
    config = {
        "jobqueue.slurm.cores": 2,
        "jobqueue.slurm.memory": "6GB",
        "jobqueue.slurm.queue": "compute",
        "jobqueue.slurm.account": "lab7",
        "jobqueue.slurm.walltime": "00:05:00",
        "jobqueue.slurm.job-extra-directives": ["--qos=normal"],
        "jobqueue.slurm.local-directory": "/scratch/node",
        "jobqueue.slurm.interface": "lo",
    }
    with dask.config.set(config), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # old keyword names are passed on renamed
        with dm.connect(cluster="slurm", jobs=0, dashboard_address=None) as client:
            from_config = client.cluster.job_script()
        with dm.connect(
            cluster="slurm",
            jobs=0,
            dashboard_address=None,
            queue="debug",
            walltime="00:01:00",
            cores=1,
            job_extra=["--exclusive"],
            **{"local-directory": "/tmp/elsewhere"},
        ) as client:
            overridden = client.cluster.job_script()
    assert _directives(from_config) == [
        "#SBATCH -J dask-worker", "#SBATCH -p compute", "#SBATCH -A lab7", "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=2", "#SBATCH --mem=6G", "#SBATCH -t 00:05:00",
        "#SBATCH --qos=normal",
    ]  # fmt: skip
    assert "--local-directory /scratch/node" in from_config and "--interface lo" in from_config
    assert _directives(overridden) == [
        "#SBATCH -J dask-worker", "#SBATCH -p debug", "#SBATCH -A lab7", "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=1", "#SBATCH --mem=6G", "#SBATCH -t 00:01:00",
        "#SBATCH --exclusive",
    ]  # fmt: skip
    assert "--local-directory /tmp/elsewhere" in overridden


def test_the_example_jobqueue_yaml_through_dask_config(tmp_path: Path) -> None:
    """deploy/slurm/jobqueue.yaml as a user installs it: a folder named by DASK_CONFIG."""
    script = textwrap.dedent(
        """
        import json, daskmask as dm
        with dm.connect(cluster="slurm", jobs=0, dashboard_address=None) as client:
            example = client.cluster.job_script()
        with dm.connect(cluster="slurm", jobs=0, dashboard_address=None, queue="debug",
                        cores=2) as client:
            overridden = client.cluster.job_script()
        print(json.dumps([example, overridden]))
        """
    )
    (tmp_path / "jobqueue.yaml").write_text(EXAMPLE_CONFIG.read_text())
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "DASK_CONFIG": str(tmp_path)},
        timeout=60,
        check=True,
    )
    example, overridden = json.loads(done.stdout.splitlines()[-1])
    settings = yaml.safe_load(EXAMPLE_CONFIG.read_text())["jobqueue"]["slurm"]
    assert settings["cores"] == 4 and settings["memory"] == "16GiB"
    assert _directives(example) == [
        "#SBATCH -J dask-worker", "#SBATCH -p compute", "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G", "#SBATCH -t 02:00:00",
    ]  # fmt: skip
    assert "--nthreads 4 --memory-limit 16.00GiB" in example
    assert "--local-directory /tmp" in example and "--death-timeout 60" in example
    assert "#SBATCH -p debug" in overridden and "#SBATCH --cpus-per-task=2" in overridden


def test_missing_cores_and_memory_name_the_settings() -> None:
    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        with pytest.raises(ClusterConfigError, match=r"jobqueue\.slurm\.cores.*jobqueue\.yaml"):
            dm.connect(cluster="slurm", jobs=0, dashboard_address=None)


def test_local_cluster_sizes_do_not_apply_to_a_job_queue() -> None:
    with pytest.raises(ClusterConfigError, match="memory_limit only size the LocalCluster"):
        dm.connect(cluster="slurm", memory_limit="4GB")


@pytest.mark.parametrize(
    ("kind", "module", "extra"),
    [
        ("slurm", "dask_jobqueue", "jobqueue"),
        ("kubernetes", "dask_kubernetes.operator", "kubernetes"),
    ],
)
def test_a_missing_extra_names_its_pip_command(monkeypatch, kind, module, extra) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what import finds when it is not installed
    with pytest.raises(ClusterExtraMissingError, match=rf'pip install "daskmask\[{extra}\]"'):
        dm.connect(cluster=kind, jobs=0)


# --- Kubernetes: no API server runs here ---------------------------------------------------------


def test_kubernetes_without_a_kubeconfig_says_how_to_get_one(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterConfigError, match=r"\.kube/config names no kubeconfig.*KUBECONFIG"):
        dm.connect(cluster="kubernetes", jobs=2)


def test_kubernetes_api_server_unreachable_is_a_typed_error(monkeypatch, tmp_path) -> None:
    from dask_kubernetes.operator import KubeCluster

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
        "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    before = set(KubeCluster._instances)
    with pytest.raises(ClusterError, match="kubectl get daskclusters"):
        dm.connect(cluster="kubernetes", jobs=2, image="localhost/daskmask:test")
    assert set(KubeCluster._instances) == before  # nothing for dask-kubernetes to reap at exit
