"""Exceptions and warnings raised by daskmask.

The types mirror nilearn's so that code written against nilearn catches the
same things: a wrong number of dimensions is a :class:`DimensionError` (a
``ValueError``), an empty computed mask first warns with :class:`MaskWarning`.
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError


class DaskmaskError(Exception):
    """Base class of every error raised by daskmask itself."""


class DimensionError(DaskmaskError, ValueError):
    """An image has the wrong number of dimensions for the operation."""


class BoundingBoxError(DaskmaskError, ValueError):
    """A target grid does not contain any of the data."""


class NiftiReadError(DaskmaskError, ValueError):
    """A file is not a readable NIfTI image (missing, truncated or corrupt)."""


class NiftiFileNotFoundError(NiftiReadError, FileNotFoundError):
    """A path or glob pattern names no file.

    Both a ``ValueError`` (what nilearn raises) and a ``FileNotFoundError``.
    """


class NotFittedError(DaskmaskError, _SklearnNotFittedError):
    """An estimator was used before ``fit``.

    A subclass of scikit-learn's ``NotFittedError`` (itself a ``ValueError``
    and an ``AttributeError``), so code written for scikit-learn catches it.
    """


class MaskWarning(UserWarning):
    """A computed mask is suspicious (for instance empty)."""
