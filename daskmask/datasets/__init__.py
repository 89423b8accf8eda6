"""Sample data: real EPI runs, the walkthrough runs, synthetic EPI runs, fMRIPrep derivatives.

The bundled real run, a streamed synthetic EPI generator, fMRIPrep-like confounds
tables and whole fMRIPrep-like derivatives datasets (local or in object storage).
"""

from __future__ import annotations

from daskmask.datasets._derivatives import FMRIPREP_VERSIONS, make_fmriprep_derivatives
from daskmask.datasets._fmriprep_confounds import (
    make_fmriprep_confounds,
    write_fmriprep_confounds,
)
from daskmask.datasets._generator import (
    epi_tissue_maps,
    generate_epi,
    generate_epi_volume,
    iter_epi_volumes,
)
from daskmask.datasets._sample import load_sample, sample_paths
from daskmask.datasets._walkthrough import (
    WalkthroughRuns,
    load_walkthrough_runs,
    walkthrough_tissue_maps,
)
from daskmask.reading._writer import write_nifti_volumes

__all__ = [
    "FMRIPREP_VERSIONS",
    "WalkthroughRuns",
    "epi_tissue_maps",
    "generate_epi",
    "generate_epi_volume",
    "iter_epi_volumes",
    "load_sample",
    "load_walkthrough_runs",
    "make_fmriprep_confounds",
    "make_fmriprep_derivatives",
    "sample_paths",
    "walkthrough_tissue_maps",
    "write_fmriprep_confounds",
    "write_nifti_volumes",
]
