"""NiftiMasker's work without scikit-learn: what the estimator and the batch share.

``fit`` reads the run lazily (:func:`daskmask.open_nifti`), computes the mask
with one reduction over time chunks (or takes the user's mask), resamples it
to the target grid and records the fitted attributes. It never holds the 4D
array in memory. ``transform`` builds the lazy cleaned signals.

:class:`NiftiMaskerCore` is a plain class: importing it does not import
scikit-learn (0.5 s, most of it ``scipy.stats`` through ``sklearn.utils``).
The estimator users call, :class:`daskmask.maskers.NiftiMasker`, is this class
plus scikit-learn's ``BaseEstimator`` (``get_params``, ``set_params``,
``clone``, pipelines); the batch command (:mod:`daskmask.batch`) masks its runs
with the core itself and so starts without scikit-learn.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import nibabel as nib
import numpy as np
import xarray as xr

from daskmask import _params
from daskmask._logging import describe_images, log, logged_method, logging_as
from daskmask._warnings import warn_user
from daskmask.image import resample_img
from daskmask.maskers._fitted_run import FittedRun
from daskmask.maskers._transform import extract_and_clean, signals_to_image
from daskmask.masking._mean import precomputed_mean_image
from daskmask.masking._validation import binarize_mask_img, load_mask_img
from daskmask.masking.strategies import get_strategy
from daskmask.reading import open_nifti

_STANDARDIZE_OPTIONS = ("zscore_sample", "psc", True, False, None)


class NiftiMaskerCore:
    """NiftiMasker's parameters, ``fit``, ``transform`` and the rest, without scikit-learn.

    The parameters, attributes and results are :class:`daskmask.maskers.NiftiMasker`'s
    (see there); :func:`daskmask._params.param_values` gives the parameters and
    their values, as ``NiftiMasker.get_params`` does. ``generate_report`` is the
    estimator's only (the report lists ``get_params``).
    """

    _parameter_constraints: Mapping[str, Any] = {
        "smoothing_fwhm": _params.Smoothing(),
        "standardize": _params.OneOf(_STANDARDIZE_OPTIONS),
        "standardize_confounds": _params.BOOL,
        "detrend": _params.BOOL,
        "high_variance_confounds": _params.BOOL,
        "low_pass": _params.NUMBER,
        "high_pass": _params.NUMBER,
        "t_r": _params.NUMBER,
        "target_affine": _params.ARRAY_LIKE,
        "target_shape": _params.ARRAY_LIKE,
        "mask_args": _params.DICT,
        "clean_args": _params.DICT,
        "dtype": _params.DtypeLike(),
        "memory": _params.MEMORY,
        "memory_level": _params.INT,
        "verbose": _params.VERBOSE,
        "reports": _params.BOOL,
    }

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
        memory_level: int = 1,
        verbose: int | bool = 0,
        reports: bool = True,
        cmap: str = "gray",
        clean_args: dict[str, Any] | None = None,
    ) -> None:
        self.mask_img = mask_img
        self.runs = runs
        self.smoothing_fwhm = smoothing_fwhm
        self.standardize = standardize
        self.standardize_confounds = standardize_confounds
        self.detrend = detrend
        self.high_variance_confounds = high_variance_confounds
        self.low_pass = low_pass
        self.high_pass = high_pass
        self.t_r = t_r
        self.target_affine = target_affine
        self.target_shape = target_shape
        self.mask_strategy = mask_strategy
        self.mask_args = mask_args
        self.dtype = dtype
        self.memory = memory
        self.memory_level = memory_level
        self.verbose = verbose
        self.reports = reports
        self.cmap = cmap
        self.clean_args = clean_args

    # ------------------------------------------------------------------ fit

    @logged_method
    def fit(self, imgs: Any = None, y: Any = None) -> NiftiMaskerCore:
        """Compute the mask of ``imgs`` (or take ``mask_img``) and resample it.

        Parameters
        ----------
        imgs : path, glob, list of images, nibabel image, DataArray or None
            The run to compute the mask from: anything
            :func:`daskmask.open_nifti` opens. As in nilearn, a list of 4D
            runs is accepted here and the mask computed from all their
            volumes, but :meth:`transform` refuses it (one run at a time, or
            :class:`daskmask.MultiNiftiMasker`). Only needed when
            ``mask_img`` is None.
        y : None
            Ignored; present for scikit-learn pipelines.

        Returns
        -------
        NiftiMaskerCore
            The fitted masker.

        """
        del y
        return self._fit(imgs, concat="time")

    #: Whether ``fit`` accepts a mask with no voxel (nilearn's MultiNiftiMasker does).
    _allow_empty_mask = False

    def _fit(
        self, imgs: Any, concat: Literal["time"] | None, warn_given_mask: bool = True
    ) -> NiftiMaskerCore:
        """Fit on ``imgs``, a list of 4D runs concatenated in time with ``concat``.

        ``warn_given_mask=False`` (``fit_transform``) does not warn that ``imgs`` are
        not used for the mask: filtering the warning instead would not be thread-safe
        (``warnings.catch_warnings`` swaps process-wide state while a batch fits runs
        in several threads).
        """
        _params.validate_params(self)
        self._forget_fit()

        data = None
        if imgs is not None:
            description = describe_images(imgs, self.verbose)
            if description is not None:
                log(f"Loading data from {description}", self.verbose)
            data = self._open_fit_input(imgs, concat)

        mask_img = self._load_user_mask()
        fitted_run = None
        if mask_img is None:
            if data is None:
                raise ValueError(
                    f"Parameter 'imgs' must be provided to {type(self).__name__}.fit() "
                    "if no mask is passed to mask_img."
                )
            log("Computing mask", self.verbose)
            mask_img, fitted_run = self._compute_mask(data)
        elif data is not None and warn_given_mask:
            warn_user(
                f"[{type(self).__name__}.fit] Generation of a mask has been requested "
                "(imgs != None) while a mask was given at masker creation. "
                "Given mask will be used.",
                RuntimeWarning,
            )

        unresampled_mask_img = mask_img
        log("Resampling mask", self.verbose)
        if self.target_affine is not None or self.target_shape is not None:
            mask_img = resample_img(
                mask_img,
                target_affine=self.target_affine,
                target_shape=self.target_shape,
                interpolation="nearest",
                copy=False,
            )
        mask = np.asarray(load_mask_img(mask_img, allow_empty=self._allow_empty_mask)[0], bool)

        # Assign the fitted state only once everything succeeded.
        self.clean_args_ = {} if self.clean_args is None else dict(self.clean_args)
        self.mask_img_ = nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine)
        self.affine_ = np.array(mask_img.affine, dtype=float)
        self.n_elements_ = int(mask.sum())
        # What transform may reuse of the fitted run (its mean, its decoded copy).
        self._fitted_run: FittedRun | None = fitted_run
        if self.reports:
            self._reporting_data = {
                "images": data,
                "mask": unresampled_mask_img,
                "resampled_mask": self.mask_img_,
            }
        log("Finished fit", self.verbose)
        return self

    def _open_fit_input(self, imgs: Any, concat: Literal["time"] | None) -> Any:
        """Open what ``fit`` computes the mask from (headers only)."""
        return open_nifti(imgs, concat=concat)

    # ------------------------------------------------------------ transform

    @logged_method
    def transform(self, imgs: Any, confounds: Any = None, sample_mask: Any = None) -> xr.DataArray:
        """Extract the (cleaned) time series of the mask's voxels, lazily.

        Parameters
        ----------
        imgs : path, glob, list of images, nibabel image or DataArray
            A 4D run (or a 3D volume, or a list of 3D volumes). A list of 4D
            runs is refused (DimensionError), as in nilearn: transform each
            run, or use :class:`daskmask.MultiNiftiMasker`.
        confounds : array, DataFrame, CSV/TSV path, or a list of them, optional
            Confounds regressed out of the signals (after the high-variance
            confounds when ``high_variance_confounds`` is set).
        sample_mask : array of indices or booleans, or a list of them per run
            Volumes to keep (scrubbing).

        Returns
        -------
        xarray.DataArray
            Lazy ``(time, voxel)`` signals (``(voxel,)`` for a 3D input),
            chunked by voxel blocks, with voxel coordinates ``i, j, k, x, y,
            z`` and the masker's parameters in ``attrs``. ``np.asarray`` of it
            equals nilearn's ``transform`` output.

        """
        self._check_fitted()
        return extract_and_clean(self, imgs, confounds, sample_mask)

    def fit_transform(
        self, imgs: Any, y: Any = None, confounds: Any = None, sample_mask: Any = None
    ) -> xr.DataArray:
        """Fit the mask on ``imgs``, then transform them (see :meth:`transform`)."""
        del y
        with logging_as(self, "fit_transform"):
            # no concatenation: a list of 4D runs, which transform refuses, is
            # refused before the mask is computed from all its volumes
            self._fit(imgs, concat=None, warn_given_mask=False)
            return self.transform(imgs, confounds=confounds, sample_mask=sample_mask)

    @logged_method
    def inverse_transform(
        self, X: Any, *, filename: Any = None, storage_options: Any = None
    ) -> nib.Nifti1Image:
        """Put signals back into images: 1D signals give a 3D image, 2D a 4D one.

        Parameters
        ----------
        X : array, DataArray or results store
            ``(n_voxels,)`` or ``(n_time, n_voxels)`` signals: numpy,
            dask or xarray (as returned by :meth:`transform`), or a results
            store opened with :func:`daskmask.open_results`.
        filename : path or URL, optional
            Stream the image to this .nii or .nii.gz file volume by volume,
            without holding the 4D array in memory, and return it opened
            lazily. Use it for results larger than memory. A URL
            (``s3://bucket/out.nii.gz``, any fsspec URL) streams it into one
            object, which appears only when its upload completes.
        storage_options : dict, optional
            File-system options for a URL ``filename`` (credentials,
            ``endpoint_url``); by default the dask config
            ``daskmask.storage-options`` and the usual environment.

        Returns
        -------
        nibabel.Nifti1Image
            The image on the mask's grid, zero outside the mask.

        """
        self._check_fitted()
        return signals_to_image(self, X, filename, storage_options)

    # scikit-learn's protocol (``check_is_fitted``); a plain method, no import needed
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "mask_img_")

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            # imported here: the error's class is made (scikit-learn imported) on first use
            from daskmask.exceptions import NotFittedError

            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' "
                "with appropriate arguments before using this estimator."
            )

    def _forget_fit(self) -> None:
        for name in (
            "mask_img_",
            "affine_",
            "n_elements_",
            "clean_args_",
            "_reporting_data",
            "_fitted_run",
        ):
            self.__dict__.pop(name, None)

    def _load_user_mask(self) -> nib.Nifti1Image | None:
        if self.mask_img is None:
            return None
        description = describe_images(self.mask_img, self.verbose)
        if description is not None:
            log(f"Loading mask from {description}", self.verbose)
        mask_img = binarize_mask_img(self.mask_img)
        load_mask_img(mask_img, allow_empty=False)
        return mask_img

    def _compute_mask(self, data: xr.DataArray) -> tuple[nib.Nifti1Image, FittedRun | None]:
        """Compute the mask of ``data``; also return what transform may reuse of the run.

        A mean-based strategy on a run read from one file or object computes
        the mean over time once, in a :class:`~daskmask.maskers._fitted_run.FittedRun`
        that records the run's version (``transform`` of the same version
        reuses the mean for the signals' mean image, and the decoded copy of a
        ``.nii.gz`` instead of inflating it again).
        """
        strategy = get_strategy(self.mask_strategy)
        mask_function, fixed_args = strategy.compute, strategy.fixed_args
        mask_args = _supported_mask_args(
            mask_function, fixed_args, self.mask_args or {}, self.mask_strategy
        )
        image, fitted_run = data, None
        if strategy.uses_mean and isinstance(data, xr.DataArray):
            volumes = data.chunks[3][0] if data.chunks and data.ndim == 4 else data.shape[-1]
            fitted_run = FittedRun.from_run(data, chunk_volumes=volumes)
        if fitted_run is not None:
            image = precomputed_mean_image(fitted_run.mean, data)
        mask_img = mask_function(
            image, verbose=max(0, int(self.verbose) - 1), **fixed_args, **mask_args
        )
        return mask_img, fitted_run


def _supported_mask_args(
    mask_function: Callable[..., Any],
    fixed_args: Mapping[str, Any],
    mask_args: Mapping[str, Any],
    strategy: str,
) -> dict[str, Any]:
    """Keep the ``mask_args`` the strategy's function takes; warn about the others."""
    parameters = list(inspect.signature(mask_function).parameters)
    image_argument = parameters[0]
    reserved = {"verbose", image_argument}
    clashing = sorted(reserved & set(mask_args))
    if clashing:
        raise TypeError(
            f"mask_args may not contain {clashing}: the image is the argument of fit and "
            "'verbose' follows the masker's own verbose parameter."
        )
    supported = set(parameters) - set(fixed_args)
    unsupported = [name for name in mask_args if name not in supported]
    if unsupported:
        warn_user(
            f"The following arguments are not supported by the masking strategy "
            f"'{strategy}': {unsupported}",
            UserWarning,
        )
    return {name: value for name, value in mask_args.items() if name in supported}
