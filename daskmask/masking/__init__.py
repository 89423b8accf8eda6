"""Masks computed from images (as reductions over time) or from MNI templates."""

from daskmask.masking._background import background_mask_from_mean, compute_background_mask
from daskmask.masking._brain import brain_mask_from_grid, compute_brain_mask
from daskmask.masking._epi import compute_epi_mask, epi_mask_from_mean
from daskmask.masking._mean import mean_img, mean_volume, mean_volumes
from daskmask.masking._multi import (
    compute_multi_background_mask,
    compute_multi_brain_mask,
    compute_multi_epi_mask,
    intersect_masks,
)
from daskmask.masking._validation import binarize_mask_img, load_mask_img

__all__ = [
    "background_mask_from_mean",
    "binarize_mask_img",
    "brain_mask_from_grid",
    "compute_background_mask",
    "compute_brain_mask",
    "compute_epi_mask",
    "compute_multi_background_mask",
    "compute_multi_brain_mask",
    "compute_multi_epi_mask",
    "epi_mask_from_mean",
    "intersect_masks",
    "load_mask_img",
    "mean_img",
    "mean_volume",
    "mean_volumes",
]
