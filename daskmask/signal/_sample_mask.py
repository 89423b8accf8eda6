"""Validation of ``sample_mask`` and spline interpolation of censored volumes."""

from __future__ import annotations

from typing import Any

import numpy as np

from daskmask.signal._errors import AllVolumesRemovedError

_MASK_TYPES = (list, tuple, np.ndarray)


def _to_indices(mask: Any) -> np.ndarray:
    """Boolean masks become the indices of their True values."""
    if all(type(value) is bool or type(value) is np.bool_ for value in mask):
        return np.flatnonzero(np.asarray(mask, dtype=bool))
    return np.asarray(mask)


def _as_int32(mask: np.ndarray, run: int) -> np.ndarray:
    if mask.size == 0:
        raise AllVolumesRemovedError(run)
    if np.min(mask) < 0:
        raise ValueError("sample_mask should not contain negative values.")
    highest = np.max(mask)
    if highest > np.iinfo(np.int32).max:
        raise ValueError(
            f"Max value in sample mask is larger than what can be represented by int32: {highest}."
        )
    return np.asarray(mask, dtype=np.int32)


def validate_sample_mask(sample_mask: Any, run_lengths: list[int]) -> list[np.ndarray] | None:
    """Check ``sample_mask`` and return one int32 index array per run.

    Parameters
    ----------
    sample_mask : None, numpy.ndarray, list or tuple
        Indices of the kept samples or a boolean mask (True = kept); with
        several runs, a list with one of those per run (in the sorted order of
        the run labels).
    run_lengths : list of int
        Number of samples of each run.

    Returns
    -------
    list of numpy.ndarray or None
        Kept indices of each run, relative to the start of the run.

    Raises
    ------
    TypeError
        If ``sample_mask`` is not an array, list or tuple.
    ValueError
        Negative index, or number of masks different from number of runs.
    IndexError
        A mask longer than its run, or an index past its end.
    AllVolumesRemovedError
        A mask keeps no sample.

    """
    if sample_mask is None:
        return None
    if not isinstance(sample_mask, _MASK_TYPES):
        names = ", ".join(str(t) for t in _MASK_TYPES)
        raise TypeError(
            f"'sample_masks' must be of type(s): '{names}'.\n"
            f"Got: '{sample_mask.__class__.__name__}'"
        )
    masks = (sample_mask,) if isinstance(sample_mask, np.ndarray) else sample_mask
    checked = [_as_int32(_to_indices(mask), i + 1) for i, mask in enumerate(masks)]
    n_runs = len(run_lengths)
    if len(checked) != n_runs:
        raise ValueError(
            f"Number of sample_mask ({len(checked)}) not matching number of runs ({n_runs})."
        )
    for i, (mask, length) in enumerate(zip(checked, run_lengths, strict=True)):
        if len(mask) > length:
            raise IndexError(
                f"sample_mask {i + 1} of {n_runs} is has more timepoints than "
                f"the current run ;sample_mask contains {len(mask)} index but "
                f"the run has {length} timepoints."
            )
        invalid = mask[mask >= length]
        if invalid.size:
            raise IndexError(
                f"sample_mask {i + 1} of {n_runs} contains invalid index "
                f"{invalid}. The signal contains {length} time points."
            )
    return checked


def interpolation_weights(
    kept: np.ndarray, n_samples: int, t_r: float, extrapolate: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plan the cubic-spline filling of censored samples.

    The not-a-knot cubic spline through the kept samples is linear in their
    values, so the filled values are ``weights @ x[kept]``.

    Parameters
    ----------
    kept : numpy.ndarray
        Sorted indices of the kept samples.
    n_samples : int
        Length of the run.
    t_r : float
        Sampling interval (the spline's abscissae are ``arange(n) * t_r``).
    extrapolate : bool
        Whether censored samples before the first / after the last kept one
        are extrapolated; if not they are dropped.

    Returns
    -------
    filled : numpy.ndarray
        Indices of the censored samples that receive a value.
    weights : numpy.ndarray
        float64, shape ``(len(filled), len(kept))``.
    span : numpy.ndarray
        Indices of the samples that remain (all of them with extrapolation,
        else from the first to the last kept sample).

    """
    # scipy.interpolate (and scipy.optimize, which it imports) takes ~0.2 s to import:
    # load it only when censored volumes are interpolated, not on every start-up.
    from scipy.interpolate import CubicSpline

    times = np.arange(n_samples) * t_r
    spline = CubicSpline(times[kept], np.eye(len(kept)), extrapolate=extrapolate)
    censored = np.setdiff1d(np.arange(n_samples), kept)
    if extrapolate:
        span = np.arange(n_samples)
    else:
        span = np.arange(kept[0], kept[-1] + 1)
        censored = censored[(censored > kept[0]) & (censored < kept[-1])]
    weights = spline(times[censored]) if censored.size else np.empty((0, len(kept)))
    return censored, np.asarray(weights, dtype=np.float64), span


def fill_censored(
    x: np.ndarray, kept: np.ndarray, filled: np.ndarray, weights: np.ndarray
) -> None:
    """Write the interpolated values of the censored rows of ``x`` in place."""
    if filled.size:
        x[filled] = weights @ x[kept]
