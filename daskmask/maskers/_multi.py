"""MultiNiftiMasker: one mask for many runs, one signals array per run.

It is a :class:`~daskmask.maskers.NiftiMasker` (as in nilearn) whose ``fit``
takes a list of runs and computes the common mask with the strategy's
multi-run function (all runs' means in one dask computation), and whose
``transform`` returns one lazy signals array per run, each run cleaned on
its own. Computing the list with one ``dask.compute`` or
:func:`daskmask.save_many` runs the runs side by side on the workers; each
task holds one time slab or one voxel block of one run, so the memory of a
worker does not grow with the number of runs.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import nibabel as nib
import numpy as np
import xarray as xr

from daskmask import _params
from daskmask._logging import logged_method
from daskmask._warnings import warn_user
from daskmask.maskers._core import _supported_mask_args
from daskmask.maskers._fitted_run import FittedRun
from daskmask.maskers._nifti import NiftiMasker
from daskmask.maskers._transform import extract_and_clean, grid_of_run
from daskmask.masking.strategies import get_strategy
from daskmask.reading import open_nifti

__all__ = ["MultiNiftiMasker"]

#: nilearn's deprecated name of the whole-brain template strategy (MultiNiftiMasker only).
_DEPRECATED_TEMPLATE = "template"


def _is_one_image(imgs: Any) -> bool:
    """Whether ``imgs`` is one image (a run) rather than a list of runs, as nilearn tells."""
    return isinstance(imgs, (str, os.PathLike, nib.spatialimages.SpatialImage, xr.DataArray))


def _as_runs(imgs: Any) -> list[Any]:
    """Return ``imgs`` as a list of runs (one image is a list of one)."""
    if _is_one_image(imgs):
        return [imgs]
    if isinstance(imgs, Sequence) and not isinstance(imgs, bytes):
        runs = list(imgs)
    elif hasattr(imgs, "__iter__"):
        runs = list(imgs)
    else:
        raise TypeError(
            "MultiNiftiMasker takes a list of runs (paths, URLs, nibabel images, DataArrays, "
            f"or lists of 3D volumes), got {type(imgs).__name__}."
        )
    if not runs:
        raise TypeError(
            "An empty list was passed instead of a list of runs: give at least one image."
        )
    return runs


def _per_run(name: str, values: Any, n_runs: int) -> list[Any]:
    """Check a per-run argument (``confounds``, ``sample_mask``): None or one per run."""
    if values is None:
        return [None] * n_runs
    if not isinstance(values, list):
        raise TypeError(
            f"'{name}' must be None or a list with one element per run. "
            f"Got {type(values).__name__}."
        )
    if len(values) != n_runs:
        # nilearn's exception type (ValueError) and its words, with the fix
        raise ValueError(
            f"number of {name} ({len(values)}) unequal to number of images ({n_runs}). "
            f"Give one {name} element per run (None for a run without)."
        )
    return values


def _check_same_grid(runs: Sequence[Any], reference: tuple[Any, tuple[int, ...]]) -> None:
    """With a target grid, nilearn requires every run on the first run's grid."""
    affine, shape = reference
    for index, run in enumerate(runs[1:], start=1):
        run_affine, run_shape = grid_of_run(open_nifti(run))
        if run_shape != shape or not np.allclose(run_affine, affine):
            raise ValueError(
                f"Field of view of image #{index} is different from reference FOV.\n"
                f"Reference affine:\n{affine!r}\nImage affine:\n{run_affine!r}\n"
                f"Reference shape:\n{shape!r}\nImage shape:\n{run_shape!r}\n"
                "With target_affine, every run must be on the first run's grid; without "
                "it, the runs are resampled to the first run's grid."
            )


