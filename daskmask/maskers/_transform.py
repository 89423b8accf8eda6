"""The transform pipeline of NiftiMasker: input run -> cleaned signals, and back.

Order of operations, as nilearn's NiftiMasker: high-variance confounds of the
raw run (if asked), resampling of every volume to the mask's grid (cropped to
the mask's bounding box, when the run is not already on it), smoothing,
masking, then cleaning over voxel blocks and the output dtype. Every step is
lazy: the result is one dask graph that reads the run once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from daskmask._logging import describe_images, log
from daskmask._memory import BUDGET_KEY, memory_per_thread, task_budget_bytes, total_threads
from daskmask._params import param_values
from daskmask._provenance import input_provenance
from daskmask._scratch import current_client
from daskmask._warnings import warn_user
from daskmask.exceptions import DimensionError
from daskmask.extraction import (
    extract_signals,
    output_dtype,
    resample_volumes,
    slab_volumes,
    unmask,
    unmask_to_file,
)
from daskmask.extraction._unmask import load_image_file
from daskmask.maskers._hv_confounds import run_high_variance_confounds
from daskmask.maskers._in_memory import in_memory_result
from daskmask.reading import open_nifti
from daskmask.reading._decode import with_time_chunks
from daskmask.signal import clean
from daskmask.signals import NAME as SIGNALS_NAME
from daskmask.signals import check_signals, signals_dataarray

if TYPE_CHECKING:
    from daskmask.maskers._core import NiftiMaskerCore

#: Parameters of the masker that go to ``signal.clean``.
_CLEAN_PARAMETERS = (
    "detrend",
    "standardize",
    "standardize_confounds",
    "t_r",
    "low_pass",
    "high_pass",
    "runs",
)


def crop_to_mask(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``mask`` to its bounding box plus one voxel, and shift the affine.

    Resampling a run onto the cropped grid instead of the whole target grid
    computes only the voxels that can be in the mask; the voxel order of the
    mask is unchanged.
    """
    coords = np.nonzero(mask)
    start = np.maximum(np.array([c.min() for c in coords]) - 1, 0)
    stop = np.minimum(np.array([c.max() for c in coords]) + 2, mask.shape)
    cropped = mask[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))]
    shifted = np.eye(4)
    shifted[:3, :3] = affine[:3, :3]
    shifted[:3, 3] = affine[:3, 3] + affine[:3, :3].dot(start)
    return cropped, shifted


def _target_dtype(requested: Any, pipeline_dtype: np.dtype) -> np.dtype | None:
    """Output dtype of transform: the requested one, else the pipeline's.

    ``"auto"`` means float32 for float signals (what cleaning produces);
    nilearn picks int32 from the *input's* dtype, which truncates z-scores
    of int16 runs to integers (a bug daskmask does not copy).
    """
    if requested is None:
        return None
    if isinstance(requested, str) and requested == "auto":
        return np.dtype(np.int32 if pipeline_dtype.kind in "iu" else np.float32)
    return np.dtype(requested)


def _signals_dtype(requested: Any, input_dtype: np.dtype) -> np.dtype:
    """Dtype the signals are extracted and cleaned in.

    nilearn's rule (float input keeps its dtype, integers become float32), widened
    to a requested float ``dtype``: ``dtype="float64"`` must be computed in float64.
    nilearn 0.14.1 cleans in float32 and only casts the result, so its float64
    output carries float32 rounding, which OpenBLAS's float32 kernels make depend
    on the CPU and on the column layout (issue 9: 1-ulp differences on AVX2 CPUs).
    """
    working = output_dtype(input_dtype, "f")
    if requested is None or (isinstance(requested, str) and requested == "auto"):
        return working
    wanted = np.dtype(requested)
    if wanted.kind == "f" and working.kind == "f" and wanted.itemsize > working.itemsize:
        return wanted.newbyteorder("=")
    return working


#: Largest automatic budget of an extraction task on dask's threads (no client),
#: for signals that fit in memory. Two threads each hold a block, its float copy
#: and numpy's temporaries, and a result in memory waits for the last block:
#: measured on the HCP-like run (issue 14), 16 MiB tasks took the peak of
#: ``fit_transform(...).to_numpy()`` from 1126-1172 to 1022-1046 MiB and of
#: ``save`` from 833 to 551 MiB, in the same wall time as 32 MiB. Larger runs
#: keep the task budget: the intermediate's writes (one per slab and voxel
#: block) shrink with the square of the budget, to 8 KB for 16,600 volumes.
LOCAL_BLOCK_BYTES = 16 * 2**20


