"""Where daskmask computes: LocalCluster, job-queue or Kubernetes cluster, address or Client.

daskmask never hides a scheduler inside its estimators: every computation goes
through ``dask.compute``, so it runs on the distributed Client that is current
(the one created last, or entered with ``with client:``), and on dask's
threaded scheduler when there is none. :func:`connect` is the one place that
creates or joins a cluster:

* ``"local"`` (the default): the embedded LocalCluster on this machine;
* ``"slurm"``, ``"pbs"``, ``"sge"``, ``"lsf"``, ``"htcondor"``: a dask-jobqueue
  cluster whose workers are batch jobs (extra ``daskmask[jobqueue]``), set up
  by dask-jobqueue's own configuration (``jobqueue.yaml``);
* ``"kubernetes"``: a ``DaskCluster`` created through the Dask Kubernetes
  operator (extra ``daskmask[kubernetes]``), set up by dask-kubernetes'
  configuration (``kubernetes.yaml``).

A cluster that :func:`connect` starts belongs to the returned client: closing
the client stops the cluster, which cancels its batch jobs or deletes its
pods; so does the end of the process, including after SIGINT or SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import psutil
from distributed import Client

from daskmask.exceptions import ClusterConfigError, ClusterError, ClusterExtraMissingError

logger = logging.getLogger(__name__)

#: Environment variable naming a scheduler address used when none is passed.
SCHEDULER_ENV_VAR = "DASKMASK_SCHEDULER"
#: The variable dask itself reads (``scheduler-address``), set by the Dask Kubernetes
#: operator in a DaskJob's pod: used when ``DASKMASK_SCHEDULER`` is not set.
DASK_SCHEDULER_ENV_VAR = "DASK_SCHEDULER_ADDRESS"

#: Job-queue kinds and the dask-jobqueue class that starts each.
JOBQUEUE_CLASSES: dict[str, str] = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
}

#: The kinds of cluster :func:`connect` can start (``cluster=``; ``--scheduler`` of the command).
CLUSTER_KINDS: tuple[str, ...] = ("local", *JOBQUEUE_CLASSES, "kubernetes")

#: What installs the optional packages each kind needs.
EXTRAS: dict[str, str] = {
    **{kind: 'pip install "daskmask[jobqueue]"' for kind in JOBQUEUE_CLASSES},
    "kubernetes": 'pip install "daskmask[kubernetes]"',
}

#: The dashboard address when none is given (any free port if it is taken).
DEFAULT_DASHBOARD = ":8787"

# Old dask-jobqueue keyword names, passed on under their current names (no FutureWarning).
_RENAMED = {
    "job_extra": "job_extra_directives",
    "env_extra": "job_script_prologue",
    "extra": "worker_extra_args",
    "header_skip": "job_directives_skip",
}


def connect(
    scheduler: str | Client | None = None,
    *,
    cluster: str | None = None,
    jobs: int | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool | int | None = None,
    memory_limit: str | int | None = None,
    dashboard_address: str | None = DEFAULT_DASHBOARD,
    **overrides: Any,
) -> Client:
    """Return a distributed Client, starting a cluster if needed.

    Parameters
    ----------
    scheduler : str, distributed.Client or None
        An existing Client (returned as is), a scheduler address such as
        ``"tcp://10.0.0.5:8786"`` (a scheduler started by hand, by an sbatch
        script or by the Kubernetes operator), or None: then the address in
        the ``DASKMASK_SCHEDULER`` environment variable is used if set (else
        dask's own ``DASK_SCHEDULER_ADDRESS``, which the Kubernetes operator
        sets in a DaskJob's pod), else the cluster of kind ``cluster`` is
        started.
    cluster : str or None, default=None
        The kind of cluster to start when no scheduler is given, one of
        :data:`CLUSTER_KINDS`. None or ``"local"`` is the embedded
        LocalCluster; ``"slurm"``, ``"pbs"``, ``"sge"``, ``"lsf"`` and
        ``"htcondor"`` start a dask-jobqueue cluster whose workers are batch
        jobs; ``"kubernetes"`` creates a DaskCluster through the Dask operator.
    jobs : int, optional
        Batch jobs (job-queue kinds) or worker pods (``"kubernetes"``) to ask
        for now; the batch command passes the number of runs in flight.
        Default: one job, or the ``kubernetes.count.start`` setting. 0 starts
        the scheduler alone (scale it later with :func:`scale_jobs`). Ignored
        by the LocalCluster, which ``n_workers`` sizes.
    n_workers : int, optional
        Workers of the LocalCluster; default one per CPU core.
    threads_per_worker : int, optional
        Threads per LocalCluster worker, default 1. NumPy and the gzip
        decoders release the GIL, but one thread per process keeps memory
        per worker predictable.
    processes : bool or int, optional
        LocalCluster: workers as separate processes (True, the default) or
        as threads of this process (False: no start-up of processes, no
        pickling between them, the dashboard still served). Job-queue kinds:
        worker processes per job (an int; default from ``jobqueue.yaml``,
        else dask-jobqueue's choice from ``cores``).
    memory_limit : str or int, optional
        Memory limit per LocalCluster worker; default an equal share of 90 %
        of this machine's memory. Job queues take ``memory=`` (per job).
    dashboard_address : str or None, default=":8787"
        Where the scheduler serves the Dask dashboard (any free port if the
        one asked for is taken); None disables it. For job-queue kinds a
        ``scheduler-options: {dashboard_address: ...}`` setting is used
        unless another value than the default is passed here.
    **overrides
        Settings of the cluster class, each overriding the configuration:
        for job-queue kinds dask-jobqueue's keywords (``cores``, ``memory``,
        ``queue``, ``account``, ``walltime``, ``interface``,
        ``local_directory``, ``job_extra_directives``,
        ``job_script_prologue``, ``worker_extra_args``, ``log_directory``,
        ``scheduler_options``, ...; ``local-directory`` spellings are
        accepted); for ``"kubernetes"`` those of
        ``dask_kubernetes.operator.KubeCluster`` (``image``, ``namespace``,
        ``resources``, ``env``, ``custom_cluster_spec``, ...); for the
        LocalCluster those of ``distributed.LocalCluster``.

    Returns
    -------
    distributed.Client
        The client, which is also made the current one. Close it (or use it as
        a context manager) to stop a cluster that ``connect`` started: batch
        jobs are cancelled, pods deleted, LocalCluster workers stopped.

    Raises
    ------
    ClusterExtraMissingError
        dask-jobqueue or dask-kubernetes is not installed (an ``ImportError``).
    ClusterConfigError
        An unknown kind, settings the cluster class refuses, no ``cores`` or
        ``memory`` in the job-queue configuration, no kubeconfig (a ``ValueError``).
    ClusterError
        The batch system refused the jobs, or the Kubernetes API did not answer.

    """
    if isinstance(scheduler, Client):
        return scheduler
    if cluster is not None and cluster not in CLUSTER_KINDS:
        raise ClusterConfigError(
            f"cluster={cluster!r} is not a kind of cluster daskmask can start; "
            f"use one of {', '.join(map(repr, CLUSTER_KINDS))}, or pass a scheduler address."
        )
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0):
        raise ClusterConfigError(f"jobs={jobs!r}: expected a whole number >= 0 of jobs to start.")
    # An explicit kind of cluster wins over the environment's address, as any argument does.
    from_environment = (
        os.environ.get(SCHEDULER_ENV_VAR) or os.environ.get(DASK_SCHEDULER_ENV_VAR)
        if cluster is None
        else None
    )
    address = scheduler if scheduler is not None else from_environment
    if address:
        if not isinstance(address, str):
            raise TypeError(
                "scheduler must be a distributed.Client, an address string such as "
                f"'tcp://host:8786', or None; got {type(address).__name__}."
            )
        return _client_at(address)
    if cluster in JOBQUEUE_CLASSES:
        _refuse_local_options(cluster, n_workers, threads_per_worker, memory_limit)
        started = _start_jobqueue(cluster, processes, dashboard_address, overrides)
        return _own(started, jobs if jobs is not None else 1, cluster)
    if cluster == "kubernetes":
        _refuse_local_options(cluster, n_workers, threads_per_worker, memory_limit)
        if processes is not None:
            raise ClusterConfigError(
                "processes= does not apply to cluster='kubernetes': a worker pod runs one "
                "worker; set its threads in the worker command of the cluster spec."
            )
        return _own(_start_kubernetes(jobs, overrides), None, cluster)
    return _start_local(
        n_workers, threads_per_worker, processes, memory_limit, dashboard_address, overrides
    )


def _start_local(
    n_workers: int | None,
    threads_per_worker: int | None,
    processes: bool | int | None,
    memory_limit: str | int | None,
    dashboard_address: str | None,
    overrides: dict[str, Any],
) -> Client:
    """Start the embedded LocalCluster, owned by the returned client."""
    n_workers = n_workers or max(1, os.cpu_count() or 1)
    if memory_limit is None:
        memory_limit = int(0.9 * psutil.virtual_memory().total / n_workers)
    if dashboard_address is None:
        # LocalCluster serves a dashboard whatever its address: the scheduler must be told.
        scheduler_kwargs = {**overrides.pop("scheduler_kwargs", {}), "dashboard": False}
        overrides = {**overrides, "scheduler_kwargs": scheduler_kwargs}
        dashboard_address = ":0"
    forked = processes is None or bool(processes)
    if forked:
        # This process builds the extraction's graphs with the same modules, and its
        # masker with scikit-learn: import them here while it waits for the workers
        # (on the core their start leaves idle).
        threading.Thread(
            target=_import_modules, args=(_CLIENT_MODULES,), name="daskmask-imports", daemon=True
        ).start()
    # Client(**cluster_kwargs) owns the LocalCluster it starts: closing the
    # client also stops the workers.
    with warnings.catch_warnings(), _forked_workers(forked) as server:
        # Another cluster holding 8787 is normal (a notebook, a second batch): the
        # dashboard moves to a free port, and dashboard_message() prints where.
        warnings.filterwarnings(
            "ignore", message="Port .* is already in use", category=UserWarning
        )
        client = _ClusterClient(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker or 1,
            processes=forked,
            memory_limit=memory_limit,
            dashboard_address=dashboard_address,
            **overrides,
        )
    if server is not None:
        client._own_server(server)
    elif forked:
        # Spawned workers start as fresh interpreters: each would import the
        # readers and the extraction (1-2 s) when its first task arrives. Ask
        # them now, so that it happens while this process opens the run and
        # builds its graph (in a thread of each worker; not awaited here).
        client.run(_import_task_modules, wait=False)
    return client


#: Modules every extraction's tasks need in a worker (their functions are pickled by reference).
_TASK_MODULES = ("daskmask.reading._array", "daskmask.extraction._apply_mask")
#: What this process imports while the workers start: the task modules, and NiftiMasker's
#: (scikit-learn's estimators, joblib: 0.4-0.5 s). Measured on the HCP-like ``.nii`` job
#: (fit_transform + save, 2 workers): the wall 9.00 -> 8.41 s (medians of 4 pairs).
_CLIENT_MODULES = (*_TASK_MODULES, "daskmask.maskers._nifti")
#: What the fork server imports before it forks the workers: distributed (the worker's
#: own code, with dask, tornado, msgpack, cloudpickle) and the task modules (numpy,
#: nibabel, xarray, the parts of scipy the extraction uses).
_FORKSERVER_PRELOAD = ("distributed", *_TASK_MODULES)
#: One embedded cluster starts at a time: each has a fork server of its own.
_forkserver_lock = threading.Lock()


@contextlib.contextmanager
def _forked_workers(wanted: bool) -> Iterator[_ForkServer | None]:
    """Within the block, LocalCluster workers are forks of a server that did their imports.

    distributed starts each worker process as a fresh interpreter (``spawn``)
    that imports distributed, numpy and daskmask's task modules on its own:
    two interpreters importing the same modules on the two cores the client
    also needs, and two interpreter teardowns when the cluster closes. A
    ``forkserver`` imports them once, each worker is a fork of it with every
    module imported, and a fork ends without the teardown.

    Only the embedded cluster's start changes: the setting
    ``distributed.worker.multiprocessing-method`` is ``forkserver`` inside the
    block only, so a worker that a nanny restarts later (after a crash) is
    spawned, as distributed does by default. A method the user chose (other
    than the default ``spawn``), a platform without ``forkserver``, or a fork
    server already running in this process (not started here, with other
    imports and environment) leave the start as it was.

    The server is this cluster's alone: once the workers are forked (the end
    of the block), multiprocessing forgets it (the next ``forkserver`` user of
    the process starts a fresh one) and it ends with the last of its workers
    once the yielded handle is closed, after the cluster.

    Yields
    ------
    _ForkServer or None
        The server the workers are forked from, None when they are not.

    """
    import multiprocessing

    method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    if (
        not wanted
        or method != "spawn"
        or "forkserver" not in multiprocessing.get_all_start_methods()
    ):
        yield None
        return
    from multiprocessing import forkserver

    from distributed.utils import get_mp_context

    server = getattr(forkserver, "_forkserver", None)
    with _forkserver_lock:
        if server is None or getattr(server, "_forkserver_pid", 0) is not None:
            yield None  # another server of this process (or an unknown multiprocessing)
            return
        with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
            forkserver.set_forkserver_preload(list(_FORKSERVER_PRELOAD))
            # The server's environment is every worker's: what distributed sets before
            # it spawns a worker (one BLAS thread, glibc's trim threshold, the hash
            # seed) must be there before the server starts and imports numpy.
            os.environ.update(_pre_spawn_environment())
            with _environment(_server_only_environment()):
                forkserver.ensure_running()
            # distributed's first forkserver context imports numpy and pandas here and
            # names its own preload list: after the start, so that the server's imports
            # run meanwhile and the list it names (a subset of ours) applies to no server.
            get_mp_context()
            handle = _ForkServer()
            try:
                yield handle
            except BaseException:
                handle.forget(server)
                handle.close()  # no cluster to wait for: the server ends with its workers
                raise
            handle.forget(server)


def _pre_spawn_environment() -> dict[str, str]:
    """Return the variables distributed's nanny sets in its process before it spawns a worker."""
    configured = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    environment = {
        key: os.environ.get(key, str(value))
        for key, value in configured.items()
        if value is not None
    }
    # distributed fixes the workers' hash seed (consistent hashing of keys across them).
    if environment.get("PYTHONHASHSEED") in (None, "0"):
        environment["PYTHONHASHSEED"] = "6640"
    return environment


