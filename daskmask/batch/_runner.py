"""The batch: many runs masked into one results store each, resumable, failures kept apart.

A batch is a list of :class:`RunPlan` (what to mask, how, where the store
goes). :func:`prepare` describes each run by its *recipe* (the identity of
every input file and every parameter) and decides, with the pure function
:func:`decide`, whether the store already there can be kept. :func:`execute`
masks the others concurrently, a bounded number at a time, each run doing
``fit`` + ``transform`` + :func:`daskmask.save` on the current dask scheduler,
so that its store is written as soon as the run is done. A run that fails is
recorded with its error; the others go on.

Why the bound: every run in flight holds its graph in the client and its
chunks on the workers; with at most ``runs_in_flight`` runs at a time, a
worker's memory depends on that bound and the block size, never on the
number of runs in the batch.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daskmask._fs import locate
from daskmask._json import json_safe
from daskmask._memory import release_free_memory
from daskmask.batch._progress import BatchProgress
from daskmask.batch._summary import RunOutcome, write_summary
from daskmask.interfaces.fmriprep import load_confounds_strategy
from daskmask.maskers._core import NiftiMaskerCore
from daskmask.reading import open_nifti
from daskmask.storage import (
    CorruptStoreError,
    IncompleteStoreError,
    NotAStoreError,
    StoreNotFoundError,
    open_results,
    save,
)

#: Key of the recipe in a store's ``provenance`` attribute.
RECIPE_KEY = "batch"

#: Version of the recipe's layout: a store written with another one is redone.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class RunPlan:
    """One run of a batch: its input, its store, and how it is masked.

    Attributes
    ----------
    input : str
        The 4D BOLD run: a local path or a URL.
    output : str
        Its results store: a local path or a URL.
    params : mapping
        NiftiMasker parameters. ``t_r`` None means: the sidecar's
        ``RepetitionTime`` (``sidecar_t_r``), else the header's.
    label : str
        A short name for the progress display.
    confounds : str or None
        A confounds file (TSV, CSV) to regress out, path or URL.
    confounds_strategy : str or None
        An fMRIPrep denoising preset (``simple``, ``scrubbing``, ``compcor``,
        ``ica_aroma``) loaded by
        :func:`daskmask.interfaces.fmriprep.load_confounds_strategy`.
    confounds_args : mapping
        Extra arguments of ``load_confounds_strategy``.
    mask : str
        How the mask was chosen (``fmriprep``, a strategy, a path): recorded.
    sidecar_t_r : float or None
        The sidecar's RepetitionTime in seconds.
    companions : sequence of str
        Other files the result depends on (confounds TSV and JSON, sidecar):
        their identity is part of the recipe.
    problem : str or None
        Why this run cannot be masked, found while planning (a missing brain
        mask): the run is recorded as failed with it and the others go on.

    """

    input: str
    output: str
    params: Mapping[str, Any]
    label: str = ""
    confounds: str | None = None
    confounds_strategy: str | None = None
    confounds_args: Mapping[str, Any] = field(default_factory=dict)
    mask: str = ""
    sidecar_t_r: float | None = None
    companions: Sequence[str] = ()
    problem: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A run with its recipe and what to do about it."""

    plan: RunPlan
    recipe: dict[str, Any] | None
    action: str  # "run", "skip" or "fail"
    reason: str
    existing: Any = None  # the Results of a store kept


def file_identity(path: str) -> dict[str, Any]:
    """Size and version of a file or object (mtime and inode, or ETag / version id)."""
    stat = locate(path).stat()
    return {"size": int(stat.size), "version": str(stat.version)}


def recipe(plan: RunPlan) -> dict[str, Any]:
    """Return what a run's result depends on: input identities and every parameter.

    Raises the storage layer's typed errors when an input is missing.
    """
    files = [plan.input, plan.confounds, *plan.companions]
    mask_img = plan.params.get("mask_img")
    if isinstance(mask_img, str):
        files.append(mask_img)
    identities = {path: file_identity(path) for path in files if path}
    return _normal(
        {
            "recipe_version": RECIPE_VERSION,
            "input": plan.input,
            "files": identities,
            "masker_params": dict(plan.params),
            "confounds": plan.confounds,
            "confounds_strategy": plan.confounds_strategy,
            "confounds_args": dict(plan.confounds_args),
            "mask": plan.mask,
            "sidecar_t_r": plan.sidecar_t_r,
        }
    )


