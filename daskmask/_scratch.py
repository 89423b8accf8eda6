"""Scratch: where daskmask keeps what a lazy graph needs between its tasks, and for how long.

Two things live in scratch: the time-to-voxel intermediate of the extraction
(``daskmask-extract-*``, a raw ``(time, voxel)`` file) and the decoded copy of
a ``.nii.gz`` (``daskmask-decoded-*``); unmasking to a Zarr array uses it too
(``daskmask-unmask-*``). Each is one :class:`TemporaryStore`, with one
lifetime:

* it is created by the client when a graph is built, in the local folder
  :func:`temporary_base` (``daskmask.temporary-directory``, dask's
  ``temporary-directory``, else the system's temporary folder);
* it is leased to the client process (:mod:`daskmask._lease`), so the next
  store created in that folder removes the stores of owners that are
  certainly dead (SIGKILLed, out of memory), never those of live processes in
  any PID namespace or on other hosts;
* it is removed when the object is garbage collected, i.e. when no graph (no
  lazy array, no fitted masker) refers to it any more, or at interpreter exit.
  Copies sent to workers pickle to the plain path, so they never remove it.

Where scratch lives, and who sees it
------------------------------------
A local folder is shared by every process on this machine: dask's threads, a
``LocalCluster``, or a cluster on a shared file system. Workers on other
machines, or in containers or pods with their own file systems, do not see
it: :func:`scratch_is_shared` asks them (once per cluster, cached) whether
they see a token file written here. What daskmask does when they do not
(dask's P2P rechunk instead of the raw intermediate; no decoded copy of a
``.nii.gz``) is decided from that fact, in the extraction plan and in
``fit``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import weakref
from typing import Any

import dask

from daskmask._lease import Lease, remove_dead

#: Name prefixes of every kind of daskmask scratch directory.
PREFIXES = ("daskmask-extract-", "daskmask-decoded-", "daskmask-unmask-")
#: Prefix of the token files of :func:`scratch_is_shared`.
PROBE_PREFIX = "daskmask-probe-"

__all__ = [
    "PREFIXES",
    "TemporaryStore",
    "current_client",
    "remove_orphans",
    "scratch_is_shared",
    "temporary_base",
]


def temporary_base() -> str:
    """Return the local folder scratch goes into.

    ``dask.config.get("daskmask.temporary-directory")``, else dask's
    ``temporary-directory``, else :func:`tempfile.gettempdir`.

    Returns
    -------
    str
        An existing directory (created if needed).

    """
    base = dask.config.get("daskmask.temporary-directory", None)
    if not base:
        base = dask.config.get("temporary-directory", None)
    if not base:
        base = tempfile.gettempdir()
    base = os.path.expanduser(os.fspath(base))
    os.makedirs(base, exist_ok=True)
    return base


def _remove(root: str, lease: Lease | None = None) -> None:
    # Remove while still holding the lease, so no cleaner races the removal.
    shutil.rmtree(root, ignore_errors=True)
    if lease is not None:
        lease.release()


def remove_orphans(directory: str, prefixes: tuple[str, ...] = PREFIXES) -> list[str]:
    """Remove the scratch directories of ``directory`` whose owner is certainly dead.

    Parameters
    ----------
    directory : str
        Where the stores are.
    prefixes : tuple of str, default=PREFIXES
        Name prefixes of the directories to consider.

    Returns
    -------
    list of str
        The paths removed.

    """
    return remove_dead(directory, prefixes)


class TemporaryStore(os.PathLike):
    """A leased scratch directory, removed when this object is collected.

    Pickles as a plain ``str`` of its path, so copies sent to worker
    processes (or in-process workers) never remove anything: only the object
    held by the client's graph does.

    Parameters
    ----------
    prefix : str, default="daskmask-extract-"
        Prefix of the directory name.
    directory : str or None, default=None
        Parent directory; None means :func:`temporary_base`.

    """

    def __init__(self, prefix: str = "daskmask-extract-", directory: str | None = None) -> None:
        directory = directory or temporary_base()
        remove_orphans(directory, tuple(dict.fromkeys((*PREFIXES, prefix))))
        self.root = tempfile.mkdtemp(prefix=prefix, dir=directory)
        try:
            lease = Lease.acquire(self.root)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(self, _remove, self.root, lease)

    def __fspath__(self) -> str:
        return self.root

    def __repr__(self) -> str:
        return f"TemporaryStore({self.root!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (str, (self.root,))

    def cleanup(self) -> None:
        """Remove the directory now."""
        self._finalizer()


# --- who sees the scratch folder ------------------------------------------------------


def current_client() -> Any:
    """Return the ``distributed.Client`` dask computes with now, or None (threads, ...).

    A ``dask.config.set(scheduler="threads")`` inside a client's context
    counts as no client, as dask itself does.
    """
    from dask.base import get_scheduler

    scheduler = get_scheduler()
    owner = getattr(scheduler, "__self__", None)
    # A subclass is a client too (daskmask.cluster's own, for the clusters it starts);
    # without distributed imported, no client can exist: never imported just to ask.
    client_class = getattr(sys.modules.get("distributed"), "Client", None)
    if owner is not None and client_class is not None and isinstance(owner, client_class):
        return owner
    return None


_shared: dict[tuple[Any, ...], bool] = {}
_shared_lock = threading.Lock()


def _cluster_identity(client: Any, base: str) -> tuple[Any, ...] | None:
    """Return the scheduler, its workers and the scratch folder (None: no worker known)."""
    workers = tuple(sorted(client.scheduler_info(n_workers=-1).get("workers", {})))
    if not workers:
        return None
    return (client.scheduler.address, workers, base)


def scratch_is_shared(client: Any = None) -> bool:
    """Whether every worker of ``client`` sees this process's scratch folder.

    Without a distributed client (dask's threads or processes on this
    machine) the answer is True. Otherwise a token file is created in
    :func:`temporary_base` and every worker is asked whether it sees it
    (``client.run(os.path.exists, path)``): one round trip, cached per
    scheduler, set of workers and folder. A new worker (a nanny's
    replacement, a scaled cluster) asks again. A worker that cannot answer,
    or a cluster with no worker yet, counts as not shared (uncached): the
    mechanisms for a cluster without a shared disk work on any cluster.

    Parameters
    ----------
    client : distributed.Client or None, default=None
        The client; None means :func:`current_client`.

    Returns
    -------
    bool

    """
    client = current_client() if client is None else client
    if client is None:
        return True
    base = temporary_base()
    identity = _cluster_identity(client, base)
    if identity is None:
        return False
    with _shared_lock:
        if identity in _shared:
            return _shared[identity]
    fd, token = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=base)
    os.close(fd)
    try:
        answers = client.run(os.path.exists, token, on_error="return")
    except Exception:  # a worker left meanwhile: ask again next time
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(token)
    shared = set(answers) == set(identity[1]) and all(value is True for value in answers.values())
    if set(answers) == set(identity[1]):
        with _shared_lock:
            _shared[identity] = shared
    return shared
