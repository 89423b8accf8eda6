"""The main job: every mask setting of the seed walkthrough, on the walkthrough's runs.

By default the runs are those of :func:`daskmask.datasets.load_walkthrough_runs` (generated
at first use from the MNI templates): the default ``background`` strategy on the run
already masked to the occipital cortex, every other setting on the raw run, as nilearn's
walkthrough does (its already-masked sample is an occipital-cortex mask). A
setting that fails on a run is printed as that setting's result (the error and a hint) and
the others still run; :func:`run` says whether every setting ran.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np

from daskmask.cluster import CLUSTER_KINDS, SCHEDULER_ENV_VAR, connect, dashboard_message
from daskmask.datasets import load_walkthrough_runs
from daskmask.exceptions import BoundingBoxError, ClusterConfigError
from daskmask.maskers import NiftiMasker
from daskmask.reading import open_nifti
from daskmask.storage import open_results, save

#: Where ``make demo`` writes its results store (replaced at every run).
DEFAULT_OUTPUT = Path("daskmask-demo.zarr")

#: Below this many bytes of input (on disk, all runs together), the demo computes on dask's
#: threads. Measured by ``benchmarks/bench_scheduler_choice.py`` (benchmarks/README.md) on 2
#: cores, start-up included: threads took 11 s against 29 s for the LocalCluster on the
#: walkthrough runs (33 MiB), 74 s against 146 s on the 2.2 GB HCP-like run. Above this size the
#: LocalCluster is started for what it gives a long job (the dashboard, per-worker memory
#: limits), not for speed on one machine.
THREADS_BELOW_BYTES = 4 << 30

#: The walkthrough's settings: (label, NiftiMasker parameters).
WALKTHROUGH_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("background (default)", {}),
    ("epi", {"mask_strategy": "epi"}),
    ("epi, opening=10", {"mask_strategy": "epi", "mask_args": {"opening": 10}}),
    (
        "epi, lower_cutoff=0.8, upper_cutoff=0.9, opening=False",
        {
            "mask_strategy": "epi",
            "mask_args": {"lower_cutoff": 0.8, "upper_cutoff": 0.9, "opening": False},
        },
    ),
    ("whole-brain-template", {"mask_strategy": "whole-brain-template"}),
    ("gm-template", {"mask_strategy": "gm-template"}),
    ("wm-template", {"mask_strategy": "wm-template"}),
    ("epi, target_affine=np.eye(3) * 8", {"mask_strategy": "epi", "target_affine": np.eye(3) * 8}),
]

#: Which of the walkthrough's runs each setting is shown on (the others: the raw run).
SETTING_RUN: dict[str, str] = {"background (default)": "masked"}


@dataclass(frozen=True)
class DemoRuns:
    """The run(s) the demo masks: an already-masked one and the raw one (maybe the same)."""

    masked: str | os.PathLike[str]
    raw: str | os.PathLike[str]

    def for_setting(self, label: str) -> str | os.PathLike[str]:
        """Return the run a setting is shown on."""
        return self.masked if SETTING_RUN.get(label) == "masked" else self.raw

    def paths(self) -> list[str | os.PathLike[str]]:
        """Return the distinct runs, masked first."""
        return [self.masked] if self.masked == self.raw else [self.masked, self.raw]


def coverage_sentence(masker: NiftiMasker) -> str:
    """Return "The mask includes N voxels (X %) of the image." for a fitted masker."""
    n_voxels = int(np.prod(masker.mask_img_.shape))
    return (
        f"The mask includes {masker.n_elements_} voxels "
        f"({100 * masker.n_elements_ / n_voxels:.1f} %) of the image."
    )


def signal_statistics(label: str, signals: np.ndarray) -> str:
    """Return "<label>: mean M, std S" as the walkthrough prints it."""
    mean = float(np.mean(signals))
    # A mean that rounds to zero prints as 0.00, never -0.00 (the sign of rounding noise).
    mean = 0.0 if round(mean, 2) == 0 else mean
    return f"{label}: mean {mean:.2f}, std {np.std(signals):.2f}"


def failure_hint(params: Mapping[str, Any], error: BaseException) -> str:
    """Return what to try when a setting fails on a run.

    Parameters
    ----------
    params : mapping
        The setting's NiftiMasker parameters.
    error : BaseException
        What fitting raised.

    Returns
    -------
    str
        One sentence naming the likely cause and the fix.

    """
    strategy = params.get("mask_strategy", "background")
    opening = (params.get("mask_args") or {}).get("opening")
    empty = "empty" in str(error).lower()
    if strategy.endswith("-template") and (empty or isinstance(error, BoundingBoxError)):
        return (
            "the MNI template does not overlap this run: template strategies need a run in "
            "MNI space; use mask_strategy='epi' (raw) or 'background' (skull-stripped)."
        )
    if isinstance(error, BoundingBoxError):
        return "the target grid misses the run: give a target_affine whose field of view holds it."
    if empty:
        if opening:
            return (
                f"opening={opening} erodes the mask {opening} times before dilating it back, "
                "which empties a small or thin brain: lower opening."
            )
        if strategy == "background":
            return (
                "the 'background' strategy needs a uniform background (skull-stripped data); "
                "for raw EPI use mask_strategy='epi'."
            )
        return "no voxel passed the threshold: check that the run is EPI, not detrended."
    return "check the run and this setting's parameters."


def _input_bytes(runs: DemoRuns) -> int | None:
    """Size on disk of the demo's input, None when a run is not a local file."""
    try:
        return sum(os.path.getsize(path) for path in runs.paths())
    except (OSError, TypeError):
        return None


