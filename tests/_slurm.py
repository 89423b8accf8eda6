"""A real one-node Slurm for the tests: munged, slurmctld and slurmd on this machine.

The ``slurm`` session fixture installs Debian's ``slurm-wlm`` and ``munge`` if
they are missing, writes a ``slurm.conf`` generated from this machine (host
name, CPU count, the memory ``slurmd -C`` reports), starts the three daemons,
waits for the node to be idle and stops them at the end of the session.
Nothing is mocked: dask-jobqueue's ``sbatch``/``scancel`` calls and the tests'
``squeue``/``scontrol`` calls go to these daemons.

The configuration lives in a fresh folder per session and is named by
``SLURM_CONF`` in this process's environment (inherited by every command and
every job), so a machine's own ``/etc/slurm`` is never touched. The daemons'
pid files live in the fixed :data:`RUNTIME` folder: daemons left by a killed
session are recognised and stopped before new ones start. A lock file
serialises sessions that would start Slurm at the same time (pytest-xdist).

Where Slurm cannot run (not root), the tests that ask for it fail with the
command that makes it possible; they never skip.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: What installs the daemons (Debian 12: Slurm 22.05, munge 0.5).
INSTALL_COMMAND = "apt-get install -y --no-install-recommends slurm-wlm munge"
#: Fixed folder of the daemons' pid files, spool and state, so that a later session finds them.
RUNTIME = Path("/run/daskmask-test-slurm")
#: The partition the generated configuration defines.
PARTITION = "debug"
#: Seconds allowed for the node to become idle after the daemons start.
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Slurm:
    """A running one-node Slurm: where its configuration is and how to ask it."""

    conf: Path
    node: str
    partition: str
    cpus: int
    memory_mb: int

    @property
    def environment(self) -> dict[str, str]:
        """The environment of a command that talks to this Slurm."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, timeout: float = 30) -> str:
        """Run a Slurm client command (``squeue``, ``scontrol``, ...) and return its output."""
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def queue(self) -> list[dict[str, str]]:
        """Every job Slurm knows as pending or running: id, name, state, node, command."""
        lines = self.run("squeue", "--noheader", "--format=%i|%j|%T|%N|%o").splitlines()
        keys = ("id", "name", "state", "node", "command")
        return [dict(zip(keys, line.split("|"), strict=True)) for line in lines if line.strip()]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a mapping (JobState, ExitCode, NumTasks, ...).

        Slurm forgets a finished job after ``MinJobAge`` (set to 300 s here), so a
        job can be inspected a while after it ends.
        """
        text = self.run("scontrol", "show", "job", "--oneliner", str(job_id))
        return dict(re.findall(r"(\w[\w:/]*)=(\S*)", text))

    def wait_until_empty(self, timeout: float = 60) -> list[dict[str, str]]:
        """Poll ``squeue`` until no job is queued; return what is left at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.queue()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def cancel_all(self) -> None:
        """Cancel every job (a failed test must not leave jobs for the next one)."""
        subprocess.run(["scancel", "--full", "--user=root"], env=self.environment, check=False)


def _root_or_fail() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "The Slurm tests start munged, slurmctld and slurmd, which needs root. Run them as "
            f"root, after `{INSTALL_COMMAND}` (Debian/Ubuntu).",
            pytrace=False,
        )


