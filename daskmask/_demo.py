"""The main job: every mask setting of the seed walkthrough on a real EPI run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np

from daskmask.cluster import connect
from daskmask.datasets import load_sample
from daskmask.maskers import NiftiMasker
from daskmask.reading import open_nifti
from daskmask.storage import open_results, save

#: Where ``make demo`` writes its results store (replaced at every run).
DEFAULT_OUTPUT = Path("daskmask-demo.zarr")

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


def coverage_sentence(masker: NiftiMasker) -> str:
    """Return "The mask includes N voxels (X %) of the image." for a fitted masker."""
    n_voxels = int(np.prod(masker.mask_img_.shape))
    return (
        f"The mask includes {masker.n_elements_} voxels "
        f"({100 * masker.n_elements_ / n_voxels:.1f} %) of the image."
    )


def signal_statistics(label: str, signals: np.ndarray) -> str:
    """Return "<label>: mean M, std S" as the walkthrough prints it."""
    return f"{label}: mean {np.mean(signals):.2f}, std {np.std(signals):.2f}"


@contextlib.contextmanager
def _scheduler(scheduler: str | None) -> Iterator[None]:
    """Compute on dask's threads (``"threads"``), else on a cluster from :func:`connect`."""
    if scheduler == "threads":
        print("Scheduler: dask's threads in this process (no cluster, no dashboard)", flush=True)
        with dask.config.set(scheduler="threads"):
            yield
        return
    with connect(scheduler) as client:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        yield


def run(
    images: str | None = None,
    scheduler: str | None = None,
    output: str | Path = DEFAULT_OUTPUT,
) -> None:
    """Run the walkthrough: masks, trended/detrended extraction, Zarr results."""
    source = images if images is not None else load_sample()
    with _scheduler(scheduler):
        run_data = open_nifti(source)
        shape = "x".join(str(n) for n in run_data.shape)
        print(f"Input: {source} ({shape}, {run_data.dtype})", flush=True)
        for label, params in WALKTHROUGH_SETTINGS:
            masker = NiftiMasker(**params).fit(run_data)
            print(f"{label}: {coverage_sentence(masker)}", flush=True)

        trended = NiftiMasker(mask_strategy="epi").fit_transform(run_data)
        detrended = NiftiMasker(mask_strategy="epi", detrend=True).fit_transform(run_data)
        print(signal_statistics("Trended", trended.to_numpy()), flush=True)
        print(signal_statistics("Detrended", detrended.to_numpy()), flush=True)

        store = save(detrended, output, overwrite=True)
        results = open_results(store)
        print(
            f"Wrote {store}: signals {results.signals.shape[0]} time points x "
            f"{results.signals.shape[1]} voxels, mask and mean image; reopened lazily.",
            flush=True,
        )
