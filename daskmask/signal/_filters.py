"""Temporal filters: Butterworth design and application, cosine drift terms."""

from __future__ import annotations

from typing import Any

import numpy as np

from daskmask._warnings import warn_user

FILTERS = ("butterworth", "cosine")
_EPS32 = float(np.finfo(np.float32).eps)
_BUTTERWORTH_KEYS = ("order", "padtype", "padlen")


def check_filter(
    filter: Any, low_pass: float | None, high_pass: float | None, t_r: float | None
) -> str | bool:
    """Validate the filter options and return the filter to apply.

    Returns
    -------
    "butterworth", "cosine" or False
        Butterworth without any cutoff is switched off (False).

    Raises
    ------
    ValueError
        Unknown filter, or a missing ``t_r`` / ``high_pass``.

    """
    if filter not in (*FILTERS, False):
        raise ValueError(f"Filter method {filter} not implemented.")
    if filter is False:
        if any(isinstance(cut, (float, int)) for cut in (low_pass, high_pass)):
            warn_user(
                "No filter type selected but cutoff frequency provided."
                "Will not perform filtering.",
            )
        return False
    if filter == "cosine":
        if t_r is None or high_pass is None:
            raise ValueError(
                "Repetition time (t_r) and low cutoff frequency (high_pass) "
                "must be specified for cosine filtering. "
                f"Got: '{t_r=}' and '{high_pass=}'"
            )
        return "cosine"
    if low_pass is None and high_pass is None:
        return False
    if t_r is None:
        raise ValueError(
            f"Repetition time (t_r) must be specified for butterworth filtering. Got: '{t_r=}'"
        )
    return "butterworth"


def butterworth_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Extract the ``butterworth__*`` keyword arguments (others are ignored).

    Raises
    ------
    TypeError
        For an unknown ``butterworth__`` option.

    """
    options = {}
    for key, value in kwargs.items():
        if not key.startswith("butterworth__"):
            continue
        name = key[len("butterworth__") :]
        if name not in _BUTTERWORTH_KEYS:
            raise TypeError(f"butterworth filter got an unexpected option {name!r}")
        options[name] = value
    return options


def _clip_cutoff(kind: str, freq: float, nyquist: float) -> float:
    """Keep a critical frequency inside ``[0, nyquist)``, warning when moved."""
    if freq >= nyquist:
        freq = nyquist - nyquist * 10 * _EPS32
        warn_user(
            f"The frequency specified for the {kind} pass filter is too high to "
            "be handled by a digital filter (superior to Nyquist frequency). "
            f"It has been lowered to {freq} (Nyquist frequency).",
        )
    elif freq < 0.0:
        freq = nyquist * _EPS32
        warn_user(
            f"The frequency specified for the {kind} pass filter is too low to "
            "be handled by a digital filter (must be non-negative). "
            f"It has been set to eps: {freq}.",
        )
    return freq


def design_butterworth(
    sampling_rate: float,
    low_pass: float | None,
    high_pass: float | None,
    order: int = 5,
) -> np.ndarray | None:
    """Second-order sections of the Butterworth filter, or None for no filter.

    Raises
    ------
    ValueError
        If ``high_pass >= low_pass``.

    """
    if low_pass is None and high_pass is None:
        return None
    if low_pass is not None and high_pass is not None and high_pass >= low_pass:
        raise ValueError(
            f"High pass cutoff frequency ({high_pass}) is greater than or equal "
            f"to low pass filter frequency ({low_pass}). This case is not "
            "handled by this function."
        )
    nyquist = sampling_rate * 0.5
    critical = []
    if high_pass is not None:
        critical.append(_clip_cutoff("high", high_pass, nyquist))
        btype = "high"
    if low_pass is not None:
        critical.append(_clip_cutoff("low", low_pass, nyquist))
        btype = "low"
    if len(critical) == 2:
        if critical[0] == critical[1]:
            warn_user(
                "Signals are returned unfiltered because band-pass critical "
                "frequencies are equal. Please check that inputs for "
                "sampling_rate, low_pass, and high_pass are valid.",
            )
            return None
        btype, wn = "band", critical
    else:
        wn = critical[0]
    # scipy.signal takes ~0.7 s to import: load it only when a filter is used.
    from scipy import signal as sp_signal

    return sp_signal.butter(N=order, Wn=wn, btype=btype, output="sos", fs=sampling_rate)


def apply_butterworth(
    x: np.ndarray, sos: np.ndarray, padtype: str | None = "odd", padlen: int | None = None
) -> np.ndarray:
    """Zero-phase filter every column of ``x``; C-ordered result of ``x``'s dtype."""
    from scipy import signal as sp_signal

    out = sp_signal.sosfiltfilt(sos, x, axis=0, padtype=padtype, padlen=padlen)
    # C order: later column means must sum samples in the same order as on
    # a C-ordered array (numpy sums pairwise along a contiguous axis).
    return np.ascontiguousarray(out, dtype=x.dtype)


def cosine_drift(high_pass: float, frame_times: np.ndarray) -> np.ndarray:
    """DCT-II drift regressors up to ``high_pass`` Hz, without the constant.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(n_frames, n_drifts)``.

    """
    n_frames = len(frame_times)
    dt = (frame_times[-1] - frame_times[0]) / (n_frames - 1)
    if high_pass * dt >= 0.5:
        warn_user(
            "High-pass filter will span all accessible frequencies and saturate "
            "the design matrix. You may want to reduce the high_pass value."
            f"The provided value is {high_pass} Hz",
        )
    order = min(n_frames - 1, int(np.floor(2 * n_frames * high_pass * dt)))
    normaliser = np.sqrt(2.0 / n_frames)
    samples = np.arange(n_frames)
    drifts = np.zeros((n_frames, order))
    for k in range(1, order + 1):
        drifts[:, k - 1] = normaliser * np.cos((np.pi / n_frames) * (samples + 0.5) * k)
    return drifts


def add_cosine_drift(
    confounds: np.ndarray | None, n_samples: int, high_pass: float, t_r: float
) -> np.ndarray | None:
    """Append the cosine drift regressors to ``confounds``.

    They are not appended (with a warning) when none can be built or when a
    user confound already correlates above 0.9 with one of them.
    """
    drifts = cosine_drift(high_pass, np.arange(n_samples) * t_r)
    n_drifts = drifts.shape[1]
    if n_drifts == 0:
        warn_user(
            "Cosine filter was not created. The time series might be too short "
            "or the high pass filter is not suitable for the data.",
        )
        return confounds
    if confounds is None:
        return drifts
    corr = np.corrcoef(drifts.T, confounds.T)
    np.fill_diagonal(corr, 0)
    if np.any(corr[:n_drifts] > 0.9):
        warn_user(
            "Cosine filter(s) exist in user supplied confounds.Use user supplied regressors only.",
        )
        return confounds
    return np.hstack((confounds, drifts))
