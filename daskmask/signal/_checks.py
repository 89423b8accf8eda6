"""Type and value checks of the arguments of :func:`daskmask.signal.clean`.

The messages follow nilearn's parameter validation word for word so that
code matching nilearn's errors keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

_SCALAR_TYPES = (float, np.floating, int, np.integer)
_SCALAR_NAMES = "float | numpy.floating | int | numpy.integer | None"
STANDARDIZE_VALUES = ("zscore_sample", "psc", True, False, None)


def check_type(value: Any, types: tuple[type, ...], name: str, names: str) -> None:
    """Raise ``TypeError`` unless ``value`` is an instance of ``types``.

    Booleans are refused unless ``bool`` itself is one of ``types``.
    """
    refused_bool = bool not in types and isinstance(value, bool)
    if refused_bool or not isinstance(value, types):
        raise TypeError(
            f"'{name}' must be of type(s): '{names}'.\nGot: '{value.__class__.__name__}'"
        )


def check_bool(value: Any, name: str) -> None:
    """Raise ``TypeError`` unless ``value`` is a bool."""
    check_type(value, (bool,), name, "<class 'bool'>")


def check_optional_scalar(value: Any, name: str) -> None:
    """Raise ``TypeError`` unless ``value`` is None, an int or a float."""
    if value is None:
        return
    check_type(value, _SCALAR_TYPES, name, _SCALAR_NAMES)


def check_in(value: Any, allowed: Iterable[Any], name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"'{name}' must be one of {allowed}.\n'{value}' was provided.")


def check_clean_params(
    detrend: Any,
    standardize: Any,
    standardize_confounds: Any,
    low_pass: Any,
    high_pass: Any,
    t_r: Any,
) -> None:
    """Check the types of the scalar arguments of ``clean``."""
    check_bool(detrend, "detrend")
    check_in(standardize, STANDARDIZE_VALUES, "standardize")
    check_bool(standardize_confounds, "standardize_confounds")
    check_optional_scalar(low_pass, "low_pass")
    check_optional_scalar(high_pass, "high_pass")
    check_optional_scalar(t_r, "t_r")