def choose_scheduler(scheduler: str | None, input_bytes: int | None) -> str | None:
    """Return where the demo computes: ``"threads"``, or what :func:`connect` is given.

    An explicit ``scheduler`` wins, then ``$DASKMASK_SCHEDULER``; otherwise dask's threads
    for an input under :data:`THREADS_BELOW_BYTES` (no cluster to start), else the embedded
    LocalCluster (``None``).
    """
    if scheduler:
        return scheduler
    if os.environ.get(SCHEDULER_ENV_VAR):
        return None
    if input_bytes is not None and input_bytes < THREADS_BELOW_BYTES:
        return "threads"
    return None


@contextlib.contextmanager
def _scheduler(scheduler: str | None, reason: str = "") -> Iterator[None]:
    """Compute on dask's threads (``"threads"``), else on a cluster from :func:`connect`."""
    if scheduler == "threads":
        print(
            f"Scheduler: dask's threads in this process (no cluster, no dashboard{reason})",
            flush=True,
        )
        with dask.config.set(scheduler="threads"):
            yield
        return
    try:
        client = connect(cluster=scheduler) if scheduler in CLUSTER_KINDS else connect(scheduler)
    except (OSError, ValueError) as error:
        raise ClusterConfigError(
            f"Cannot compute on {scheduler!r} ({error}); give 'threads', "
            f"{', '.join(repr(kind) for kind in CLUSTER_KINDS)} or a scheduler address such "
            "as tcp://host:8786."
        ) from error
    with client:
        print(dashboard_message(client) or "Dask dashboard: none", flush=True)
        yield


def _describe(label: str, path: str | os.PathLike[str]) -> str:
    run = open_nifti(path)
    shape = "x".join(str(n) for n in run.shape)
    return f"{label}: {path} ({shape}, {run.dtype})"


def _fit_setting(label: str, params: dict[str, Any], path: str | os.PathLike[str]) -> bool:
    """Fit one setting and print its result or its failure; return whether it ran."""
    # Warnings belong to this setting's result: printed under its line, not as a stray
    # stderr line pointing into daskmask.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            masker = NiftiMasker(**params).fit(path)
            error = None
        except Exception as failure:  # noqa: BLE001 - any failure is this setting's result
            error = failure
    if error is None:
        print(f"{label}: {coverage_sentence(masker)}", flush=True)
    else:
        print(f"{label}: failed: {type(error).__name__}: {error}", flush=True)
    for warning in _distinct(caught):
        print(f"    warning: {warning}", flush=True)
    if error is not None:
        print(f"    hint: {failure_hint(params, error)}", flush=True)
    return error is None


def _distinct(caught: list[warnings.WarningMessage]) -> list[str]:
    """Return the texts of the caught warnings, each once, in order."""
    texts = [f"{w.category.__name__}: {str(w.message).strip()}" for w in caught]
    return list(dict.fromkeys(texts))


def _extract(path: str | os.PathLike[str], output: str | Path) -> bool:
    """Trended versus detrended extraction with the ``epi`` mask, then the Zarr store."""
    try:
        trended = NiftiMasker(mask_strategy="epi").fit_transform(path)
        detrended = NiftiMasker(mask_strategy="epi", detrend=True).fit_transform(path)
        trended_values, detrended_values = dask.compute(trended.data, detrended.data)
    except Exception as error:  # noqa: BLE001 - reported like a failed setting
        print(f"trended/detrended extraction: failed: {type(error).__name__}: {error}")
        print("    hint: the 'epi' mask of this run could not be computed (see above).")
        return False
    print(signal_statistics("Trended", trended_values), flush=True)
    print(signal_statistics("Detrended", detrended_values), flush=True)
    store = save(detrended, output, overwrite=True)
    results = open_results(store)
    print(
        f"Wrote {store}: signals {results.signals.shape[0]} time points x "
        f"{results.signals.shape[1]} voxels, mask and mean image; reopened lazily.",
        flush=True,
    )
    return True


def run(
    images: str | os.PathLike[str] | None = None,
    scheduler: str | None = None,
    output: str | Path = DEFAULT_OUTPUT,
) -> bool:
    """Run the walkthrough: masks, trended/detrended extraction, Zarr results.

    Parameters
    ----------
    images : str or os.PathLike, optional
        A 4D run to show every setting on. Default: the walkthrough's runs (the one
        masked to the occipital cortex for ``background``, the raw one for the others).
    scheduler : str, optional
        ``"threads"``, a kind of cluster (``"local"``: the embedded LocalCluster, or one of
        :data:`daskmask.cluster.CLUSTER_KINDS`) or a scheduler address.
        Default: ``$DASKMASK_SCHEDULER``, else threads for a small input (see
        :func:`choose_scheduler`), else the embedded LocalCluster.
    output : str or pathlib.Path
        The Zarr results store of the detrended signals (replaced).

    Returns
    -------
    bool
        True when every setting and the extraction ran; failures are printed.

    """
    if images is None:
        walkthrough = load_walkthrough_runs(verbose=True)
        runs = DemoRuns(masked=walkthrough.occipital, raw=walkthrough.raw)
    else:
        runs = DemoRuns(masked=images, raw=images)
    size = _input_bytes(runs)
    choice = choose_scheduler(scheduler, size)
    reason = "" if scheduler or size is None else f"; input {size / 2**20:.1f} MiB"
    ran = []
    with _scheduler(choice, reason):
        if images is None:
            print(_describe("Masked run (occipital cortex)", runs.masked), flush=True)
            print(_describe("Raw run", runs.raw), flush=True)
        else:
            print(_describe("Input", images), flush=True)
        for label, params in WALKTHROUGH_SETTINGS:
            ran.append(_fit_setting(label, params, runs.for_setting(label)))
        ran.append(_extract(runs.raw, output))
    if not all(ran):
        print(f"{ran.count(False)} of {len(ran)} steps failed (see above).", flush=True)
    return all(ran)