def _install() -> None:
    """Install Slurm and munge from the distribution if their daemons are missing."""
    if all(shutil.which(name) for name in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if shutil.which("apt-get") is None:
        pytest.fail(
            "Slurm is not installed and this machine has no apt-get: install slurmctld, slurmd, "
            "munge and the Slurm client commands with the system's package manager.",
            pytrace=False,
        )
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # `apt-get update` only when the package lists do not know the package yet.
    known = subprocess.run(
        ["apt-cache", "policy", "slurm-wlm"], capture_output=True, text=True, check=False
    )
    if "Candidate: (none)" in known.stdout or "Candidate:" not in known.stdout:
        subprocess.run(["apt-get", "update"], env=environment, check=True, timeout=600)
    done = subprocess.run(
        INSTALL_COMMAND.split(),
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"`{INSTALL_COMMAND}` failed: {done.stderr[-2000:]}", pytrace=False)


def _node_memory_mb() -> int:
    """90 % of the memory ``slurmd -C`` reports: more than it reports keeps the node down."""
    report = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
    found = re.search(r"RealMemory=(\d+)", report.stdout)
    if found is None:
        raise RuntimeError(f"`slurmd -C` printed no RealMemory: {report.stdout}")
    return int(int(found.group(1)) * 0.9)


def write_config(folder: Path, node: str, cpus: int, memory_mb: int) -> Path:
    """Write slurm.conf for one node named ``node`` on 127.0.0.1; return its path."""
    spool = RUNTIME / "spool"
    state = RUNTIME / "state"
    lines = {
        "ClusterName": "daskmasktest",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "MpiDefault": "none",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/none",
        "SchedulerType": "sched/backfill",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
        "ReturnToService": "2",
        # Finished jobs stay visible to `scontrol show job` for 5 minutes (sacct is absent).
        "MinJobAge": "300",
        # A job's processes get 5 s between SIGTERM and SIGKILL (the default is 30 s).
        "KillWait": "5",
        "StateSaveLocation": str(state),
        "SlurmdSpoolDir": str(spool),
        "SlurmctldPidFile": str(RUNTIME / "slurmctld.pid"),
        "SlurmdPidFile": str(RUNTIME / "slurmd.pid"),
        "SlurmctldLogFile": str(folder / "slurmctld.log"),
        "SlurmdLogFile": str(folder / "slurmd.log"),
    }
    text = "".join(f"{key}={value}\n" for key, value in lines.items())
    text += (
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN\n"
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
    )
    conf = folder / "slurm.conf"
    conf.write_text(text)
    return conf


def _stop_pidfile(pidfile: Path) -> None:
    """Stop the daemon a pid file names (one this fixture started, now or in a killed session)."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def _start_munge() -> None:
    """Start munged unless one answers already (it may serve other Slurm users)."""
    if subprocess.run(["munge", "-n"], capture_output=True, check=False).returncode == 0:
        return
    for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, timeout=30)
    deadline = time.monotonic() + 10
    while subprocess.run(["munge", "-n"], capture_output=True, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("munged did not answer within 10 s")
        time.sleep(0.1)


def _wait_idle(slurm: Slurm, logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["sinfo", "--noheader", "--format=%T", f"--nodes={slurm.node}"],
            capture_output=True,
            text=True,
            env=slurm.environment,
            check=False,
        )
        state = done.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.3)
    tail = "".join(
        f"\n--- {log.name}\n" + log.read_text()[-1500:] for log in sorted(logs.glob("*.log"))
    )
    raise RuntimeError(f"the Slurm node is {state!r}, not idle, after {START_TIMEOUT} s{tail}")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    """A running one-node Slurm; ``SLURM_CONF`` names its configuration meanwhile."""
    _root_or_fail()
    _install()
    RUNTIME.mkdir(parents=True, exist_ok=True)
    with (RUNTIME / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in ("slurmd.pid", "slurmctld.pid"):
            _stop_pidfile(RUNTIME / name)
        # State of a previous session would bring back its jobs and job ids.
        for folder in ("spool", "state"):
            shutil.rmtree(RUNTIME / folder, ignore_errors=True)
            (RUNTIME / folder).mkdir()
        folder = tmp_path_factory.mktemp("slurm")
        node = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        memory_mb = _node_memory_mb()
        conf = write_config(folder, node, cpus, memory_mb)
        slurm = Slurm(conf, node, PARTITION, cpus, memory_mb)
        saved = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(conf)
        try:
            _start_munge()
            subprocess.run(["/usr/sbin/slurmctld", "-f", str(conf)], check=True, timeout=30)
            subprocess.run(["/usr/sbin/slurmd", "-f", str(conf)], check=True, timeout=30)
            _wait_idle(slurm, folder)
            yield slurm
        finally:
            slurm.cancel_all()
            slurm.wait_until_empty(timeout=20)
            for name in ("slurmd.pid", "slurmctld.pid"):
                _stop_pidfile(RUNTIME / name)
            if saved is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = saved


def job_ids_in(text: str) -> list[str]:
    """Job ids that ``sbatch`` printed ("Submitted batch job 12")."""
    return re.findall(r"Submitted batch job (\d+)", text)


__all__ = ["INSTALL_COMMAND", "Slurm", "job_ids_in", "slurm", "write_config"]
