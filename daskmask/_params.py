"""Declarative validation of estimator parameters, run at ``fit``.

Each estimator lists its constraints in a class attribute
``_parameter_constraints`` (as scikit-learn does); :func:`validate_params`
checks them all and raises nilearn's exception types with messages that say
which parameter is wrong, what was given and what is accepted.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class OfType:
    """The value must be an instance of one of ``types`` (bool is never a number)."""

    types: tuple[type, ...]
    names: str
    allow_none: bool = True

    def check(self, name: str, value: Any) -> None:
        """Raise TypeError if ``value`` is not accepted."""
        if value is None and self.allow_none:
            return
        is_bool = isinstance(value, (bool, np.bool_))
        accepts_bool = bool in self.types
        if (is_bool and not accepts_bool) or not isinstance(value, self.types):
            raise TypeError(
                f"'{name}' must be of type(s): {self.names}.\nGot: '{type(value).__name__}'"
            )


@dataclass(frozen=True)
class OneOf:
    """The value must be equal to one of ``options`` (compared by type and value)."""

    options: tuple[Any, ...]

    def check(self, name: str, value: Any) -> None:
        """Raise ValueError if ``value`` is not one of the options."""
        for option in self.options:
            if type(option) is type(value) and option == value:
                return
            if option is None and value is None:
                return
        raise ValueError(f"'{name}' must be one of {self.options}.\n{value!r} was provided.")


@dataclass(frozen=True)
class Smoothing:
    """A FWHM in mm: a non-negative number, or one per axis (3 numbers), or None."""

    def check(self, name: str, value: Any) -> None:
        """Raise TypeError/ValueError for anything but None, a number or 3 numbers."""
        if value is None:
            return
        values = value if isinstance(value, (tuple, list, np.ndarray)) else [value]
        if len(values) not in (1, 3) or any(
            isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) for v in values
        ):
            raise TypeError(
                f"'{name}' must be None, a number, or a sequence of 3 numbers "
                f"(one FWHM in mm per axis).\nGot: {value!r}"
            )
        if any(v < 0 for v in values):
            raise ValueError(f"'{name}' must be non-negative.\nGot: {value!r}")


@dataclass(frozen=True)
class DtypeLike:
    """None, "auto", or anything numpy understands as a dtype, except bool."""

    def check(self, name: str, value: Any) -> None:
        """Raise TypeError for bool or for values numpy cannot turn into a dtype."""
        if value is None or (isinstance(value, str) and value == "auto"):
            return
        try:
            dtype = np.dtype(value)
        except TypeError as exc:
            raise TypeError(
                f"'{name}' must be None, 'auto' or a numpy dtype.\nGot: {value!r}"
            ) from exc
        if dtype == np.bool_:
            raise TypeError(f"'{name}' cannot be bool")


NUMBER = OfType((numbers.Real,), "'float', 'int'")
BOOL = OfType((bool, np.bool_), "'bool'", allow_none=False)
INT = OfType((numbers.Integral,), "'int'", allow_none=False)
VERBOSE = OfType((numbers.Integral, bool, np.bool_), "'bool', 'int'", allow_none=False)
DICT = OfType((Mapping,), "'dict'")
ARRAY_LIKE = OfType((np.ndarray, list, tuple), "'ndarray', 'list', 'tuple'")


@dataclass(frozen=True)
class CacheLocation:
    """None, a cache directory (str or Path) or a ``joblib.Memory``-like object."""

    def check(self, name: str, value: Any) -> None:
        """Raise TypeError for anything else."""
        if (
            value is None
            or isinstance(value, (str, Path))
            or callable(getattr(value, "cache", None))
        ):
            return
        raise TypeError(
            f"'{name}' must be of type(s): 'None', 'str', 'Path', 'joblib.Memory'.\n"
            f"Got: '{type(value).__name__}'"
        )


MEMORY = CacheLocation()


def validate_params(estimator: Any) -> None:
    """Check every parameter of ``estimator`` against its ``_parameter_constraints``."""
    for name, constraint in estimator._parameter_constraints.items():
        constraint.check(name, getattr(estimator, name))


def param_values(estimator: Any) -> dict[str, Any]:
    """Return ``estimator``'s parameters (its constructor's arguments) and their values.

    What scikit-learn's ``get_params`` gives for daskmask's maskers, in the same
    (alphabetical) order, for any object, the plain masker core included (the
    batch masks without scikit-learn): the signals record it in their ``attrs``.
    """
    names = sorted(inspect.signature(type(estimator).__init__).parameters)
    return {name: getattr(estimator, name) for name in names if name != "self"}