#: glibc's mmap threshold in the forked workers: blocks up to 32 MiB (the default task
#: size) come from the heap and are reused, as in the client's own process.
_WORKER_MMAP_THRESHOLD = str(32 * 2**20)


def _server_only_environment() -> dict[str, str]:
    """Return what the fork server (so each forked worker) gets beyond distributed's variables.

    distributed sets ``MALLOC_TRIM_THRESHOLD_`` in its workers, and setting it
    turns off glibc's adaptive mmap threshold: every allocation from 128 KiB up
    (each block read, cast, masked and cleaned) is then a fresh mapping whose
    pages the kernel faults in and zeroes, and unmaps on free. A threaded run's
    process raises its threshold to the block size after the first free.
    Measured on the HCP-like ``.nii`` (fit_transform + save, 2 workers): 15.9
    -> 13.5 s of CPU time, 9.9 -> 8.8 s wall, the tree's peak 1007 -> 1280 MiB
    (the workers keep freed blocks for the next task). A threshold the user set
    (environment or ``distributed.nanny.pre-spawn-environ``) is kept.
    """
    configured = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in configured:
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": _WORKER_MMAP_THRESHOLD}


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Set ``variables`` in this process's environment for the block (a child started in it)."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _ForkServer:
    """The fork server of one embedded cluster, forgotten by multiprocessing once it forked.

    A server runs until every process holding its "alive" pipe (this one and
    each worker it forked) has closed it, and it reports each worker's exit
    to that worker's nanny through a pipe of its own. Once the server has
    exited, a worker that exits after it is reported through that pipe's end
    of file alone, which comes only when the server's interpreter has torn
    down numpy, distributed and the rest (0.3-0.4 s; the nanny, and the
    cluster's close, wait for it, and take the worker for killed). This
    process therefore keeps its end of the alive pipe until the cluster has
    closed (:meth:`close`): every worker's exit is reported at once, and the
    server ends afterwards: stopped by SIGTERM once it has no worker left (its
    interpreter's teardown, 0.3-0.4 s of CPU, saves nothing, and it would hold
    this process's standard output open after this process has exited), or on
    its own when the pipe closes.
    """

    def __init__(self) -> None:
        self._alive: int | None = None
        # The server's process (a pidfd: signalled, it can never be another process).
        self._process: int | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def forget(self, server: Any) -> None:
        """Let ``server`` end with its workers and this handle; the next user starts another."""
        with server._lock:  # noqa: SLF001 (multiprocessing.forkserver's own state)
            pid, alive = server._forkserver_pid, server._forkserver_alive_fd  # noqa: SLF001
            address = server._forkserver_address  # noqa: SLF001
            for name in ("_forkserver_pid", "_forkserver_alive_fd", "_forkserver_address"):
                setattr(server, name, None)
            if hasattr(server, "_forkserver_authkey"):  # Python >= 3.14
                server._forkserver_authkey = None  # noqa: SLF001
        with self._lock:
            self._alive = alive
            if pid is not None and hasattr(os, "pidfd_open"):
                with contextlib.suppress(OSError):
                    self._process, self._pid = os.pidfd_open(pid), pid
        if isinstance(address, str) and not address.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(address)
        if pid is not None:
            threading.Thread(
                target=_reap, args=(pid,), name="daskmask-forkserver-reaper", daemon=True
            ).start()

    def close(self) -> None:
        """Let the server end: at once if it has no worker left, else after its last one."""
        with self._lock:
            alive, self._alive = self._alive, None
            process, self._process = self._process, None
        if alive is not None:
            os.close(alive)
        if process is None:
            return
        try:
            with contextlib.suppress(psutil.Error, OSError):
                if not psutil.Process(self._pid).children():
                    signal.pidfd_send_signal(process, signal.SIGTERM)
        finally:
            os.close(process)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _import_modules(modules: tuple[str, ...]) -> None:
    """Import ``modules`` (in a thread of this process; a failure shows at the real import)."""
    import importlib

    for module in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(module)


