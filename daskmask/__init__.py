"""daskmask: nilearn's NiftiMasker for fMRI runs that do not fit in memory.

NIfTI runs are opened lazily as chunked xarray DataArrays; masks are computed
by reductions over time chunks on Dask; the masker follows nilearn's
parameters, defaults and results.
"""

from daskmask import datasets, signal
from daskmask._version import __version__
from daskmask.cluster import connect
from daskmask.masker import NiftiMasker
from daskmask.masking import (
    compute_background_mask,
    compute_brain_mask,
    compute_epi_mask,
    compute_multi_background_mask,
    compute_multi_brain_mask,
    compute_multi_epi_mask,
    intersect_masks,
    mean_img,
)
from daskmask.reading import open_nifti
from daskmask.storage import Results, open_results, save

__all__ = [
    "NiftiMasker",
    "Results",
    "__version__",
    "compute_background_mask",
    "compute_brain_mask",
    "compute_epi_mask",
    "compute_multi_background_mask",
    "compute_multi_brain_mask",
    "compute_multi_epi_mask",
    "connect",
    "datasets",
    "intersect_masks",
    "mean_img",
    "open_nifti",
    "open_results",
    "save",
    "signal",
]


def __getattr__(name: str) -> object:
    # plotting and reporting import matplotlib: load them on first use only.
    if name in ("plotting", "reporting"):
        import importlib

        return importlib.import_module(f"daskmask.{name}")
    raise AttributeError(f"module 'daskmask' has no attribute {name!r}")
