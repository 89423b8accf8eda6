"""JSON-safe metadata: estimator parameters and attrs for xarray and Zarr."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """Return ``value`` as JSON data: dicts, lists, str, numbers, bools and None.

    Parameters
    ----------
    value : object
        Metadata: numpy arrays and scalars, paths, dtypes, mappings,
        sequences, nibabel images or plain Python values.

    Returns
    -------
    object
        Arrays become nested lists, numpy scalars Python numbers, paths and
        dtypes strings, tuples lists, images their file name (or a short
        description when in memory); anything else its ``repr``.

    """
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    get_filename = getattr(value, "get_filename", None)
    if callable(get_filename):
        filename = get_filename()
        if filename:
            return os.fspath(filename)
        return f"<in-memory {type(value).__name__} of shape {tuple(value.shape)}>"
    return repr(value)