async def _import_task_modules() -> None:
    """Import :data:`_TASK_MODULES` in a worker process, off its event loop."""
    import asyncio

    await asyncio.to_thread(_import_modules, _TASK_MODULES)


def _refuse_local_options(kind: str, *values: object) -> None:
    """LocalCluster sizes mean nothing to a batch system: say what replaces them."""
    names = ("n_workers", "threads_per_worker", "memory_limit")
    given = [name for name, value in zip(names, values, strict=True) if value is not None]
    if given:
        replacement = (
            "jobs= (pods) and the worker resources of the cluster spec"
            if kind == "kubernetes"
            else "jobs=, cores=, memory= and processes= (per job), or jobqueue.yaml"
        )
        raise ClusterConfigError(
            f"{', '.join(given)} only size the LocalCluster; cluster={kind!r} takes {replacement}."
        )


def _import_extra(kind: str, module: str) -> Any:
    """Import the optional package of ``kind``, or say which extra installs it."""
    import importlib

    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ClusterExtraMissingError(
            f"cluster={kind!r} needs the package {module.split('.')[0].replace('_', '-')}, "
            f"which is not installed ({error}); install it with: {EXTRAS[kind]}"
        ) from error
    finally:
        # Importing dask_jobqueue (its runner module) makes Ctrl-C call sys.exit(),
        # which would end a batch with status 0: keep the handler this process had.
        if main_thread and signal.getsignal(signal.SIGINT) is not before and before is not None:
            signal.signal(signal.SIGINT, before)


