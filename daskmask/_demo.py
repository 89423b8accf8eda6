"""The main job: every mask setting of the seed walkthrough on a real EPI run."""

from __future__ import annotations

from typing import Any

import numpy as np

from daskmask.cluster import connect
from daskmask.datasets import load_sample
from daskmask.masker import NiftiMasker
from daskmask.reading import open_nifti

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


def run(images: str | None = None, scheduler: str | None = None) -> None:
    """Fit a masker for each walkthrough setting and print its mask coverage."""
    source = images if images is not None else load_sample()
    with connect(scheduler) as client:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        run_data = open_nifti(source)
        shape = "x".join(str(n) for n in run_data.shape)
        print(f"Input: {source} ({shape}, {run_data.dtype})", flush=True)
        for label, params in WALKTHROUGH_SETTINGS:
            masker = NiftiMasker(**params).fit(run_data)
            print(f"{label}: {coverage_sentence(masker)}", flush=True)
