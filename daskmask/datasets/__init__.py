"""Sample data: the bundled real EPI run and a streamed, realistic synthetic EPI generator."""

from __future__ import annotations

from daskmask.datasets._generator import (
    epi_tissue_maps,
    generate_epi,
    generate_epi_volume,
    iter_epi_volumes,
)
from daskmask.datasets._sample import load_sample, sample_paths
from daskmask.reading._writer import write_nifti_volumes

__all__ = [
    "epi_tissue_maps",
    "generate_epi",
    "generate_epi_volume",
    "iter_epi_volumes",
    "load_sample",
    "sample_paths",
    "write_nifti_volumes",
]