def extraction_budget(signals_bytes: int) -> int:
    """Return the byte budget of one extraction task (time slab or voxel block).

    The task budget (:func:`daskmask._memory.task_budget_bytes`), capped at
    :data:`LOCAL_BLOCK_BYTES` when it is automatic, no distributed client is
    active and the signals (``signals_bytes``) take at most a quarter of the
    memory available; an explicit ``daskmask.block-bytes`` is used as it is.
    """
    budget = task_budget_bytes()
    configured = dask.config.get(BUDGET_KEY, "auto")
    automatic = isinstance(configured, str) and configured == "auto"
    if automatic and current_client() is None:
        available = memory_per_thread() * total_threads()
        if signals_bytes <= available // 4:
            return min(budget, LOCAL_BLOCK_BYTES)
    return budget


def _signals_bytes(masker: NiftiMaskerCore, run: xr.DataArray) -> int:
    """Bytes of the signals ``run`` gives under ``masker`` (time points x voxels)."""
    n_time = run.shape[3] if run.ndim == 4 else 1
    return n_time * int(masker.n_elements_) * _signals_dtype(masker.dtype, run.dtype).itemsize


def _open_in_budget_slabs(
    masker: NiftiMaskerCore, imgs: Any, reference_grid: Grid | None = None
) -> tuple[xr.DataArray, Any]:
    """Open ``imgs`` in time chunks small enough for one task to stay in budget.

    The budget is :func:`daskmask._memory.task_budget_bytes`; a read task holds one time
    chunk plus its resampled/smoothed copy and its masked rows. A DataArray
    the user opened keeps the chunks the user chose. A .nii.gz that ``fit``
    already decoded (the masker's fitted run, same file version) is read
    from the decoded copy instead of being inflated again.

    Also returns the mean over time ``fit`` computed from the same file
    version, or None.
    """
    run = open_nifti(imgs)
    # one more copy per volume when the run is first brought onto the reference grid
    realigned = reference_grid is not None and not _on_grid(run, reference_grid)
    fitted_run = masker._fitted_run
    mean, decoded = (None, None) if fitted_run is None else fitted_run.kept_for(run)
    if isinstance(imgs, xr.DataArray) or run.ndim != 4:
        if decoded is not None:
            return _with_data(run, decoded, max(run.data.chunks[-1])), mean
        return run, mean
    copies = int(masker.smoothing_fwhm is not None)
    copies += int(masker.target_affine is not None or masker.target_shape is not None)
    copies += int(realigned)
    volumes = slab_volumes(
        run.shape[:3],
        run.dtype,
        masker.n_elements_,
        _signals_dtype(masker.dtype, run.dtype),
        run.shape[3],
        extraction_budget(_signals_bytes(masker, run)),
        volume_copies=copies,
    )
    if decoded is not None:
        return _with_data(run, decoded, volumes), mean
    return open_nifti(imgs, chunks=volumes), mean


def _with_data(run: xr.DataArray, decoded: xr.DataArray, chunk_volumes: int) -> xr.DataArray:
    """``run`` (coords, attrs) over the decoded values, ``chunk_volumes`` per time chunk."""
    data = with_time_chunks(decoded, chunk_volumes)
    return run.copy(data=data).assign_attrs(decoded_store=decoded.attrs["decoded_store"])


def _all_confounds(
    masker: NiftiMaskerCore, run: xr.DataArray, confounds: Any, high_variance_last: bool
) -> Any:
    """Return the high-variance confounds and the user's (a list extended), in nilearn's order.

    nilearn's NiftiMasker puts the high-variance confounds first, its
    MultiNiftiMasker after the user's (``high_variance_last``).
    """
    if not masker.high_variance_confounds:
        return confounds
    user: list[Any] = []
    if confounds is not None:
        user = list(confounds) if isinstance(confounds, list) else [confounds]
    high_variance = [run_high_variance_confounds(run)]
    return user + high_variance if high_variance_last else high_variance + user


