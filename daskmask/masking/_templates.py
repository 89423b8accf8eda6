"""The bundled MNI ICBM152 2009a templates and their resampling onto a target grid.

The templates ship with daskmask (see ``daskmask/datasets/data/NOTICE.md``).
They are loaded as nilearn's ``load_mni152_template(resolution=1)``,
``load_mni152_gm_template(1)`` and ``load_mni152_wm_template(1)`` do: cast to
float32 and divided by their maximum. Loading, and the cubic-spline
prefiltering that every resampling of a template needs, happen once per
process (``functools.lru_cache``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources

import nibabel as nib
import numpy as np
from scipy.ndimage import affine_transform, spline_filter

from daskmask.image._grid import needs_resampling, plan_target_grid, sampling_transform

#: mask_type -> bundled file name.
TEMPLATE_FILES: dict[str, str] = {
    "whole-brain": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Spline order of "continuous" interpolation.
_CUBIC = 3


def check_mask_type(mask_type: str) -> None:
    """Raise ``ValueError`` for an unknown template name.

    Parameters
    ----------
    mask_type : str
        ``"whole-brain"``, ``"gm"`` or ``"wm"``.

    """
    if mask_type not in TEMPLATE_FILES:
        raise ValueError(
            f"Unknown mask type {mask_type}. Only 'whole-brain', 'gm' or 'wm' are accepted."
        )


@functools.lru_cache(maxsize=3)
def load_template(mask_type: str = "whole-brain") -> tuple[np.ndarray, np.ndarray]:
    """Load a 1 mm MNI152 template scaled to [0, 1].

    Parameters
    ----------
    mask_type : {"whole-brain", "gm", "wm"}, default="whole-brain"
        T1 (skull-stripped), grey-matter or white-matter template.

    Returns
    -------
    data : numpy.ndarray
        float32 array of shape (197, 233, 189), read-only (it is cached).
    affine : numpy.ndarray
        4x4 affine (1 mm, origin -98, -134, -72), read-only.

    """
    check_mask_type(mask_type)
    source = resources.files("daskmask.datasets") / "data" / TEMPLATE_FILES[mask_type]
    with resources.as_file(source) as path:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj).astype(np.float32)
        affine = np.array(image.affine)
    data /= data.max()
    data.flags.writeable = False
    affine.flags.writeable = False
    return data, affine


def load_template_img(mask_type: str = "whole-brain") -> nib.Nifti1Image:
    """Return a template as a NIfTI image (a copy of the cached array).

    Parameters
    ----------
    mask_type : {"whole-brain", "gm", "wm"}, default="whole-brain"
        Which template.

    Returns
    -------
    nibabel.Nifti1Image
        float32 image with values in [0, 1].

    """
    data, affine = load_template(mask_type)
    return nib.Nifti1Image(data.copy(), affine.copy())


@functools.lru_cache(maxsize=3)
def _spline_coefficients(mask_type: str) -> np.ndarray:
    """Cubic B-spline coefficients of a template (what ``affine_transform`` prefilters).

    ``scipy.ndimage.affine_transform(..., mode="constant")`` filters its input
    with exactly this call before interpolating, so interpolating these
    coefficients with ``prefilter=False`` gives identical numbers while the
    filtering (the expensive part) is done once.
    """
    data, _ = load_template(mask_type)
    coefficients = spline_filter(data, _CUBIC, output=np.float64, mode="constant")
    coefficients.flags.writeable = False
    return coefficients


def resample_template(
    mask_type: str, target_affine: np.ndarray, target_shape: Sequence[int]
) -> np.ndarray:
    """Resample a template onto a grid (cubic spline, no clipping, zero fill).

    Equal to nilearn's ``resample_to_img(template, target_img)``; only the
    grid of the target is needed, never its data.

    Parameters
    ----------
    mask_type : {"whole-brain", "gm", "wm"}
        Which template.
    target_affine : numpy.ndarray
        4x4 affine of the target grid.
    target_shape : sequence of 3 int
        Shape of the target grid.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``target_shape``.

    """
    data, affine = load_template(mask_type)
    target_affine = np.asarray(target_affine, dtype=float)
    target_shape = tuple(int(n) for n in target_shape)
    if not needs_resampling(data.shape, affine, target_affine, target_shape):
        return data.copy()
    # Also raises BoundingBoxError when the grid misses the template entirely.
    target_affine, target_shape = plan_target_grid(data.shape, affine, target_affine, target_shape)
    matrix, offset = sampling_transform(affine, target_affine)
    out = np.zeros(target_shape, order="F", dtype=np.float32)
    affine_transform(
        _spline_coefficients(mask_type),
        matrix,
        offset=offset,
        output_shape=target_shape,
        output=out,
        order=_CUBIC,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    return out
