"""Loading and validation of confounds.

Confounds may be a numpy array (1D: one confound, 2D: samples x confounds),
a pandas DataFrame, the path of a CSV / TSV / text file, or a list / tuple of
those, which are stacked side by side.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_DELIMITERS = " \t,;"
_TOP_LEVEL_TYPES = (list, tuple, str, np.ndarray, pd.DataFrame)


def as_float(data: np.ndarray) -> np.ndarray:
    """Return ``data`` as floats: 8-byte non floats to float64, others float32.

    Float arrays are returned unchanged (same object).
    """
    if data.dtype.kind == "f":
        return data
    if data.dtype.itemsize == 8:
        return data.astype(np.float64)
    return data.astype(np.float32)


def _single_column(text: str) -> bool:
    """Whether every non-empty line of ``text`` is one number."""
    try:
        [float(line) for line in text.split("\n") if line.strip()]
    except ValueError:
        return False
    return True


def _genfromtxt(path: str, **kwargs: Any) -> np.ndarray:
    """Read a delimited text file, sniffing the delimiter if needed."""
    try:
        return np.genfromtxt(path, loose=False, encoding=None, **kwargs)
    except ValueError:
        pass
    with Path(path).open() as handle:
        first_line = handle.readline()
        rest = handle.read()
    try:
        dialect = csv.Sniffer().sniff(first_line, _DELIMITERS)
    except csv.Error as error:
        if _single_column(rest):
            # a single column with a header line: the header reads as NaN
            return np.genfromtxt(path, encoding=None, **kwargs)
        raise TypeError(f"Could not read CSV file [{path}]: {error.args[0]}") from error
    return np.genfromtxt(path, delimiter=dialect.delimiter, encoding=None, **kwargs)


def read_confounds_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a confounds file into a 2D float array.

    Parameters
    ----------
    path : str or path-like
        CSV, TSV or whitespace separated text file. A first line whose first
        value is not a number is taken as a header and skipped.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_samples, n_confounds)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    TypeError
        If the delimiter cannot be determined.

    """
    path = os.fspath(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found.")
    array = _genfromtxt(path)
    if array.size and np.isnan(array.flat[0]):
        array = _genfromtxt(path, skip_header=1)
    if array.ndim == 0:
        array = array.reshape(1, 1)
    elif array.ndim == 1:
        array = array[:, np.newaxis]
    return array


def _incorrect_length(n_samples: int, length: int) -> ValueError:
    return ValueError(
        "Confound signal has an incorrect length. "
        f"Signal length: {n_samples}; confound length: {length}."
    )


def _one_confound(confound: Any, n_samples: int) -> np.ndarray:
    """Return one confound item as a validated 2D array."""
    if isinstance(confound, pd.DataFrame):
        confound = confound.to_numpy()
    if isinstance(confound, (str, os.PathLike)):
        array = read_confounds_file(confound)
    elif isinstance(confound, np.ndarray):
        array = confound
        if array.ndim == 1:
            array = array[:, np.newaxis]
        elif array.ndim != 2:
            raise ValueError(f"confound array has an incorrect number of dimensions: {array.ndim}")
    else:
        raise TypeError(f"confound has an unhandled type: {confound.__class__}")
    if array.shape[0] != n_samples:
        raise _incorrect_length(n_samples, array.shape[0])
    return array


def load_confounds(confounds: Any, n_samples: int) -> np.ndarray | None:
    """Load, validate and stack confounds.

    Parameters
    ----------
    confounds : None, numpy.ndarray, pandas.DataFrame, str, path-like or list
        A 1D array is one confound; a 2D array has shape
        ``(n_samples, n_confounds)``; a path names a CSV / TSV / text file with
        an optional one-line header; a list or tuple of any of those is
        stacked column-wise.
    n_samples : int
        Number of samples (time points) of the signals.

    Returns
    -------
    numpy.ndarray or None
        Float array of shape ``(n_samples, n_confounds)`` (integer confounds
        become float32, or float64 for 8-byte integers), or None.

    Raises
    ------
    TypeError
        For an unsupported type.
    ValueError
        For a wrong number of dimensions or of samples.
    FileNotFoundError
        For a missing file.

    """
    if confounds is None:
        return None
    if isinstance(confounds, os.PathLike):
        confounds = os.fspath(confounds)
    if not isinstance(confounds, _TOP_LEVEL_TYPES):
        names = ", ".join(str(t) for t in _TOP_LEVEL_TYPES)
        raise TypeError(
            f"'confounds' must be of type(s): '{names}'.\nGot: '{confounds.__class__.__name__}'"
        )
    items = confounds if isinstance(confounds, (list, tuple)) else (confounds,)
    arrays = [_one_confound(item, n_samples) for item in items]
    return as_float(np.hstack(arrays))