#: A grid: its 4x4 affine and its 3D shape.
Grid = tuple[np.ndarray, tuple[int, ...]]


def grid_of_run(run: xr.DataArray) -> Grid:
    """Return the grid (affine, shape) of an opened run."""
    return np.asarray(run.attrs["affine"], dtype=float), tuple(run.shape[:3])


def _on_grid(run: xr.DataArray, grid: Grid) -> bool:
    affine, shape = grid_of_run(run)
    return shape == tuple(grid[1]) and np.allclose(affine, grid[0])


def extract_and_clean(
    masker: NiftiMaskerCore,
    imgs: Any,
    confounds: Any = None,
    sample_mask: Any = None,
    *,
    reference_grid: Grid | None = None,
    high_variance_last: bool = False,
) -> xr.DataArray:
    """Return the lazy cleaned signals of ``imgs`` under ``masker``'s fitted mask.

    ``reference_grid``: a run on another grid is first resampled onto it
    (cubic spline, with nilearn's warning), as nilearn's MultiNiftiMasker
    brings every run onto the grid of the first one; the mask-grid
    resampling, if any, follows. ``high_variance_last``: see
    :func:`_all_confounds`.
    """
    if masker.standardize is True:
        warn_user(
            "standardize=True is deprecated (as in nilearn 0.15): use 'zscore_sample'.",
            FutureWarning,
        )
    description = describe_images(imgs, masker.verbose)
    if description is not None:
        log(f"Loading data from {description}", masker.verbose)
    run, fitted_mean = _open_in_budget_slabs(masker, imgs, reference_grid)
    if run.ndim not in (3, 4):
        raise DimensionError(
            f"Input data has incompatible dimensionality: expected a 3D or 4D image, "
            f"got {run.ndim}D of shape {run.shape}."
        )
    single_volume = run.ndim == 3
    input_affine = np.asarray(run.attrs["affine"], dtype=float)
    run_affine = input_affine
    all_confounds = _all_confounds(masker, run, confounds, high_variance_last)

    full_mask = np.asarray(masker.mask_img_.dataobj).astype(bool)
    full_affine = np.asarray(masker.mask_img_.affine, dtype=float)
    mask, mask_affine = full_mask, full_affine
    values = run.data
    if reference_grid is not None and not _on_grid(run, reference_grid):
        warn_user(
            "Affine is different across subjects. Realignment on first subject affine forced",
            UserWarning,
        )
        run_affine, reference_shape = reference_grid
        values = resample_volumes(values, input_affine, run_affine, reference_shape)
    signals_dtype = _signals_dtype(masker.dtype, run.dtype)
    if signals_dtype != output_dtype(run.dtype, "f"):
        values = values.astype(signals_dtype)
    if values.shape[:3] != mask.shape or not np.allclose(run_affine, mask_affine):
        warn_user(
            "imgs are being resampled to the mask_img resolution. This process is "
            "memory intensive. You might want to provide a target_affine that is equal "
            "to the affine of the imgs or resample the mask beforehand to save memory "
            "and computation time.",
            UserWarning,
        )
        mask, mask_affine = crop_to_mask(mask, mask_affine)
        log("Resampling images", masker.verbose)
        values = resample_volumes(values, run_affine, mask_affine, mask.shape)
    if masker.smoothing_fwhm is not None:
        log("Smoothing images", masker.verbose)
    log("Extracting region signals", masker.verbose)
    signals = extract_signals(
        values,
        mask,
        affine=mask_affine,
        dtype=signals_dtype,
        smoothing_fwhm=masker.smoothing_fwhm,
        block_bytes=extraction_budget(_signals_bytes(masker, run)),
    )

    log("Cleaning extracted signals", masker.verbose)
    clean_kwargs = {name: getattr(masker, name) for name in _CLEAN_PARAMETERS}
    # Booleans mean what nilearn 0.15 will spell 'zscore_sample' and None; mapping
    # them here spares users nilearn's warning on every transform with the default.
    if isinstance(masker.standardize, bool):
        clean_kwargs["standardize"] = "zscore_sample" if masker.standardize else None
    as_rows = signals[np.newaxis, :] if single_volume else signals
    cleaned = clean(
        as_rows,
        confounds=all_confounds,
        sample_mask=sample_mask,
        **clean_kwargs,
        **masker.clean_args_,
    )
    if single_volume:
        cleaned = cleaned[0]
    target = _target_dtype(masker.dtype, cleaned.dtype)
    if target is not None:
        cleaned = cleaned.astype(target)

    time = None if single_volume else _kept_times(run, sample_mask, cleaned.shape[0])
    if isinstance(cleaned, da.Array):
        # computed into memory, the blocks fill one result (no final concatenation)
        cleaned = in_memory_result(cleaned)
    return signals_dataarray(
        cleaned,
        full_mask,
        full_affine,
        time=time,
        masker_params=param_values(masker),
        provenance=input_provenance(run),
        mean_image=_mean_image(run, fitted_mean),
        mean_image_affine=input_affine,
    )


