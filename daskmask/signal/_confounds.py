"""Loading and validation of confounds.

Confounds may be a numpy array (1D: one confound, 2D: samples x confounds),
a pandas DataFrame, the path of a CSV / TSV / text file, or a list / tuple of
those, which are stacked side by side.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from daskmask._fs import is_url, locate, storage_errors
from daskmask.exceptions import ConfoundsError

_DELIMITERS = " \t,;"
_TOP_LEVEL_TYPES = (list, tuple, str, np.ndarray, pd.DataFrame)
#: Rows and columns named in a non-finite confounds error before "and N more".
_ROWS_SHOWN = 5
_COLUMNS_SHOWN = 8


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


def _read_text(path: str) -> str:
    """Return the text of a confounds file: a local path, or an fsspec URL via ``daskmask._fs``.

    Raises ``FileNotFoundError`` for a missing local file; a URL's failures are
    daskmask's typed storage errors (missing object, credentials, endpoint).
    """
    if is_url(path):
        with storage_errors(path), locate(path).open("rb") as handle:
            # universal newlines, as a local file is read
            return io.TextIOWrapper(handle).read()
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found.")
    return Path(path).read_text()


def _genfromtxt(text: str, name: str, **kwargs: Any) -> np.ndarray:
    """Parse delimited text (the file ``name``), sniffing the delimiter if needed."""
    try:
        return np.genfromtxt(io.StringIO(text), loose=False, encoding=None, **kwargs)
    except ValueError:
        pass
    end = text.find("\n") + 1 or len(text)
    first_line, rest = text[:end], text[end:]
    try:
        dialect = csv.Sniffer().sniff(first_line, _DELIMITERS)
    except csv.Error as error:
        if _single_column(rest):
            # a single column with a header line: the header reads as NaN
            return np.genfromtxt(io.StringIO(text), encoding=None, **kwargs)
        raise TypeError(f"Could not read CSV file [{name}]: {error.args[0]}") from error
    return np.genfromtxt(io.StringIO(text), delimiter=dialect.delimiter, encoding=None, **kwargs)


def read_confounds_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a confounds file into a 2D float array.

    Parameters
    ----------
    path : str or path-like
        CSV, TSV or whitespace separated text file, a local path or any fsspec
        URL (``s3://...``). A first line whose first value is not a number is
        taken as a header and skipped.

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
    text = _read_text(path)
    array = _genfromtxt(text, path)
    if array.size and np.isnan(array.flat[0]):
        array = _genfromtxt(text, path, skip_header=1)
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


def _header_names(path: str, n_columns: int) -> list[str] | None:
    """Column names from the header line of a confounds file, or None without one.

    The header is the line :func:`read_confounds_file` skipped; the names are
    split at the first delimiter that gives one name per column.
    """
    first_line = _read_text(path).partition("\n")[0].strip()
    try:
        float(first_line.split()[0].strip(_DELIMITERS))
    except (ValueError, IndexError):
        pass
    else:
        return None  # numbers: no header
    for delimiter in ("\t", ",", ";", None):
        names = [name.strip().strip('"') for name in first_line.split(delimiter)]
        if len(names) == n_columns:
            return names
    return None


def _column_labels(confounds: Any) -> list[tuple[str, str]]:
    """``(source, column label)`` of every column of what :func:`load_confounds` stacks.

    The source is ``"file PATH"``, ``"DataFrame"`` or ``"array"``, with the item's
    position when ``confounds`` is a list; the label is the column's name when
    there is one (a DataFrame's, a file header's), else its number.
    """
    if isinstance(confounds, os.PathLike):
        confounds = os.fspath(confounds)
    several = isinstance(confounds, (list, tuple))
    items = confounds if several else (confounds,)
    labels: list[tuple[str, str]] = []
    for position, item in enumerate(items):
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        where = f"confounds[{position}], " if several else ""
        names: list[str] | None = None
        if isinstance(item, pd.DataFrame):
            source, names = f"{where}DataFrame", [str(name) for name in item.columns]
            n_columns = item.shape[1]
        elif isinstance(item, str):
            n_columns = read_confounds_file(item).shape[1]
            source, names = f"{where}file {item}", _header_names(item, n_columns)
        else:
            array = np.asarray(item)
            source, n_columns = f"{where}array", 1 if array.ndim == 1 else array.shape[1]
        for column in range(n_columns):
            label = f"column {column}"
            if names is not None:
                label = f"column {names[column]!r} (column {column})"
            labels.append((source, label))
    return labels


def _rows_text(rows: np.ndarray) -> str:
    """``"row 0"`` or ``"rows 0, 3, 5, 7, 9 and 4 more (9 rows)"``."""
    shown = ", ".join(str(row) for row in rows[:_ROWS_SHOWN])
    if rows.size == 1:
        return f"row {shown}"
    more = f" and {rows.size - _ROWS_SHOWN} more" if rows.size > _ROWS_SHOWN else ""
    return f"rows {shown}{more} ({rows.size} rows)"


def check_finite_confounds(
    stacked: np.ndarray, confounds: Any, used_rows: np.ndarray | None = None
) -> None:
    """Raise :class:`ConfoundsError` if a used row of the confounds holds NaN or Inf.

    Parameters
    ----------
    stacked : numpy.ndarray
        ``(n_samples, n_confounds)`` float array from :func:`load_confounds`.
    confounds : Any
        What the user passed (to name the files and columns in the message).
    used_rows : numpy.ndarray or None, default=None
        Rows that enter the regression; rows censored by ``sample_mask`` may
        hold anything, as in nilearn. None: every row.

    Raises
    ------
    ConfoundsError
        Naming the file (if any), the columns and the rows (time points, from 0),
        and how to fill or drop them.

    """
    used = stacked if used_rows is None else stacked[used_rows]
    finite = np.isfinite(used)
    if finite.all():
        return
    rows_of = np.arange(stacked.shape[0]) if used_rows is None else np.asarray(used_rows)
    labels = _column_labels(confounds)
    problems: list[str] = []
    bad_columns = np.flatnonzero(~finite.all(axis=0))
    for column in bad_columns[:_COLUMNS_SHOWN]:
        source, label = labels[column]
        kinds = []
        for kind, test in (("NaN", np.isnan), ("Inf", np.isinf)):
            rows = rows_of[test(used[:, column])]
            if rows.size:
                kinds.append(f"{kind} in {_rows_text(rows)}")
        problems.append(f"{source}: {label} has {' and '.join(kinds)}")
    if bad_columns.size > _COLUMNS_SHOWN:
        more = bad_columns.size - _COLUMNS_SHOWN
        problems.append(f"and {more} more column{'s' if more > 1 else ''}")
    raise ConfoundsError(
        "Confounds contain non-finite values (NaN or Inf), which cannot be regressed out:\n  "
        + ";\n  ".join(problems)
        + ".\nRows are time points, counted from 0 (a file's header line is not a row). "
        "Fill or drop these values before cleaning. fMRIPrep writes 'n/a' in the first row "
        "of derivative columns (*_derivative1, framewise_displacement, dvars, ...): fill "
        "them with 0 (e.g. pandas.read_csv(path, sep='\\t').fillna(0)), as nilearn's "
        "fMRIPrep loader (nilearn.interfaces.fmriprep.load_confounds) does after demeaning, "
        "or drop the column, or censor those volumes with sample_mask."
    )
