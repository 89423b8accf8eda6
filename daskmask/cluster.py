"""Where daskmask computes: the embedded LocalCluster, a scheduler address or a Client.

daskmask never hides a scheduler inside its estimators: every computation goes
through ``dask.compute``, so it runs on the distributed Client that is current
(the one created last, or entered with ``with client:``), and on dask's
threaded scheduler when there is none. :func:`connect` is the one place that
creates or joins a cluster.
"""

from __future__ import annotations

import os

import psutil
from distributed import Client

#: Environment variable naming a scheduler address used when none is passed.
SCHEDULER_ENV_VAR = "DASKMASK_SCHEDULER"

#: The kinds of cluster :func:`connect` can start (``cluster=``; ``--scheduler`` of the command).
CLUSTER_KINDS: tuple[str, ...] = ("local",)


def connect(
    scheduler: str | Client | None = None,
    *,
    cluster: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    processes: bool = True,
    memory_limit: str | int | None = None,
    dashboard_address: str | None = ":8787",
) -> Client:
    """Return a distributed Client, starting the embedded LocalCluster if needed.

    Parameters
    ----------
    scheduler : str, distributed.Client or None
        An existing Client (returned as is), a scheduler address such as
        ``"tcp://10.0.0.5:8786"`` (a Slurm, PBS, SGE or Kubernetes cluster), or
        None: then the address in the ``DASKMASK_SCHEDULER`` environment
        variable is used if set, else a LocalCluster is started on this machine.
    cluster : str or None, default=None
        The kind of cluster to start when no scheduler is given, one of
        :data:`CLUSTER_KINDS`; None or ``"local"`` is the embedded LocalCluster.
    n_workers : int, optional
        Workers of the LocalCluster; default one per CPU core.
    threads_per_worker : int, default=1
        Threads per LocalCluster worker. NumPy and the gzip decoders release
        the GIL, but one thread per process keeps memory per worker predictable.
    processes : bool, default=True
        Workers as separate processes (True) or as threads of this process
        (False: no start-up of processes, no pickling between them, the
        dashboard still served; good for small runs in a notebook).
    memory_limit : str or int, optional
        Memory limit per LocalCluster worker; default an equal share of 90 %
        of this machine's memory.
    dashboard_address : str or None, default=":8787"
        Where the LocalCluster serves the Dask dashboard (any free port if
        8787 is taken); None disables it.

    Returns
    -------
    distributed.Client
        The client, which is also made the current one. Close it (or use it as
        a context manager) to stop an embedded LocalCluster.

    """
    if isinstance(scheduler, Client):
        return scheduler
    if cluster is not None and cluster not in CLUSTER_KINDS:
        raise ValueError(
            f"cluster={cluster!r} is not a kind of cluster daskmask can start; "
            f"use one of {', '.join(map(repr, CLUSTER_KINDS))}, or pass a scheduler address."
        )
    address = scheduler if scheduler is not None else os.environ.get(SCHEDULER_ENV_VAR)
    if address:
        if not isinstance(address, str):
            raise TypeError(
                "scheduler must be a distributed.Client, an address string such as "
                f"'tcp://host:8786', or None; got {type(address).__name__}."
            )
        return Client(address)
    n_workers = n_workers or max(1, os.cpu_count() or 1)
    if memory_limit is None:
        memory_limit = int(0.9 * psutil.virtual_memory().total / n_workers)
    # Client(**cluster_kwargs) owns the LocalCluster it starts: closing the
    # client also stops the workers.
    return Client(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        memory_limit=memory_limit,
        dashboard_address=dashboard_address,
    )