def _restore_defaults(package: str) -> None:
    """Put back the package's default settings where the current configuration lacks them.

    dask-jobqueue and dask-kubernetes add their defaults to dask's configuration
    when first imported. If that import happens inside ``dask.config.set({...})``
    that created the section, leaving the block removes the whole section with
    the defaults, and the next cluster fails on a missing key.
    """
    import copy
    import importlib

    defaults = getattr(importlib.import_module(f"{package}.config"), "defaults", None)
    if defaults is None:  # dask-jobqueue keeps them local: read its file again
        import yaml

        folder = Path(importlib.import_module(package).__file__).parent
        defaults = yaml.safe_load((folder / "jobqueue.yaml").read_text())
    dask.config.update(dask.config.config, copy.deepcopy(defaults), priority="old")


def _python_names(overrides: dict[str, Any]) -> dict[str, Any]:
    """``local-directory`` -> ``local_directory``; deprecated dask-jobqueue names -> current."""
    named: dict[str, Any] = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        named[_RENAMED.get(name, name)] = value
    return named


def _start_jobqueue(
    kind: str,
    processes: bool | int | None,
    dashboard_address: str | None,
    overrides: dict[str, Any],
) -> Any:
    """Start the dask-jobqueue cluster of ``kind`` (its scheduler only: no job yet)."""
    module = _import_extra(kind, "dask_jobqueue")
    _restore_defaults("dask_jobqueue")
    cluster_class = getattr(module, JOBQUEUE_CLASSES[kind])
    options = _python_names(overrides)
    if processes is not None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ClusterConfigError(
                f"processes={processes!r}: cluster={kind!r} takes the number of worker "
                "processes per job (a whole number >= 1)."
            )
        options["processes"] = processes
    # dask-jobqueue reads scheduler options from its configuration only when none
    # are passed: merge them so that a dashboard address does not drop the others.
    scheduler_options = {
        **(dask.config.get(f"jobqueue.{kind}.scheduler-options", None) or {}),
        **(options.pop("scheduler_options", None) or {}),
    }
    if dashboard_address is None:
        # The scheduler's HTTP server still runs (health, metrics): on any free port.
        scheduler_options["dashboard"] = False
        scheduler_options["dashboard_address"] = ":0"
    elif dashboard_address != DEFAULT_DASHBOARD or "dashboard_address" not in scheduler_options:
        scheduler_options["dashboard_address"] = dashboard_address
    try:
        return cluster_class(scheduler_options=scheduler_options, **options)
    except (TypeError, ValueError) as error:
        text = str(error)
        if "cores and memory" in text:
            raise ClusterConfigError(
                f"cluster={kind!r} needs the cores and memory of one job: set "
                f"jobqueue.{kind}.cores and jobqueue.{kind}.memory in a jobqueue.yaml "
                "(~/.config/dask/, or a folder named by DASK_CONFIG; example: "
                "deploy/slurm/jobqueue.yaml), or pass cores= and memory=."
            ) from error
        raise ClusterConfigError(
            f"{JOBQUEUE_CLASSES[kind]} refused these settings ({text}); check the arguments "
            f"and the jobqueue.{kind} section of jobqueue.yaml."
        ) from error


