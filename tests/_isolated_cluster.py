"""A distributed cluster whose workers share no disk, started for real by the tests.

A ``dask scheduler`` and two ``dask worker`` processes (with their nannies);
each worker runs under ``unshare --mount`` with its own tmpfs on ``/tmp``, its
own dask ``temporary-directory`` and ``local-directory`` there, so that
nothing a worker writes locally is visible to the client or to the other
worker. Inputs and outputs of such tests live on the S3 server of
``tests/_s3.py``. Needs root (``unshare --mount``), as on these machines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Scratch folder inside each worker's private /tmp.
WORKER_SCRATCH = "/tmp/daskmask-scratch"


def can_unshare() -> bool:
    """Whether this process may create mount namespaces (root with unshare)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, timeout=10, check=False
    )
    return probe.returncode == 0


@dataclass
class IsolatedCluster:
    """Handles of the scheduler and worker processes."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        """Stop every process (workers first)."""
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _code_folders() -> list[str]:
    """Folders under /tmp that the worker needs to run: the virtualenv and the sources.

    A clone (and its ``.venv``) may live under /tmp, which each worker's private
    tmpfs hides; those folders are bound back at the same path, read-only.
    """
    import daskmask

    candidates = {
        os.path.realpath(sys.prefix),
        os.path.dirname(os.path.dirname(os.path.realpath(daskmask.__file__))),
    }
    under_tmp = sorted(folder for folder in candidates if folder.startswith("/tmp/"))
    # A folder inside another one comes back with it.
    return [
        folder
        for folder in under_tmp
        if not any(folder.startswith(other + "/") for other in under_tmp)
    ]


def _private_tmp_command(worker: int) -> str:
    """Shell commands giving this mount namespace its own /tmp (a tmpfs)."""
    steps = []
    for index, folder in enumerate(_code_folders()):
        # Keep a handle on the folder before /tmp is covered, then bind it back
        # (one handle per worker: they start at the same time).
        keep = f"/run/daskmask-isolated-keep-{os.getpid()}-{worker}-{index}"
        steps += [f"mkdir -p {keep}", f"mount --bind {folder} {keep}"]
    steps.append("mount -t tmpfs -o size=4g tmpfs /tmp")
    for index, folder in enumerate(_code_folders()):
        keep = f"/run/daskmask-isolated-keep-{os.getpid()}-{worker}-{index}"
        steps += [
            f"mkdir -p {folder}",
            f"mount --bind -o ro {keep} {folder}",
            f"umount {keep}",
            f"rmdir {keep}",
        ]
    return " && ".join(steps)


def start_isolated_cluster(
    folder: Path, n_workers: int = 2, memory_limit: str = "3GiB", nthreads: int = 1
) -> IsolatedCluster:
    """Start a scheduler and ``n_workers`` workers on private file systems."""
    scheduler_file = folder / "scheduler.json"
    environment = dict(os.environ)
    scheduler = subprocess.Popen(
        [
            sys.executable, "-m", "distributed.cli.dask_scheduler",
            "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--scheduler-file", str(scheduler_file),
        ],
        stdout=subprocess.DEVNULL, stderr=open(folder / "scheduler.log", "wb"),
        env=environment,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() or not scheduler_file.read_text().strip():
        if scheduler.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((folder / "scheduler.log").read_text())
        time.sleep(0.1)
    time.sleep(0.2)
    address = json.loads(scheduler_file.read_text())["address"]
    cluster = IsolatedCluster(address, scheduler)
    for index in range(n_workers):
        worker_command = " ".join(
            [
                f"mkdir -p {WORKER_SCRATCH} &&",
                f"exec {sys.executable} -m distributed.cli.dask_worker {address}",
                f"--nthreads {nthreads} --memory-limit {memory_limit}",
                f"--local-directory {WORKER_SCRATCH}/dask-local --name isolated-{index}",
                "--no-dashboard",
            ]
        )
        worker_environment = {
            **environment,
            "TMPDIR": "/tmp",
            "DASK_TEMPORARY_DIRECTORY": WORKER_SCRATCH,
            "DASK_DASKMASK__TEMPORARY_DIRECTORY": WORKER_SCRATCH,
        }
        cluster.workers.append(
            subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    f"{_private_tmp_command(index)} && {worker_command}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(folder / f"worker-{index}.log", "wb"),
                env=worker_environment,
            )  # fmt: skip
        )
    return cluster


@pytest.fixture(scope="module")
def isolated_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedCluster]:
    """A scheduler and two workers that share no disk (module-wide)."""
    if not can_unshare():
        pytest.skip("needs root and unshare --mount to give each worker its own /tmp")
    from distributed import Client

    cluster = start_isolated_cluster(tmp_path_factory.mktemp("isolated"))
    try:
        with Client(cluster.address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield cluster
    finally:
        cluster.stop()
