"""Shared helpers of the signal cleaning tests (nilearn is the oracle)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


def signals(shape: tuple[int, int], dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    """fMRI-like random signals: a positive baseline, a drift and noise."""
    rng = np.random.default_rng(seed)
    n, v = shape
    if np.dtype(dtype).kind in "iu":
        return rng.integers(200, 800, size=shape).astype(dtype)
    base = rng.uniform(50, 150, size=v)
    drift = np.linspace(0, 1, n)[:, None] * rng.normal(0, 5, size=v)
    return (base + drift + rng.normal(0, 3, size=shape)).astype(dtype)


def confounds(n: int, k: int = 3, seed: int = 1) -> np.ndarray:
    """Random float64 confounds of shape (n, k)."""
    return np.random.default_rng(seed).normal(size=(n, k))


def run_recording(func: Callable[..., Any], *args: Any, **kwargs: Any):
    """Call ``func``; return its result and the set of (category, message) warned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args, **kwargs)
    # numpy's RuntimeWarnings (nilearn divides by a zero mean before zeroing
    # the column; daskmask silences that) are not part of the contract.
    return result, {
        (w.category, str(w.message)) for w in caught if w.category is not RuntimeWarning
    }


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Our result equals nilearn's: same shape and dtype, values within tolerance.

    float32: rtol 1e-5 and atol 1e-5 * max|theirs| (the operations are the
    same, in the same dtype; only summation orders inside BLAS / LAPACK and
    the spline evaluation may differ: on a psc band-pass with confounds and
    scrubbing, daskmask's and nilearn's float32 results are both 3.0e-5 from
    the float64 result on a maximum of 11.2, and 3.0e-5 from each other).
    float64: rtol 1e-9, atol 1e-11 * max.
    """
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype
    scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
    if theirs.dtype == np.float32:
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * scale)
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-11 * scale)


def mirror_safe_mask(n: int) -> np.ndarray:
    """Kept indices censoring 0, 1 and two middle samples.

    No censored sample has a censored mirror (n - 1 - i), so nilearn's
    interpolation (which writes at mirrored positions) is right on it.
    """
    censored = {0, 1, n // 3, n // 3 + 1}
    assert not censored & {n - 1 - i for i in censored}
    return np.array([i for i in range(n) if i not in censored])
