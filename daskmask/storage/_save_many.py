"""Write many results stores in one dask computation.

Each store goes through the steps of :func:`~daskmask.storage.save` (plan,
begin, chunk writes, commit or abort: :mod:`daskmask.storage._write`); the
chunk writes of every store form one graph, so the scheduler runs the stores
side by side across its workers, and each store is committed as soon as its
own chunks are written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dask
import xarray as xr
from dask.callbacks import Callback

from daskmask._scratch import current_client
from daskmask.storage._write import (
    PendingStore,
    StorePlan,
    abort_store,
    begin_store,
    commit_store,
    plan_store,
    store_errors,
)

__all__ = ["save_many"]

#: What one store of :func:`save_many` gave: its path or URL, or the error it failed with.
StoreOutcome = Path | str | BaseException


def save_many(
    signals_list: Sequence[xr.DataArray],
    paths: Sequence[str | os.PathLike[str]],
    storage_options: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    compressor: Any = "default",
    on_error: Literal["raise", "return"] = "raise",
) -> list[StoreOutcome]:
    """Write several signals to several results stores in one dask computation.

    The contract of each store is :func:`daskmask.save`'s: the same content,
    checksums and manifest, complete and atomic (a local store appears at its
    path only once complete; an object store says ``complete: true`` only in
    its root, written last). What ``save_many`` adds is that the chunk writes
    of every store are computed together, in one graph on the current
    scheduler, so that runs proceed in parallel across the workers; each
    store is committed as soon as its own chunks are written, without waiting
    for the others.

    Parameters
    ----------
    signals_list : sequence of xarray.DataArray
        One signals array per store, as :meth:`daskmask.NiftiMasker.transform`
        or :meth:`daskmask.MultiNiftiMasker.transform` return them (lazy is
        best: a store's data are computed by the workers that write it).
    paths : sequence of str or os.PathLike
        One local folder or object-store URL per signals array, all distinct.
    storage_options : mapping, optional
        File-system options for the URLs (see :func:`daskmask.save`).
    overwrite : bool, default=False
        Replace existing stores (see :func:`daskmask.save`).
    compressor : "default", None, or zarr codec(s)
        Codecs of every store (see :func:`daskmask.save`).
    on_error : {"raise", "return"}, default="raise"
        ``"raise"``: every store is checked before anything is written (a
        bad input or an existing store raises at once, nothing written);
        after the computation, the first failure is raised. ``"return"``:
        nothing is raised for a store; its slot in the returned list holds
        the exception instead of the path.

    Returns
    -------
    list of pathlib.Path, str or BaseException
        In the order of ``paths``: the absolute path of a local store or the
        URL of an object-store one (as :func:`daskmask.save` returns), or,
        with ``on_error="return"``, the exception of a store that failed.

    Raises
    ------
    TypeError
        ``signals_list`` and ``paths`` are not sequences of the same length,
        or ``on_error`` is not one of its values.
    ValueError
        Two paths name the same store.
    StoreExistsError, SignalsLayoutError, daskmask.exceptions.StorageError
        As :func:`daskmask.save` (only with ``on_error="raise"``).

    Notes
    -----
    A store that fails (its data cannot be computed, its target cannot be
    written) is removed as :func:`daskmask.save` removes a failed store: it
    is left absent (local) or refused as incomplete (object store), never
    complete with missing data. The stores committed before or after it stay
    complete.

    On a ``distributed`` cluster the other stores go on when one fails. On
    the local schedulers (threads, processes, synchronous), dask stops the
    whole computation at the first failing task: the stores already
    committed stay complete, and those not finished are removed (absent),
    and, with ``on_error="return"``, hold the error that stopped them.

    Memory: the graph holds every store's work, and the scheduler decides
    how many run at a time. A caller with thousands of runs bounds the runs in
    flight by calling ``save_many`` on batches.

    """
    signals_list, paths = _check_arguments(signals_list, paths, on_error)
    outcomes: list[StoreOutcome | None] = [None] * len(paths)

    def plan(index: int) -> StorePlan:
        return plan_store(
            signals_list[index],
            paths[index],
            storage_options,
            overwrite=overwrite,
            compressor=compressor,
        )

    plans: dict[int, StorePlan] = {}
    for index in range(len(paths)):
        try:
            plans[index] = plan(index)
        except Exception as error:
            if on_error == "raise":
                raise
            outcomes[index] = error
    _check_distinct_locations(plans)

    pending: dict[int, PendingStore] = {}
    try:
        for index, store_plan in plans.items():
            try:
                pending[index] = begin_store(store_plan)
            except Exception as error:
                outcomes[index] = error
        _compute_and_commit(pending, outcomes)
    except BaseException as error:
        # interrupted (KeyboardInterrupt, a scheduler failure): nothing left half-done
        for index, store in pending.items():
            if outcomes[index] is None:
                abort_store(store, error)
        raise
    if on_error == "raise":
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    return [outcome for outcome in outcomes if outcome is not None]  # all set by now


def _check_arguments(
    signals_list: Any, paths: Any, on_error: Any
) -> tuple[list[xr.DataArray], list[Any]]:
    """Refuse arguments that are not two sequences of the same length."""
    if on_error not in ("raise", "return"):
        raise TypeError(f"on_error must be 'raise' or 'return', got {on_error!r}.")
    for name, value in (("signals_list", signals_list), ("paths", paths)):
        if isinstance(value, (str, bytes, os.PathLike, xr.DataArray)) or not isinstance(
            value, Sequence
        ):
            raise TypeError(
                f"save_many takes a list of signals and a list of paths; {name} is a "
                f"{type(value).__name__}. For one store, use daskmask.save."
            )
    if len(signals_list) != len(paths):
        raise TypeError(
            f"save_many needs one path per signals array: got {len(signals_list)} signals "
            f"and {len(paths)} paths."
        )
    return list(signals_list), list(paths)


def _check_distinct_locations(plans: Mapping[int, StorePlan]) -> None:
    """Refuse two stores at one place (before anything is written)."""
    seen: dict[str, int] = {}
    for index, store_plan in plans.items():
        url = store_plan.location.url
        if url in seen:
            raise ValueError(
                f"paths[{seen[url]}] and paths[{index}] are the same store ({url}); give "
                "each signals array its own path."
            )
        seen[url] = index


def _compute_and_commit(
    pending: Mapping[int, PendingStore], outcomes: list[StoreOutcome | None]
) -> None:
    """Compute every store's chunk writes together; commit each store once its are done."""
    if not pending:
        return
    client = current_client()
    if client is not None:
        _on_cluster(client, pending, outcomes)
    else:
        _on_local_scheduler(pending, outcomes)


def _finish(store: PendingStore, error: BaseException | None) -> StoreOutcome:
    """Commit ``store`` (its writes succeeded) or abort it; return its outcome."""
    if error is not None:
        abort_store(store, error)
        return error
    try:
        return commit_store(store)
    except Exception as commit_error:  # commit_store aborted it already
        return commit_error


def _on_cluster(
    client: Any, pending: Mapping[int, PendingStore], outcomes: list[StoreOutcome | None]
) -> None:
    """One ``client.compute`` of every write; stores commit as their futures finish."""
    from distributed import as_completed

    owners: list[int] = []
    collections = []
    for index, store in pending.items():
        owners.extend([index] * len(store.writes))
        collections.extend(store.writes)
    futures = client.compute(collections)
    remaining = {index: len(store.writes) for index, store in pending.items()}
    by_future = {future.key: owner for future, owner in zip(futures, owners, strict=True)}
    failed: dict[int, BaseException] = {}
    for index in [i for i, count in remaining.items() if count == 0]:
        outcomes[index] = _finish(pending[index], None)
    for future in as_completed(futures):
        index = by_future[future.key]
        if outcomes[index] is not None:
            continue
        if future.status != "finished" and index not in failed:
            failed[index] = _future_error(future, pending[index])
            for other, owner in zip(futures, owners, strict=True):
                if owner == index and not other.done():
                    other.cancel()  # the store is lost: free its workers
        remaining[index] -= 1
        if remaining[index] == 0 or index in failed:
            outcomes[index] = _finish(pending[index], failed.get(index))


def _future_error(future: Any, store: PendingStore) -> BaseException:
    """Return the (typed) error of a failed or cancelled future."""
    try:
        with store_errors(store.plan.location):
            future.result()
    except BaseException as error:
        return error
    return RuntimeError(f"The writes of {store.plan.location.url} did not finish.")


def _on_local_scheduler(
    pending: Mapping[int, PendingStore], outcomes: list[StoreOutcome | None]
) -> None:
    """One ``dask.compute`` of every write; a store commits when its last chunk is written.

    The local schedulers call back in this process after every task: the
    store whose last output key just finished is committed there and then.
    """
    remaining: dict[Any, int] = {}
    owner_of: dict[Any, int] = {}
    for index, store in pending.items():
        keys = {key for write in store.writes for key in _flat_keys(write)}
        remaining[index] = len(keys)
        owner_of.update(dict.fromkeys(keys, index))
        if not keys:
            outcomes[index] = _finish(store, None)

    def task_done(key: Any, *_: Any) -> None:
        index = owner_of.get(key)
        if index is None:
            return
        remaining[index] -= 1
        if remaining[index] == 0:
            outcomes[index] = _finish(pending[index], None)

    collections = [write for store in pending.values() for write in store.writes]
    try:
        with Callback(posttask=task_done):
            dask.compute(*collections)
    except Exception as error:
        for index, store in pending.items():
            if outcomes[index] is None:
                outcomes[index] = _finish(store, _typed(error, store))
        return
    for index, store in pending.items():
        if outcomes[index] is None:  # a key the callback did not see (never expected)
            outcomes[index] = _finish(store, None)


def _typed(error: Exception, store: PendingStore) -> BaseException:
    """Return ``error`` as the typed storage error :func:`daskmask.save` would raise."""
    try:
        with store_errors(store.plan.location):
            raise error
    except BaseException as typed:
        return typed


def _flat_keys(collection: Any) -> list[Any]:
    """Return the output keys of a dask collection (nested lists flattened)."""
    keys = collection.__dask_keys__()
    flat: list[Any] = []
    stack = [keys]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            flat.append(item)
    return flat
