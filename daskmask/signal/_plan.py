"""Pure planning of a cleaning: everything that does not depend on the signals.

:func:`make_plan` validates every argument of ``clean`` once and precomputes,
for each run, the rows it takes, the spline weights that fill censored
samples, the rows kept before and after filtering, the Butterworth
coefficients and the orthonormal basis of the processed confounds. Applying
the plan to a block of columns (``daskmask.signal._clean``) then needs no
further decision, so the same plan serves every voxel block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

from daskmask._warnings import warn_user
from daskmask.signal._checks import check_clean_params, check_in
from daskmask.signal._confounds import as_float, check_finite_confounds, load_confounds
from daskmask.signal._detrend import detrend as detrend_columns
from daskmask.signal._filters import (
    add_cosine_drift,
    apply_butterworth,
    butterworth_options,
    check_filter,
    design_butterworth,
)
from daskmask.signal._sample_mask import (
    fill_censored,
    interpolation_weights,
    validate_sample_mask,
)
from daskmask.signal._standardize import normalize_standardize, zscore

_EPS64 = float(np.finfo(np.float64).eps)
_RANK_TOLERANCE = 100.0 * _EPS64
DETREND_ONE_SAMPLE = (
    "Detrending of 3D signal has been requested but would lead to zero values. Skipping."
)
STANDARDIZE_ONE_SAMPLE = (
    "Standardization of 3D signal has been requested but would lead to zero values. Skipping."
)


@dataclass(frozen=True)
class RunPlan:
    """What to do with the samples of one run.

    Attributes
    ----------
    rows : numpy.ndarray
        Indices of the run's samples in the input.
    kept, filled, weights : numpy.ndarray or None
        Spline filling of censored samples (Butterworth with ``sample_mask``):
        ``x[filled] = weights @ x[kept]`` (indices within the run).
    span : numpy.ndarray or None
        Samples (within the run) kept before detrending: the censoring mask
        without Butterworth, the span of the kept samples with it.
    censor : numpy.ndarray or None
        Samples (within ``span``) kept after filtering.
    detrend : bool
        Remove mean and linear trend.
    sos : numpy.ndarray or None
        Butterworth second-order sections.
    padtype, padlen
        ``sosfiltfilt`` padding.
    basis : numpy.ndarray or None
        Orthonormal basis of the processed confounds, ``(n_out, rank)``.
    n_out : int
        Number of output samples of the run.

    """

    rows: np.ndarray
    kept: np.ndarray | None
    filled: np.ndarray | None
    weights: np.ndarray | None
    span: np.ndarray | None
    censor: np.ndarray | None
    detrend: bool
    sos: np.ndarray | None
    padtype: str | None
    padlen: int | None
    basis: np.ndarray | None
    n_out: int


@dataclass(frozen=True)
class CleanPlan:
    """A validated, signal-independent description of a cleaning.

    Attributes
    ----------
    n_samples : int
        Number of input samples.
    dtype : numpy.dtype
        Working and output dtype.
    ensure_finite : bool
        Replace non-finite input values by 0.
    standardize : str or None
        "zscore_sample", "psc" or None.
    runs : tuple of RunPlan
        In the sorted order of the run labels (the output order).

    """

    n_samples: int
    dtype: np.dtype
    ensure_finite: bool
    standardize: str | None
    runs: tuple[RunPlan, ...]

    @property
    def n_out(self) -> int:
        """Number of output samples (all runs)."""
        return sum(run.n_out for run in self.runs)

    @property
    def output_rows(self) -> np.ndarray:
        """Input sample index of every output sample, in output order."""
        parts = []
        for run in self.runs:
            rows = run.rows if run.span is None else run.rows[run.span]
            parts.append(rows if run.censor is None else rows[run.censor])
        return np.concatenate(parts)


def _split_runs(runs: Any, n_samples: int) -> list[np.ndarray]:
    if runs is None:
        return [np.arange(n_samples)]
    runs = np.asarray(runs)
    if len(runs) != n_samples:
        raise ValueError(
            f"The length of the run vector ({len(runs)}) does not match the "
            f"length of the signals ({n_samples})"
        )
    return [np.flatnonzero(runs == label) for label in np.unique(runs)]


def _scale_by_max(confounds: np.ndarray) -> np.ndarray:
    scale = np.max(np.abs(confounds), axis=0)
    scale[scale == 0] = 1
    return confounds / scale


def _confound_basis(confounds: np.ndarray, standardize_confounds: bool) -> np.ndarray:
    """Orthonormal basis of the column space (QR with column pivoting)."""
    if standardize_confounds:
        if confounds.shape[0] == 1:
            warn_user(STANDARDIZE_ONE_SAMPLE)
        else:
            confounds = zscore(confounds)
    else:
        confounds = _scale_by_max(confounds)
    q, r, _ = linalg.qr(confounds, mode="economic", pivoting=True)
    return q[:, np.abs(np.diag(r)) > _RANK_TOLERANCE]


def _plan_run(
    rows: np.ndarray,
    kept: np.ndarray | None,
    confounds: np.ndarray | None,
    *,
    filter_type: str | bool,
    sos: np.ndarray | None,
    butterworth: dict[str, Any],
    detrend: bool,
    standardize_confounds: bool,
    high_pass: float | None,
    t_r: float | None,
    extrapolate: bool,
) -> RunPlan:
    n_run = len(rows)
    conf = None if confounds is None else confounds[rows]
    if filter_type == "cosine":
        conf = add_cosine_drift(conf, n_run, high_pass, t_r)
    filled = weights = span = censor = None
    interpolate = kept is not None and filter_type == "butterworth"
    if interpolate:
        filled, weights, span = interpolation_weights(kept, n_run, t_r, extrapolate)
        censor = kept - span[0]
        if conf is not None:
            conf = conf.copy()
            fill_censored(conf, kept, filled, weights)
            conf = conf[span]
    elif kept is not None:
        span = kept
        if conf is not None:
            conf = conf[kept]
    n_work = n_run if span is None else len(span)
    if detrend:
        if n_work == 1:
            warn_user(DETREND_ONE_SAMPLE)
        elif conf is not None:
            conf = detrend_columns(conf)
    padtype = butterworth.get("padtype", "odd")
    padlen = butterworth.get("padlen")
    if filter_type == "butterworth" and sos is not None:
        probe = np.zeros((n_work, 1)) if conf is None else conf
        probe = apply_butterworth(probe, sos, padtype, padlen)
        conf = None if conf is None else probe
    else:
        sos = None
    if interpolate and conf is not None:
        conf = conf[censor]
    n_out = n_work if censor is None else len(censor)
    basis = None if conf is None else _confound_basis(conf, standardize_confounds)
    return RunPlan(
        rows=rows,
        kept=kept if interpolate else None,
        filled=filled,
        weights=weights,
        span=span,
        censor=censor,
        detrend=detrend and n_work > 1,
        sos=sos,
        padtype=padtype,
        padlen=padlen,
        basis=basis,
        n_out=n_out,
    )


def make_plan(
    n_samples: int,
    dtype: Any,
    runs: Any = None,
    detrend: bool = True,
    standardize: Any = "zscore_sample",
    sample_mask: Any = None,
    confounds: Any = None,
    standardize_confounds: bool = True,
    filter: Any = "butterworth",
    low_pass: float | None = None,
    high_pass: float | None = None,
    t_r: float | None = 2.5,
    ensure_finite: bool = False,
    extrapolate: bool = False,
    **kwargs: Any,
) -> CleanPlan:
    """Validate the arguments of ``clean`` and plan the cleaning.

    Parameters
    ----------
    n_samples : int
        Number of samples (rows) of the signals.
    dtype : numpy dtype
        dtype of the signals.
    runs, detrend, standardize, sample_mask, confounds, \