def _normal(value: Any) -> Any:
    """JSON-normal form: what the store gives back after a round trip, so == compares."""
    return json.loads(json.dumps(json_safe(value), sort_keys=True))


def decide(
    current: Mapping[str, Any], stored: Mapping[str, Any] | None, *, force: bool = False
) -> tuple[str, str]:
    """Decide whether a run is masked again: ``("run" | "skip", why)``.

    Parameters
    ----------
    current : mapping
        The run's recipe now (:func:`recipe`).
    stored : mapping or None
        The recipe recorded in its complete store, or None when there is no
        complete store (missing, incomplete, corrupt, written otherwise).
    force : bool
        Redo every run.

    """
    if force:
        return "run", "forced"
    if stored is None:
        return "run", "no complete store"
    stored = _normal(stored)
    if stored == current:
        return "skip", "complete store with the same inputs and parameters"
    if stored.get("files") != current.get("files") or stored.get("input") != current.get("input"):
        return "run", "the input changed"
    return "run", "the parameters changed"


def stored_recipe(output: str) -> tuple[dict[str, Any] | None, Any]:
    """Return the recipe of the complete store at ``output`` and the opened store, if any."""
    try:
        results = open_results(output)
    except (StoreNotFoundError, IncompleteStoreError, CorruptStoreError, NotAStoreError):
        return None, None
    return results.provenance.get(RECIPE_KEY), results


def describe_error(error: BaseException) -> str:
    """``Type: message`` on one line, for the summary."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def prepare(plans: Sequence[RunPlan], *, force: bool = False) -> list[Prepared]:
    """Compute each run's recipe and decide what to do, reading existing stores concurrently."""

    def one(plan: RunPlan) -> Prepared:
        if plan.problem is not None:
            return Prepared(plan, None, "fail", plan.problem)
        try:
            current = recipe(plan)
        except Exception as error:  # noqa: BLE001 - a missing input fails this run only
            return Prepared(plan, None, "fail", describe_error(error))
        stored, results = (None, None) if force else stored_recipe(plan.output)
        action, reason = decide(current, stored, force=force)
        return Prepared(plan, current, action, reason, results if action == "skip" else None)

    # stat calls and store heads are round trips on an object store: overlap them
    with cf.ThreadPoolExecutor(max_workers=min(8, max(1, len(plans)))) as pool:
        return list(pool.map(one, plans))


def _ensure_parent(output: str) -> None:
    """Create the folder of a local store (an object store has no folders)."""
    location = locate(output)
    if location.is_local:
        os.makedirs(os.path.dirname(location.path.rstrip(os.sep)), exist_ok=True)


def mask_run(plan: RunPlan, current: Mapping[str, Any]) -> tuple[int, int]:
    """Mask one run and write its store; return ``(n_voxels, n_timepoints)``."""
    params = dict(plan.params)
    run = open_nifti(plan.input)
    if params.get("t_r") is None:
        params["t_r"] = plan.sidecar_t_r if plan.sidecar_t_r is not None else run.attrs.get("t_r")
    sample_mask = None
    # a confounds URL is read through daskmask._fs like any table
    confounds = plan.confounds
    if plan.confounds_strategy is not None:
        confounds, sample_mask = load_confounds_strategy(
            plan.input, denoise_strategy=plan.confounds_strategy, **plan.confounds_args
        )
    # NiftiMasker's work without its scikit-learn estimator: the batch never imports sklearn
    masker = NiftiMaskerCore(**params)
    signals = masker.fit_transform(run, confounds=confounds, sample_mask=sample_mask)
    # the store names its input and everything it was made with (resume compares it)
    signals.attrs["provenance"] = {
        **signals.attrs.get("provenance", {}),
        "input": plan.input,
        RECIPE_KEY: dict(current),
    }
    _ensure_parent(plan.output)
    save(signals, plan.output, overwrite=True)
    n_timepoints = int(signals.shape[0]) if signals.ndim == 2 else 1
    return int(signals.shape[-1]), n_timepoints


class BatchInterrupted(Exception):
    """The batch was stopped (SIGINT, SIGTERM); ``outcomes`` holds every run's row."""

    def __init__(self, outcomes: list[RunOutcome]) -> None:
        super().__init__("interrupted")
        self.outcomes = outcomes


def _skipped(item: Prepared) -> RunOutcome:
    signals = item.existing.signals if item.existing is not None else None
    return RunOutcome(
        item.plan.input,
        item.plan.output,
        "skipped",
        n_voxels=int(signals.shape[-1]) if signals is not None else None,
        n_timepoints=int(signals.shape[0]) if signals is not None and signals.ndim == 2 else None,
    )