def _kubeconfig_or_fail() -> None:
    """Fail early, with the fix, when no Kubernetes API server is configured."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return  # inside a pod: the service account is the configuration
    named = [Path(p) for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    candidates = named or [Path.home() / ".kube" / "config"]
    if any(path.is_file() for path in candidates):
        return
    where = "$KUBECONFIG (" + ", ".join(map(str, named)) + ")" if named else str(candidates[0])
    raise ClusterConfigError(
        f"cluster='kubernetes' needs access to a Kubernetes API server, and {where} names no "
        "kubeconfig file. Fix: get the cluster's kubeconfig (e.g. `kubectl config view "
        "--raw > ~/.kube/config` where kubectl works, or your provider's "
        "`... get-credentials` command) and set KUBECONFIG to it; the Dask operator must be "
        "installed in the cluster (deploy/kubernetes/README.md)."
    )


def _start_kubernetes(jobs: int | None, overrides: dict[str, Any]) -> Any:
    """Create a DaskCluster through the Dask Kubernetes operator."""
    operator = _import_extra("kubernetes", "dask_kubernetes.operator")
    _restore_defaults("dask_kubernetes")
    _kubeconfig_or_fail()
    options = _python_names(overrides)
    if jobs is not None:
        options["n_workers"] = jobs
    # A cluster whose start fails is forgotten: dask-kubernetes would otherwise try
    # to delete it again at exit, and print that failure too.
    before = set(operator.KubeCluster._instances)
    try:
        return operator.KubeCluster(**options)
    except (TypeError, ValueError) as error:
        _forget_kube_clusters(operator, before)
        raise ClusterConfigError(
            f"KubeCluster refused these settings or credentials ({error}); check the "
            "arguments, the kubernetes section of the dask configuration and the kubeconfig."
        ) from error
    except Exception as error:
        _forget_kube_clusters(operator, before)
        raise ClusterError(
            "could not create the DaskCluster through the Kubernetes API "
            f"({type(error).__name__}: {error}). Check that `kubectl get daskclusters` works "
            "from this machine (API server reachable, operator installed: "
            "deploy/kubernetes/README.md)."
        ) from error


def _forget_kube_clusters(operator: Any, before: set[Any]) -> None:
    for instance in set(operator.KubeCluster._instances) - before:
        operator.KubeCluster._instances.discard(instance)


# --- the returned client owns the cluster ------------------------------------------------------


def _client_at(address: str) -> Client:
    """Connect a Client to the scheduler at ``address``; a failed attempt leaves nothing behind.

    distributed's ``Client(address)`` makes itself the process's default client before it
    connects; when the connection fails it stays the default, and every later computation
    in the process (a notebook's next cell) goes to a scheduler that does not exist.
    """
    previous = _default_client()
    try:
        return Client(address)
    except BaseException:
        leftover = _default_client()
        if leftover is not None and leftover is not previous:
            leftover.close()
        raise


def _default_client() -> Client | None:
    """Return distributed's default Client of this process, or None."""
    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


class _ClusterClient(Client):
    """A Client that, once closed, stops what :func:`connect` started for it.

    A job-queue or Kubernetes cluster (cancelling jobs, deleting pods), or the
    fork server of the embedded LocalCluster's workers (see :class:`_ForkServer`;
    that cluster itself is the client's own and closes with it).
    """

    _daskmask_cluster: Any = None
    _daskmask_server: _ForkServer | None = None

    def _own_server(self, server: _ForkServer) -> None:
        """Close ``server`` after this client's cluster (see :class:`_ForkServer`)."""
        self._daskmask_server = server
        _LOCAL_CLIENTS.add(self)
        # Closed when this client is collected unclosed too; at the end of the process
        # _close_local_clients closes the client first (not this finalizer: too early).
        weakref.finalize(self, server.close).atexit = False

    def close(self, timeout: Any = None) -> Any:
        """Close the client, then its cluster, then let the fork server end."""
        cluster = self._daskmask_cluster
        try:
            return super().close() if timeout is None else super().close(timeout=timeout)
        finally:
            if cluster is not None:
                self._daskmask_cluster = None
                _stop(cluster, timeout=timeout)
            if self._daskmask_server is not None:
                self._daskmask_server.close()


#: Clients of embedded clusters with a fork server, not closed yet.
_LOCAL_CLIENTS: weakref.WeakSet[_ClusterClient] = weakref.WeakSet()


@atexit.register
def _close_local_clients() -> None:
    """At exit, close the embedded clusters, then their fork servers.

    distributed's own exit hooks close the cluster but not this client, so
    the fork server would outlive this process. Registered after distributed
    was imported, this runs before them.
    """
    for client in list(_LOCAL_CLIENTS):
        with contextlib.suppress(Exception):
            client.close(timeout=10)


#: Clusters started by :func:`connect` and not closed yet: stopped at exit and on SIGTERM.
_RUNNING: weakref.WeakSet[Any] = weakref.WeakSet()
_exit_hooks_installed = False


def _own(cluster: Any, jobs: int | None, kind: str) -> Client:
    """Wrap ``cluster`` in a client that owns it, ask for ``jobs`` jobs, log the dashboard."""
    _install_exit_hooks()
    _RUNNING.add(cluster)
    try:
        client = _ClusterClient(cluster)
        client._daskmask_cluster = cluster
        if jobs:
            scale_jobs(client, jobs)
    except BaseException:
        _stop(cluster, timeout=10)
        raise
    link = dashboard_link(client)
    logger.info("%s cluster started; %s", kind, dashboard_message(client) or "no dashboard")
    if link is None:
        logger.debug("the %s scheduler serves no dashboard", kind)
    return client


def scale_jobs(client: Client, jobs: int) -> None:
    """Ask the cluster ``client`` owns for ``jobs`` jobs (or pods) in all.

    Waits until the batch system accepted the jobs (not until they run: a
    queue may hold them for hours), so that a refused job script (an unknown
    queue or account, a walltime over the limit) raises here instead of
    leaving a computation waiting for workers that never come.

    Parameters
    ----------
    client : distributed.Client
        A client returned by :func:`connect` for a job-queue or Kubernetes kind.
    jobs : int
        Jobs wanted; fewer than now cancels the surplus.

    Raises
    ------
    ClusterError
        The client owns no cluster that scales by jobs, or the batch system
        refused the job submission (the message quotes its answer).

    """
    cluster = getattr(client, "_daskmask_cluster", None)
    if cluster is None or not hasattr(cluster, "scale"):
        raise ClusterError(
            "scale_jobs() needs a client returned by connect(cluster=...) for a job-queue or "
            "Kubernetes cluster; this client does not own such a cluster."
        )
    if hasattr(cluster, "job_cls"):
        # SpecCluster submits in the background and only logs a refusal (through
        # tornado's logger): catch what is logged while waiting for the submissions.
        refusals = _ErrorCatcher()
        tornado_log = logging.getLogger("tornado.application")
        tornado_log.addHandler(refusals)
        propagate, tornado_log.propagate = tornado_log.propagate, False  # reported below
        try:
            cluster.scale(jobs=jobs)
            cluster.sync(cluster._correct_state)
        except (RuntimeError, OSError) as error:
            refusals.errors.append(error)
        finally:
            tornado_log.removeHandler(refusals)
            tornado_log.propagate = propagate
        unsubmitted = [
            name for name, job in cluster.workers.items() if not getattr(job, "job_id", 0)
        ]
        for name in unsubmitted:
            # A job that was never submitted is marked failed and forgotten: SpecCluster
            # refuses to close while it holds a job still "created".
            from distributed.core import Status

            cluster.workers.pop(name).status = Status.failed
            cluster.worker_spec.pop(name, None)
        if refusals.errors or unsubmitted:
            reason = "; ".join(map(_one_line, refusals.errors)) or "no job id was returned"
            submit = getattr(cluster.job_cls, "submit_command", "the submit command")
            raise ClusterError(
                f"`{submit}` did not accept the dask worker job ({reason}). Check that this "
                "machine can submit jobs, and the queue, account, walltime, cores and memory "
                "in the arguments or jobqueue.yaml; `print(client.cluster.job_script())` "
                "shows the job script."
            )
    else:
        cluster.scale(jobs)


class _ErrorCatcher(logging.Handler):
    """Keep the exceptions of the error records it sees."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def _one_line(error: BaseException) -> str:
    """``sbatch: error: invalid partition`` rather than a multi-line dump."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:500]}"


def _stop(cluster: Any, timeout: Any = None) -> None:
    """Close ``cluster``; cancel by hand any batch job it still lists (the last resort)."""
    _RUNNING.discard(cluster)
    try:
        with contextlib.suppress(Exception):
            cluster.close(timeout=timeout if isinstance(timeout, int | float) else 30)
    finally:
        _cancel_left_jobs(cluster)


def _cancel_left_jobs(cluster: Any) -> None:
    """Cancel, with the batch system's own command, the jobs a failed close left behind."""
    for job in list(getattr(cluster, "workers", {}).values()):
        job_id = getattr(job, "job_id", None)
        command = getattr(job, "cancel_command", None)
        if job_id and command:
            subprocess.run(
                [*shlex.split(command), str(job_id)], capture_output=True, timeout=30, check=False
            )


def _stop_all_at_exit() -> None:
    for cluster in list(_RUNNING):
        _stop(cluster, timeout=10)


def _terminate(number: int, frame: Any) -> None:
    """SIGTERM: unwind as an exit does, so that ``with`` blocks and atexit stop the cluster."""
    # A second SIGTERM while the jobs are being cancelled ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + number)


def _install_exit_hooks() -> None:
    """Stop started clusters at exit; make SIGTERM an exit (its default kills without cleanup).

    SIGINT already raises KeyboardInterrupt, which unwinds the same way. A
    SIGTERM handler the program installed itself is left alone.
    """
    global _exit_hooks_installed
    if _exit_hooks_installed:
        return
    _exit_hooks_installed = True
    atexit.register(_stop_all_at_exit)
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _terminate)


