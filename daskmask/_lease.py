"""Who owns a scratch directory, and whether that owner is certainly gone.

daskmask leaves directories behind when a process is killed before its
clean-up runs (SIGKILL, an out-of-memory kill, a notebook kernel stopped at
once): the extraction intermediate (``daskmask-extract-*``), the decoded copy
of a ``.nii.gz`` (``daskmask-decoded-*``), hidden partial stores
(``.NAME.zarr.partial-*``). A later run removes them, but only when their
owner is **certainly** dead: deleting the scratch of a live job gives it
wrong results or errors.

How ownership is decided
------------------------
:meth:`Lease.acquire` creates a lock file in the directory and holds an
exclusive ``flock`` on it for as long as the lease lives (the kernel drops
the lock when the owner dies, whatever the death). It then writes an owner
record: host name, boot id (``/proc/sys/kernel/random/boot_id``), inode of
the PID namespace, process id and start time.

:func:`owner_is_dead` answers True only if both hold:

* the record names **this boot of this machine** (same boot id, same host
  name). ``flock`` is only trustworthy between processes of one kernel:
  on a shared file system another host's lock may be invisible here
  (NFS mounted with ``local_lock``), so a record of another host or another
  boot is never judged dead;
* the lock can be taken now: no process of this kernel holds it, in any PID
  namespace or container (a lock is on the file, not on a process id).

Process ids are *not* used to decide: the same pid names different
processes in different PID namespaces (a live job's scratch was once removed
by a process with the same host name in another PID namespace that saw no
process with that pid). They are recorded for people reading the record.

No age-based rule: a directory of another boot or host is never removed
automatically, however old (a shared scratch may hold a live job of another
node whose host name happens to be the same). Remove those by hand.

A directory without a lock file or without a record (its owner is between
creating it and acquiring the lease, or it was made by an older version) is
left alone. A lease that was released counts as dead: release means that
the owner no longer uses the directory.

A forked child inherits the lock (the descriptor is shared), so a directory
stays "alive" while such a child runs; :meth:`Lease.release` in the child
only closes its copy. The descriptor is close-on-exec, so programs started
with ``subprocess`` do not keep it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
import weakref
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_FILE",
    "RECORD_FILE",
    "Lease",
    "owner_is_dead",
    "read_record",
    "remove_dead",
    "remove_if_dead",
]

#: Name of the lock file a lease holds ``flock`` on, inside the directory.
LOCK_FILE = ".daskmask-lease.lock"
#: Name of the JSON owner record, inside the directory.
RECORD_FILE = ".daskmask-lease.json"

#: Seconds :meth:`Lease.acquire` waits for a cleaner that is testing the
#: directory: the test holds the lock for as long as it takes to read the
#: record (well under a millisecond on a local disk).
CLEANER_WAIT_SECONDS = 5.0


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks after boot (field 22 of ``/proc/PID/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _this_machine() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "boot_id": _boot_id()}


def _own_record() -> dict[str, Any]:
    pid = os.getpid()
    return {
        **_this_machine(),
        "pid_namespace": _pid_namespace(),
        "pid": pid,
        "start_time": _start_time(pid),
    }


def _close(fd: int, owner_pid: int) -> None:
    """Close the lock descriptor; unlock it only in the process that took it."""
    try:
        if os.getpid() == owner_pid:
            # LOCK_UN acts on the open file description shared with forked
            # children; only its owner may drop it.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class Lease:
    """An exclusive claim of this process on a directory; see the module docstring.

    Create one with :meth:`acquire`; the claim ends with :meth:`release`,
    when the object is collected, or when the process dies.
    """

    def __init__(self, directory: Path, fd: int, record: dict[str, Any]) -> None:
        self.directory = directory
        self.record = record
        self._finalizer = weakref.finalize(self, _close, fd, os.getpid())

    @classmethod
    def acquire(cls, directory: str | os.PathLike[str]) -> Lease:
        """Claim ``directory`` (which must exist) for this process.

        Parameters
        ----------
        directory : str or os.PathLike
            An existing directory, normally created just before by the caller.

        Returns
        -------
        Lease
            The held lease.

        Raises
        ------
        BlockingIOError
            If another live process holds a lease on ``directory`` (a
            cleaner testing it is waited for, up to
            :data:`CLEANER_WAIT_SECONDS`).
        OSError
            If the lock file or the record cannot be written.

        """
        directory = Path(directory)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # Lock first, record second: a checker that gets the lock and finds
        # no record leaves the directory alone. Such a checker (another run's
        # clean-up of dead scratch, possibly a thread of this process) may
        # hold the lock of a directory created an instant ago for the time
        # of its test: wait for it, within a bound, rather than fail.
        deadline = time.monotonic() + CLEANER_WAIT_SECONDS
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise BlockingIOError(
                        error.errno, f"{directory} is leased by another live process"
                    ) from None
            time.sleep(pause)
            pause = min(2 * pause, 0.05)
        record = _own_record()
        try:
            partial = directory / f"{RECORD_FILE}.{os.getpid()}.tmp"
            partial.write_text(json.dumps(record), encoding="utf-8")
            os.replace(partial, directory / RECORD_FILE)
        except BaseException:
            _close(fd, os.getpid())
            raise
        return cls(directory, fd, record)

    @property
    def held(self) -> bool:
        """Whether the lease is still held."""
        return self._finalizer.alive

    def release(self) -> None:
        """Give the directory up (it may then be removed by anyone)."""
        self._finalizer()

    def __reduce__(self) -> Any:
        raise TypeError("A Lease belongs to the process that acquired it; it cannot be pickled.")

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"Lease({str(self.directory)!r}, {state})"


def read_record(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the owner record of ``directory``, or None if absent or unreadable."""
    try:
        record = json.loads(Path(directory, RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@contextlib.contextmanager
def _lock_if_dead(directory: Path) -> Any:
    """Yield True while holding the lock of ``directory`` if its owner is certainly dead."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:  # no lock file: not leased (yet), or already removed
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False  # held: alive in this kernel (or unknowable)
            return
        record = read_record(directory)
        here = _this_machine()
        yield (
            record is not None
            and here["boot_id"] is not None
            and record.get("boot_id") == here["boot_id"]
            and record.get("hostname") == here["hostname"]
        )
    finally:
        os.close(fd)  # also drops the lock taken for the test


def owner_is_dead(directory: str | os.PathLike[str]) -> bool:
    """Return True only if the owner of ``directory`` is certainly gone.

    Parameters
    ----------
    directory : str or os.PathLike
        A directory that may hold a lease.

    Returns
    -------
    bool
        True if its record names this boot of this machine and no process
        holds its lock; False otherwise (alive, of another host or boot, or
        not leased).

    """
    with _lock_if_dead(Path(directory)) as dead:
        return bool(dead)


def remove_if_dead(directory: str | os.PathLike[str]) -> bool:
    """Remove ``directory`` if :func:`owner_is_dead`; return whether it was removed.

    The lock is held during the removal, so two cleaners never race and an
    owner can never come back in between.
    """
    directory = Path(directory)
    with _lock_if_dead(directory) as dead:
        if not dead:
            return False
        shutil.rmtree(directory, ignore_errors=True)
        return not directory.exists()


def remove_dead(parent: str | os.PathLike[str], prefixes: tuple[str, ...]) -> list[str]:
    """Remove the directories of ``parent`` named ``prefix*`` whose owner is dead.

    Parameters
    ----------
    parent : str or os.PathLike
        Where to look.
    prefixes : tuple of str
        Name prefixes of the directories to consider.

    Returns
    -------
    list of str
        The paths removed.

    """
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    removed = []
    for name in names:
        if name.startswith(prefixes):
            path = os.path.join(os.fspath(parent), name)
            if os.path.isdir(path) and not os.path.islink(path) and remove_if_dead(path):
                removed.append(path)
    return removed