def _mean_image(run: xr.DataArray, fitted_mean: np.ndarray | None) -> Any:
    """Return the input's mean over time for the signals' attrs (float64).

    The mean ``fit`` computed from the same file is reused: recomputing it
    would share the read tasks with the extraction, but its per-slab partial
    sums (one float64 volume each) wait for the whole extraction's barrier,
    which cost 0.9 GB on a 2400-volume HCP-sized run and 7 GB on a 30 GB one.
    """
    if run.ndim == 3:
        return run.data
    if fitted_mean is not None:
        return np.asarray(fitted_mean, dtype=np.float64)
    return run.data.mean(axis=-1, dtype=np.float64)


def _kept_times(run: xr.DataArray, sample_mask: Any, n_kept: int) -> np.ndarray:
    """Time coordinate of the volumes left after scrubbing (``sample_mask``)."""
    times = np.asarray(run["time"]) if "time" in run.coords else np.arange(run.shape[-1])
    if n_kept == times.size:
        return times
    if sample_mask is not None and not isinstance(sample_mask, (list, tuple)):
        kept = times[np.asarray(sample_mask)]
        if kept.size == n_kept:
            return kept
    # Leading/trailing censored volumes were dropped (no extrapolation).
    return np.arange(n_kept)


def _signals_values(X: Any) -> Any:
    """Return the array inside ``X``: a store's or a DataArray's signals, or X itself."""
    signals = getattr(X, SIGNALS_NAME, None)
    if isinstance(signals, xr.DataArray):
        X = signals
    if isinstance(X, xr.DataArray):
        if X.name == SIGNALS_NAME:
            check_signals(X)  # daskmask's own signals: hold them to the contract
        return X.data
    if hasattr(X, "to_numpy") and not isinstance(X, (np.ndarray, da.Array)):
        return X.to_numpy()  # pandas / polars
    return X if isinstance(X, da.Array) else np.asarray(X)


def signals_to_image(
    masker: NiftiMaskerCore, X: Any, filename: Any = None, storage_options: Any = None
) -> nib.Nifti1Image:
    """Unmask ``X`` onto ``masker``'s mask grid (``inverse_transform``)."""
    values = _signals_values(X)
    if values.ndim == 2 and values.shape[0] == 1 and values.shape[1] != masker.n_elements_:
        values = values[0]
    if values.ndim > 2:
        raise DimensionError(
            f"inverse_transform takes 1D (n_voxels,) or 2D (n_time, n_voxels) signals; "
            f"got shape {values.shape}."
        )
    if values.shape[-1] != masker.n_elements_:
        expected = (masker.n_elements_,) if values.ndim == 1 else ("n_time", masker.n_elements_)
        raise ValueError(
            "Input to 'inverse_transform' has wrong shape.\n"
            f"Expected {expected}.\nGot {tuple(values.shape)}."
        )
    if values.dtype == bool:
        target = np.dtype(np.int32) if masker.dtype is None else np.dtype(masker.dtype)
        warn_user(f"Casting boolean input to {target}", UserWarning)
        values = values.astype(target)
    target = _target_dtype(masker.dtype, values.dtype)
    if target is not None:
        values = values.astype(target)
    log("Computing image from signals", masker.verbose)
    if filename is not None:
        written = unmask_to_file(
            values, masker.mask_img_, filename, storage_options=storage_options
        )
        return load_image_file(written, storage_options)
    if isinstance(values, da.Array):
        values = values.compute()
    return unmask(values, masker.mask_img_)
