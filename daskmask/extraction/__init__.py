"""From lazily read time slabs to masked ``(time, voxel)`` blocks, and back to images."""

from __future__ import annotations

from daskmask.extraction._apply_mask import (
    apply_mask,
    extract_signals,
    flat_fortran_index,
    mask_slabs,
    output_dtype,
    slab_volumes,
    to_voxel_blocks,
)
from daskmask.extraction._plan import ExtractionPlan, plan_extraction
from daskmask.extraction._unmask import unmask, unmask_to_file
from daskmask.extraction._volumes import resample_volumes, run_clip_range, smooth_volumes

__all__ = [
    "ExtractionPlan",
    "apply_mask",
    "extract_signals",
    "flat_fortran_index",
    "mask_slabs",
    "output_dtype",
    "plan_extraction",
    "resample_volumes",
    "run_clip_range",
    "slab_volumes",
    "smooth_volumes",
    "to_voxel_blocks",
    "unmask",
    "unmask_to_file",
]
