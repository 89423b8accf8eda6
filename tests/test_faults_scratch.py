"""Fault injection: scratch directories of dead and live owners (:mod:`daskmask._lease`).

Real processes throughout: owners are SIGKILLed, and a live owner runs in
another PID namespace (``unshare --pid``, as root) with a process id that
does not exist in the namespace of the test.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dask
import pytest

from daskmask import _lease as lease_module
from daskmask._lease import LOCK_FILE, RECORD_FILE, Lease, owner_is_dead, read_record
from daskmask._lease import remove_if_dead as lease_remove_if_dead
from daskmask._scratch import TemporaryStore

_HOLD = textwrap.dedent(
    """
    import os, sys, time
    from daskmask._scratch import TemporaryStore
    store = TemporaryStore(directory=sys.argv[1])
    print(store.root, os.getpid(), flush=True)
    time.sleep(120)
    """
)


def _start_owner(command: list[str]) -> tuple[subprocess.Popen, str, int]:
    """Start a process that creates a leased store and sleeps; return it, the store, its pid."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = process.stdout.readline().split()
    assert line, "the owner process did not start"
    return process, line[0], int(line[1])


def _kill(process: subprocess.Popen, root: str) -> None:
    """SIGKILL the owner's process group; wait until the kernel dropped its lock."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 10  # a grandchild may take a moment to be reaped
    while not owner_is_dead(root) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_sigkilled_owner_is_removed_by_the_next_store(tmp_path):
    process, root, _ = _start_owner([sys.executable, "-c", _HOLD, str(tmp_path)])
    try:
        assert not owner_is_dead(root)
        TemporaryStore(directory=str(tmp_path)).cleanup()
        assert os.path.isdir(root)  # alive: kept
    finally:
        _kill(process, root)
    assert owner_is_dead(root)
    nxt = TemporaryStore(directory=str(tmp_path))
    assert not os.path.exists(root)
    assert os.path.isdir(nxt.root)


def _free_pid() -> int:
    """A process id that no process uses in this PID namespace."""
    for candidate in range(300, 30000):
        if not os.path.exists(f"/proc/{candidate}"):
            return candidate
    raise AssertionError("no free pid")


_IN_NAMESPACE = textwrap.dedent(
    """
    import os, sys, time
    # Make the owner's pid in its own namespace one that is free outside it.
    with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
        handle.write(str(int(sys.argv[2]) - 1))
    child = os.fork()
    if child == 0:
        from daskmask._scratch import TemporaryStore
        store = TemporaryStore(directory=sys.argv[1])
        print(store.root, os.getpid(), flush=True)
        time.sleep(120)
        os._exit(0)
    os.waitpid(child, 0)
    """
)


@pytest.mark.timeout(60)
def test_live_owner_in_another_pid_namespace_is_kept(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to create a PID namespace")
    pid = _free_pid()
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c"]
    process, root, inner_pid = _start_owner([*command, _IN_NAMESPACE, str(tmp_path), str(pid)])
    try:
        assert inner_pid == pid
        # Same host name, and no process with that pid here: what a pid check
        # took for a dead owner. The lock says it is alive.
        assert not os.path.exists(f"/proc/{pid}")
        record = read_record(root)
        assert (
            record["pid"] == pid and record["pid_namespace"] != os.stat("/proc/self/ns/pid").st_ino
        )
        assert not owner_is_dead(root)
        assert not lease_remove_if_dead(root)
        TemporaryStore(directory=str(tmp_path)).cleanup()
        assert os.path.isdir(root)
    finally:
        _kill(process, root)
    assert lease_remove_if_dead(root)
    assert not os.path.exists(root)


_CLIENT = textwrap.dedent(
    """
    import os, signal, sys
    import dask
    from daskmask import NiftiMasker, save
    path, scratch, out = sys.argv[1:4]
    with dask.config.set({"daskmask.temporary-directory": scratch,
                          "daskmask.block-bytes": "256KiB", "scheduler": "threads"}):
        X = NiftiMasker(detrend=True).fit_transform(path)
        # to a store: signals computed into memory keep the intermediate in the result
        save(X, out)
    names = sorted(os.listdir(scratch))
    print(" ".join(names), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no finaliser runs
    """
)


@pytest.mark.timeout(120)
def test_killed_client_scratch_is_removed_by_the_next_run(tmp_path):
    from daskmask import NiftiMasker
    from daskmask.datasets import generate_epi

    run = generate_epi(tmp_path / "run.nii.gz", shape=(20, 20, 12), n_timepoints=40, seed=4)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    killed = subprocess.run(
        [sys.executable, "-c", _CLIENT, str(run), str(scratch), str(tmp_path / "out.zarr")],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = killed.stdout.split()
    # The decoded copy of the .nii.gz and the extraction intermediate were left behind.
    assert any(name.startswith("daskmask-decoded-") for name in left)
    assert any(name.startswith("daskmask-extract-") for name in left)
    assert sorted(os.listdir(scratch)) == sorted(left)
    extract = [name for name in left if name.startswith("daskmask-extract-")]
    assert (scratch / extract[0] / "signals.raw").stat().st_size > 0
    settings = {"daskmask.temporary-directory": str(scratch), "daskmask.block-bytes": "256KiB"}
    with dask.config.set(settings):
        X = NiftiMasker(detrend=True).fit_transform(run)
        fresh = set(os.listdir(scratch))
        assert fresh and not fresh & set(left)  # every leftover of the dead client is gone
        del X


@pytest.mark.timeout(30)
def test_lease_records_and_conservative_verdicts(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "CLEANER_WAIT_SECONDS", 0.2)  # a live owner: give up soon
    directory = tmp_path / "owned"
    directory.mkdir()
    assert not owner_is_dead(directory)  # not leased: left alone
    lease = Lease.acquire(directory)
    record = read_record(directory)
    assert set(record) == {"hostname", "boot_id", "pid_namespace", "pid", "start_time"}
    assert record["pid"] == os.getpid()
    assert (directory / LOCK_FILE).exists()
    assert not owner_is_dead(directory)  # held by this very process
    with pytest.raises(BlockingIOError):
        Lease.acquire(directory)
    with pytest.raises(TypeError):
        pickle.dumps(lease)
    lease.release()
    assert not lease.held
    assert owner_is_dead(directory)  # released: nobody uses it

    # A record of another boot (or host) is never judged dead, even with the lock free.
    for field, value in (("boot_id", "another-boot"), ("hostname", "another-host")):
        changed = {**record, field: value}
        (directory / RECORD_FILE).write_text(json.dumps(changed))
        assert not owner_is_dead(directory)
        assert not lease_remove_if_dead(directory)
    # Lock file without record (owner died between the two steps): left alone.
    (directory / RECORD_FILE).unlink()
    assert not owner_is_dead(directory)
    assert directory.is_dir()


@pytest.mark.timeout(30)
def test_a_new_lease_waits_for_a_cleaner_testing_its_directory(tmp_path):
    """A run's clean-up may test a directory another run has just made (a 32-run batch did).

    The test holds the lock while it reads the record: the owner must wait for it, not fail.
    """
    directory = tmp_path / "daskmask-decoded-new"
    directory.mkdir()
    (directory / LOCK_FILE).touch()  # the owner's first step; its lock comes next
    acquired: list[object] = []
    with lease_module._lock_if_dead(directory) as dead:  # the cleaner's test, lock held
        assert not dead  # no record yet: left alone
        owner = threading.Thread(target=lambda: acquired.append(Lease.acquire(directory)))
        owner.start()
        time.sleep(0.3)  # the owner is now waiting for the lock
        assert not acquired
    owner.join(10)
    assert len(acquired) == 1 and acquired[0].held
    assert read_record(directory)["pid"] == os.getpid()
    assert not owner_is_dead(directory)
    acquired[0].release()


@pytest.mark.timeout(30)
def test_a_forked_child_does_not_drop_its_parents_lease(tmp_path):
    lease = Lease.acquire(tmp_path)
    child = os.fork()
    if child == 0:  # the child releases its inherited copy, then exits
        try:
            lease.release()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    checker = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from daskmask._lease import owner_is_dead; "
            "print(owner_is_dead(sys.argv[1]))",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert checker.stdout.strip() == "False", checker.stderr
    lease.release()
    deadline = time.monotonic() + 5
    while not owner_is_dead(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert owner_is_dead(tmp_path)
    assert Path(tmp_path).is_dir()


@pytest.mark.cluster
def test_a_client_subclass_is_a_client():
    """A Client subclass (daskmask.cluster's own, for job queues and Kubernetes) is a client.

    Taken for dask's threads, it made the extraction plan for one machine and the
    intermediate's owner remove files that the workers' tasks still needed.
    """
    from distributed import Client

    from daskmask._scratch import current_client

    class OwnClient(Client):
        pass

    assert current_client() is None
    with OwnClient(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as client:
        assert current_client() is client
        with dask.config.set(scheduler="threads"):
            assert current_client() is None  # as dask itself decides