standardize_confounds, filter, low_pass, high_pass, t_r, ensure_finite, \
extrapolate, kwargs
        As :func:`daskmask.signal.clean`.

    Returns
    -------
    CleanPlan

    Raises
    ------
    TypeError, ValueError, IndexError, FileNotFoundError
        As :func:`daskmask.signal.clean`.

    """
    check_clean_params(detrend, standardize, standardize_confounds, low_pass, high_pass, t_r)
    if confounds is not None and not detrend and not standardize_confounds:
        warn_user(
            "When confounds are provided, one must perform detrend and/or "
            "standardize confounds. "
            f"You provided detrend={detrend}, "
            f"standardize_confounds={standardize_confounds}. "
            "If confounds were not standardized or demeaned before passing to "
            "signal.clean signal will not be correctly cleaned. ",
        )
    filter_type = check_filter(filter, low_pass, high_pass, t_r)
    run_rows = _split_runs(runs, n_samples)
    given_confounds = confounds
    confounds = load_confounds(confounds, n_samples)
    masks = validate_sample_mask(sample_mask, [len(rows) for rows in run_rows])
    if confounds is not None:
        # Only rows that enter the regression: censored ones may hold NaN, as in nilearn.
        used = None
        if masks is not None:
            used = np.concatenate([rows[m] for rows, m in zip(run_rows, masks, strict=True)])
        check_finite_confounds(confounds, given_confounds, used)
    check_in(ensure_finite, [True, False], "ensure_finite")
    standardize = normalize_standardize(standardize)
    butterworth = butterworth_options(kwargs)
    sos = None
    if filter_type == "butterworth":
        sos = design_butterworth(1.0 / t_r, low_pass, high_pass, butterworth.get("order", 5))
    elif filter_type == "cosine" and low_pass is not None:
        warn_user("low_pass is not implemented for filter='cosine'")
    plans = tuple(
        _plan_run(
            rows,
            None if masks is None else masks[i],
            confounds,
            filter_type=filter_type,
            sos=sos,
            butterworth=butterworth,
            detrend=detrend,
            standardize_confounds=standardize_confounds,
            high_pass=high_pass,
            t_r=t_r,
            extrapolate=extrapolate,
        )
        for i, rows in enumerate(run_rows)
    )
    if standardize is not None and any(plan.n_out == 1 for plan in plans):
        warn_user(STANDARDIZE_ONE_SAMPLE)
    return CleanPlan(
        n_samples=n_samples,
        dtype=as_float(np.empty(0, dtype=dtype)).dtype,
        ensure_finite=bool(ensure_finite),
        standardize=standardize,
        runs=plans,
    )
