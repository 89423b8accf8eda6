"""daskmask: nilearn's NiftiMasker for fMRI runs that do not fit in memory.

NIfTI runs are opened lazily as chunked xarray DataArrays; masks are computed
by reductions over time chunks on Dask; the masker follows nilearn's
parameters, defaults and results.
"""

from daskmask._lazy import lazy_names
from daskmask._version import __version__

__all__ = [
    "MultiNiftiMasker",
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
    "save_many",
    "signal",
]


#: Loaded on first use, so that ``import daskmask`` stays light: nothing heavy (dask.array,
#: xarray, scipy, scikit-learn, zarr, distributed, matplotlib) is imported before a name
#: that needs it is used (issue 14: ``import daskmask`` <= 0.5 s). name -> (module, attribute).
_LAZY = {
    "MultiNiftiMasker": ("daskmask.maskers", "MultiNiftiMasker"),
    "NiftiMasker": ("daskmask.maskers", "NiftiMasker"),
    "compute_background_mask": ("daskmask.masking", "compute_background_mask"),
    "compute_brain_mask": ("daskmask.masking", "compute_brain_mask"),
    "compute_epi_mask": ("daskmask.masking", "compute_epi_mask"),
    "compute_multi_background_mask": ("daskmask.masking", "compute_multi_background_mask"),
    "compute_multi_brain_mask": ("daskmask.masking", "compute_multi_brain_mask"),
    "compute_multi_epi_mask": ("daskmask.masking", "compute_multi_epi_mask"),
    "intersect_masks": ("daskmask.masking", "intersect_masks"),
    "mean_img": ("daskmask.masking", "mean_img"),
    "open_nifti": ("daskmask.reading", "open_nifti"),
    "signal": ("daskmask.signal", None),
    "connect": ("daskmask.cluster", "connect"),
    "datasets": ("daskmask.datasets", None),
    "plotting": ("daskmask.plotting", None),
    "reporting": ("daskmask.reporting", None),
    "Results": ("daskmask.storage", "Results"),
    "open_results": ("daskmask.storage", "open_results"),
    "save": ("daskmask.storage", "save"),
    "save_many": ("daskmask.storage", "save_many"),
}


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