class MultiNiftiMasker(NiftiMasker):
    """Mask many 4D runs with one common mask: nilearn's MultiNiftiMasker on Dask.

    Same parameters, defaults and results as
    ``nilearn.maskers.MultiNiftiMasker`` (0.14.1). ``fit`` computes one mask
    common to all runs; ``transform`` returns one lazy ``(time, voxel)``
    signals array per run, each cleaned on its own (its own detrending,
    filtering, confounds and scrubbing). Evaluate the list with one
    ``dask.compute(*signals)`` or write it with :func:`daskmask.save_many`:
    the runs then proceed in parallel across the workers of the current
    Dask scheduler, and the memory of each worker stays bounded by the block
    size whatever the number of runs.

    Parameters
    ----------
    mask_img, runs, smoothing_fwhm, standardize, standardize_confounds, detrend
        As :class:`daskmask.NiftiMasker`.
    high_variance_confounds, low_pass, high_pass, t_r
        As :class:`daskmask.NiftiMasker`; every run gets its own
        high-variance confounds (after its own confounds, as nilearn).
    target_affine : array of shape (3, 3) or (4, 4), or None, default=None
        Grid of the mask and the signals. The multi-run mask is computed on
        this grid (the means are resampled before thresholding, as in
        nilearn). Without it, every run is resampled to the first run's grid
        (with nilearn's warning) before masking; with it, the runs must
        share the first run's grid (ValueError otherwise, as nilearn).
    target_shape : tuple of 3 ints or None, default=None
        Shape of that grid; needs a 4x4 ``target_affine``.
    mask_strategy : {"background", "epi", "whole-brain-template", \
"gm-template", "wm-template"}, default="background"
        How the common mask is computed: ``compute_multi_background_mask``,
        ``compute_multi_epi_mask`` or ``compute_multi_brain_mask``. nilearn's
        deprecated ``"template"`` is accepted with its warning.
    mask_args : dict or None, default=None
        Extra arguments of that function, ``threshold`` (the fraction of the
        runs a voxel must be in) included.
    dtype, memory, verbose, reports, cmap, clean_args
        As :class:`daskmask.NiftiMasker`.
    memory_level : int, default=0
        Accepted for compatibility with nilearn; never modified.
    n_jobs : int, default=1
        Accepted for compatibility with nilearn; Dask runs the runs in
        parallel on its workers (see :func:`daskmask.connect`).

    Attributes
    ----------
    mask_img_ : nibabel.Nifti1Image
        The common 3D mask (uint8, 0 and 1) on the output grid.
    affine_ : numpy.ndarray of shape (4, 4)
        Affine of the output grid.
    n_elements_ : int
        Number of voxels in the mask (0 is accepted, as in nilearn).
    clean_args_ : dict
        ``clean_args`` or an empty dict.

    Notes
    -----
    As for NiftiMasker, daskmask does the right thing where nilearn 0.14.1
    has a bug: ``affine_`` is always 4x4; high-variance confounds are added
    as columns to a list of confounds (nilearn extends the list with their
    rows). A list given to ``fit`` is a list of runs: a 3D image in it is a
    run of one volume, a list of 3D images one run.

    """

    _parameter_constraints: Mapping[str, Any] = {
        **NiftiMasker._parameter_constraints,
        "n_jobs": _params.INT,
    }

    _allow_empty_mask = True

    def __init__(
        self,
        mask_img: Any = None,
        runs: Any = None,
        smoothing_fwhm: float | None = None,
        standardize: str | bool | None = False,
        standardize_confounds: bool = True,
        detrend: bool = False,
        high_variance_confounds: bool = False,
        low_pass: float | None = None,
        high_pass: float | None = None,
        t_r: float | None = None,
        target_affine: Any = None,
        target_shape: Any = None,
        mask_strategy: str = "background",
        mask_args: dict[str, Any] | None = None,
        dtype: Any = None,
        memory: Any = None,
        memory_level: int = 0,
        n_jobs: int = 1,
        verbose: int | bool = 0,
        reports: bool = True,
        cmap: str = "gray",
        clean_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            mask_img=mask_img,
            runs=runs,
            smoothing_fwhm=smoothing_fwhm,
            standardize=standardize,
            standardize_confounds=standardize_confounds,
            detrend=detrend,
            high_variance_confounds=high_variance_confounds,
            low_pass=low_pass,
            high_pass=high_pass,
            t_r=t_r,
            target_affine=target_affine,
            target_shape=target_shape,
            mask_strategy=mask_strategy,
            mask_args=mask_args,
            dtype=dtype,
            memory=memory,
            memory_level=memory_level,
            verbose=verbose,
            reports=reports,
            cmap=cmap,
            clean_args=clean_args,
        )
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ fit

    @logged_method
    def fit(self, imgs: Any = None, y: Any = None) -> MultiNiftiMasker:
        """Compute the mask common to the runs ``imgs`` (or take ``mask_img``).

        Parameters
        ----------
        imgs : list of runs, one run, or None
            Each run is anything :func:`daskmask.open_nifti` opens as one
            image: a path or URL, a nibabel image, a DataArray, or a list of
            3D volumes. One image is a list of one run. Only needed when
            ``mask_img`` is None.
        y : None
            Ignored; present for scikit-learn pipelines.

        Returns
        -------
        MultiNiftiMasker
            The fitted masker.

        """
        del y
        self._fit(imgs, concat=None)
        return self

    def _open_fit_input(self, imgs: Any, concat: Literal["time"] | None) -> list[xr.DataArray]:
        """Open each run (headers only); a list of 4D runs stays a list of runs."""
        del concat
        return [open_nifti(run) for run in _as_runs(imgs)]

    def _compute_mask(self, data: list[xr.DataArray]) -> tuple[nib.Nifti1Image, FittedRun | None]:
        """Compute the common mask with the strategy's multi-run function.

        As nilearn, the masker passes ``target_affine``, ``target_shape`` and
        ``n_jobs`` to the function when it takes them (so the mean-based
        masks are computed on the target grid); ``mask_args`` override them.
        """
        name = self.mask_strategy
        if name == _DEPRECATED_TEMPLATE:
            warn_user(
                "Masking strategy 'template' is deprecated. "
                "Please use 'whole-brain-template' instead.",
                UserWarning,
            )
            name = "whole-brain-template"
        strategy = get_strategy(name)
        function, fixed_args = strategy.compute_multi, strategy.fixed_args
        accepted = inspect.signature(function).parameters
        injected = {
            argument: getattr(self, argument)
            for argument in ("n_jobs", "target_shape", "target_affine")
            if argument in accepted and getattr(self, argument) is not None
        }
        mask_args = _supported_mask_args(function, fixed_args, self.mask_args or {}, name)
        mask_img = function(
            data,
            verbose=max(0, int(self.verbose) - 1),
            **fixed_args,
            **{**injected, **mask_args},
        )
        return mask_img, None

    # ------------------------------------------------------------ transform

    @logged_method
    def transform(
        self, imgs: Any, confounds: Any = None, sample_mask: Any = None
    ) -> xr.DataArray | list[xr.DataArray]:
        """Extract the cleaned signals of every run, lazily, one array per run.

        Parameters
        ----------
        imgs : list of runs, or one run
            The runs (as in :meth:`fit`). One image gives one signals array,
            as :meth:`daskmask.NiftiMasker.transform`.
        confounds : list or None, default=None
            One element per run (None, an array, a DataFrame, a CSV/TSV path,
            or a list of them), regressed out of that run only.
        sample_mask : list or None, default=None
            One element per run: the volumes of that run to keep.

        Returns
        -------
        list of xarray.DataArray, or xarray.DataArray
            One lazy ``(time, voxel)`` signals array per run (``(voxel,)``
            for a 3D run), in the order of ``imgs``; one array for one image.
            ``np.asarray`` of each equals nilearn's output for that run.

        Raises
        ------
        TypeError
            ``confounds`` or ``sample_mask`` is not None or a list.
        ValueError
            Their length is not the number of runs (nilearn's type).

        """
        self._check_fitted()
        if not (confounds is None or isinstance(confounds, list)):
            raise TypeError(
                "'confounds' must be None or a list with one element per run. "
                f"Got {type(confounds).__name__}."
            )
        if not (sample_mask is None or isinstance(sample_mask, list)):
            raise TypeError(
                "'sample_mask' must be None or a list with one element per run. "
                f"Got {type(sample_mask).__name__}."
            )
        if _is_one_image(imgs):
            return extract_and_clean(
                self,
                imgs,
                confounds[0] if isinstance(confounds, list) else confounds,
                sample_mask[0] if isinstance(sample_mask, list) else sample_mask,
            )
        if self.n_elements_ == 0:
            # fit accepts an empty common mask, as nilearn; there is nothing to extract
            raise ValueError(
                "The mask is invalid as it is empty: it masks all data. The runs share no "
                "voxel at this threshold: lower mask_args['threshold'] or check the runs' "
                "fields of view."
            )
        runs = _as_runs(imgs)
        all_confounds = _per_run("confounds", confounds, len(runs))
        all_masks = _per_run("sample_mask", sample_mask, len(runs))
        reference = grid_of_run(open_nifti(runs[0]))
        if self.target_affine is not None:
            _check_same_grid(runs, reference)
            reference = None  # every run is resampled to the target grid only
        return [
            extract_and_clean(
                self,
                run,
                run_confounds,
                run_mask,
                reference_grid=reference,
                high_variance_last=True,
            )
            for run, run_confounds, run_mask in zip(runs, all_confounds, all_masks, strict=True)
        ]

    @logged_method
    def inverse_transform(
        self, X: Any, *, filename: Any = None, storage_options: Any = None
    ) -> nib.Nifti1Image | list[nib.Nifti1Image]:
        """Put signals back into images; a list of signals (one per run) gives a list.

        Parameters
        ----------
        X : array, DataArray, results store, or a list of them
            Signals of one run (see :meth:`daskmask.NiftiMasker.inverse_transform`),
            or a list of them, as :meth:`transform` returns for a list of runs.
        filename : path or URL, or a list of them (one per run), optional
            Stream each image to this file instead of memory.
        storage_options : dict, optional
            File-system options for URL filenames.

        Returns
        -------
        nibabel.Nifti1Image or list of nibabel.Nifti1Image
            One image per signals array, on the mask's grid.

        """
        if not isinstance(X, list):
            return super().inverse_transform(X, filename=filename, storage_options=storage_options)
        filenames = [None] * len(X) if filename is None else filename
        if not isinstance(filenames, list) or len(filenames) != len(X):
            raise TypeError(
                "With a list of signals, filename must be None or a list with one file per "
                f"signals array ({len(X)}); got {filename!r}."
            )
        return [
            NiftiMasker.inverse_transform(
                self, signals, filename=name, storage_options=storage_options
            )
            for signals, name in zip(X, filenames, strict=True)
        ]