def execute(
    prepared: Sequence[Prepared],
    output_dir: str,
    *,
    runs_in_flight: int = 1,
    progress: BatchProgress | None = None,
    on_interrupt: Callable[[], None] | None = None,
    grace_seconds: float = 10.0,
) -> list[RunOutcome]:
    """Mask the runs that need it, at most ``runs_in_flight`` at a time; write the summary.

    Parameters
    ----------
    prepared : sequence of Prepared
        The runs and their decisions (:func:`prepare`).
    output_dir : str
        Where ``daskmask_summary.tsv`` goes, rewritten as each run finishes.
    runs_in_flight : int
        How many runs are masked at the same time.
    progress : BatchProgress, optional
        The display to update.
    on_interrupt : callable, optional
        Called on SIGINT (KeyboardInterrupt) once no new run will start, to
        stop the computations under way (close the dask client).
    grace_seconds : float
        How long, after an interrupt, to wait for the runs under way to stop.

    Returns
    -------
    list of RunOutcome
        One per run, in the order of ``prepared``.

    Raises
    ------
    BatchInterrupted
        On KeyboardInterrupt, after the summary was written (runs that did not
        finish are recorded as failed, "interrupted").

    """
    outcomes: list[RunOutcome | None] = [None] * len(prepared)
    summary_lock = threading.Lock()

    def note(index: int, outcome: RunOutcome) -> None:
        outcomes[index] = outcome
        if progress is not None:
            progress.finished(prepared[index].plan.label or outcome.input, outcome)

    def write() -> None:
        with summary_lock:
            write_summary(output_dir, [o for o in outcomes if o is not None])

    def work(index: int) -> RunOutcome:
        item = prepared[index]
        label = item.plan.label or item.plan.input
        if progress is not None:
            progress.started(label)
        start = time.perf_counter()
        try:
            n_voxels, n_timepoints = mask_run(item.plan, item.recipe or {})
        except Exception as error:  # noqa: BLE001 - a run's failure is kept apart
            release_free_memory()
            return RunOutcome(
                item.plan.input,
                item.plan.output,
                "failed",
                seconds=time.perf_counter() - start,
                error=describe_error(error),
            )
        release_free_memory()
        return RunOutcome(
            item.plan.input,
            item.plan.output,
            "done",
            n_voxels=n_voxels,
            n_timepoints=n_timepoints,
            seconds=time.perf_counter() - start,
        )

    for index, item in enumerate(prepared):
        if item.action == "skip":
            note(index, _skipped(item))
        elif item.action == "fail":
            note(index, RunOutcome(item.plan.input, item.plan.output, "failed", error=item.reason))
    if any(outcome is not None for outcome in outcomes):
        write()  # once for the runs decided before masking (each write is an fsync)
    todo = [i for i, item in enumerate(prepared) if item.action == "run"]
    pool = cf.ThreadPoolExecutor(max_workers=max(1, runs_in_flight), thread_name_prefix="run")
    futures: dict[cf.Future[RunOutcome], int] = {}
    pending = iter(todo)

    def submit_next() -> None:
        index = next(pending, None)
        if index is not None:
            futures[pool.submit(work, index)] = index

    try:
        # submit lazily: a run is only handed to the pool once a slot is free
        for _ in range(max(1, runs_in_flight)):
            submit_next()
        while futures:
            done, _ = cf.wait(futures, timeout=0.25, return_when=cf.FIRST_COMPLETED)
            for future in done:
                index = futures.pop(future)
                # the next run first: writing the summary (an fsync, 10-30 ms) must not
                # leave its slot idle
                submit_next()
                note(index, future.result())
                write()
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        if on_interrupt is not None:
            with contextlib.suppress(Exception):
                on_interrupt()
        cf.wait(futures, timeout=grace_seconds)
        for future, index in futures.items():
            if future.done() and not future.cancelled() and outcomes[index] is None:
                result = future.result()
                if result.status == "done":
                    outcomes[index] = result
        final = [
            outcome
            if outcome is not None
            else RunOutcome(
                item.plan.input,
                item.plan.output,
                "failed",
                error="interrupted before this run finished; run the command again to finish it",
            )
            for outcome, item in zip(outcomes, prepared, strict=True)
        ]
        with summary_lock:
            write_summary(output_dir, final)
        raise BatchInterrupted(final) from None
    pool.shutdown(wait=True)
    return [outcome for outcome in outcomes if outcome is not None]
