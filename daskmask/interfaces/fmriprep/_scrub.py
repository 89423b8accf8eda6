"""Scrubbing: which volumes move too much, and the sample mask that leaves them out.

A volume is a motion outlier when its framewise displacement or its standardised
DVARS exceeds the threshold (Power et al. 2012). Full scrubbing (Power et al.
2014) also drops every stretch of kept volumes shorter than ``scrub`` volumes
between outliers, before the first or after the last.
"""

from __future__ import annotations

import numpy as np

from daskmask._warnings import warn_user


def motion_outliers(
    framewise_displacement: np.ndarray,
    std_dvars: np.ndarray,
    fd_threshold: float,
    std_dvars_threshold: float,
) -> np.ndarray:
    """Boolean mask of the volumes above either threshold (NaN counts as below)."""
    with np.errstate(invalid="ignore"):
        return (np.asarray(framewise_displacement, dtype=float) > fd_threshold) | (
            np.asarray(std_dvars, dtype=float) > std_dvars_threshold
        )


def drop_short_segments(outliers: np.ndarray, min_length: int) -> np.ndarray:
    """Also flag every run of kept volumes shorter than ``min_length``.

    Parameters
    ----------
    outliers : numpy.ndarray of bool
        The motion outliers, one entry per volume.
    min_length : int
        Shortest segment kept; 0 or less keeps every segment.

    Returns
    -------
    numpy.ndarray of bool
        A new mask. Nothing changes when no volume is an outlier (the whole
        run is one segment, whatever its length).

    """
    flagged = np.array(outliers, dtype=bool)
    if min_length <= 0 or not flagged.any():
        return flagged
    # Boundaries of the runs of kept volumes: +1 where one starts, -1 after it ends.
    kept = np.concatenate([[0], (~flagged).astype(np.int8), [0]])
    edges = np.diff(kept)
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    for start, stop in zip(starts, stops, strict=True):
        if stop - start < min_length:
            flagged[start:stop] = True
    return flagged


def sample_mask_from(excluded: np.ndarray | None) -> np.ndarray | None:
    """Return the indices of the kept volumes, or None when there is nothing to exclude from.

    Parameters
    ----------
    excluded : numpy.ndarray of bool or None
        Volumes to leave out; None when no component flags volumes at all.

    Returns
    -------
    numpy.ndarray or None
        Sorted indices of the kept volumes (int64); warns when none is left.

    """
    if excluded is None:
        return None
    sample_mask = np.flatnonzero(~np.asarray(excluded, dtype=bool))
    if sample_mask.size == 0:
        warn_user(
            "All volumes were flagged (non-steady-state or motion outliers): the sample mask "
            "is empty and no volume is left to analyse. Raise fd_threshold / "
            "std_dvars_threshold, lower scrub, or leave this run out.",
            RuntimeWarning,
        )
    return sample_mask