# --- the dashboard -----------------------------------------------------------------------------


def dashboard_link(client: Client) -> str | None:
    """Return the URL of the Dask dashboard of ``client``'s scheduler (None without one).

    For a Kubernetes cluster this is the address dask-kubernetes port-forwarded
    to this machine (or the scheduler service's address inside the cluster).
    """
    try:
        link = client.dashboard_link
    except (AttributeError, KeyError, TypeError, OSError):
        return None
    return link or None


def dashboard_message(client: Client) -> str | None:
    """One line to print or log: the dashboard link and, on a cluster, how to reach it.

    A job-queue scheduler runs on this machine (often an HPC login node that a
    laptop cannot reach directly): the line adds the SSH tunnel to open. On
    Kubernetes it adds the ``kubectl port-forward`` that reaches the scheduler
    service from outside the cluster.

    Returns
    -------
    str or None
        ``"Dask dashboard: http://..."`` with the hint, None without a dashboard.

    """
    link = dashboard_link(client)
    if link is None:
        return None
    cluster = getattr(client, "_daskmask_cluster", None) or getattr(client, "cluster", None)
    module = type(cluster).__module__ if cluster is not None else ""
    message = f"Dask dashboard: {link}"
    if module.startswith("dask_jobqueue"):
        host, port = _host_port(link)
        message += (
            f" (from your own machine: ssh -N -L {port}:{host}:{port} "
            f"{socket.getfqdn()}, then open http://localhost:{port}/status)"
        )
    elif module.startswith("dask_kubernetes"):
        name = getattr(cluster, "name", "CLUSTER")
        message += (
            f" (from outside the cluster: kubectl port-forward service/{name}-scheduler "
            "8787:8787, then open http://localhost:8787/status)"
        )
    return message


def _host_port(link: str) -> tuple[str, str]:
    """``http://10.0.0.5:8787/status`` -> ``("10.0.0.5", "8787")``."""
    netloc = link.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = netloc.rpartition(":")
    return (host or netloc), (port or "8787")
