"""Exceptions and warnings raised by daskmask.

The types mirror nilearn's so that code written against nilearn catches the
same things: a wrong number of dimensions is a :class:`DimensionError` (a
``ValueError``), an empty computed mask first warns with :class:`MaskWarning`.

:class:`NotFittedError` subclasses scikit-learn's, so it is defined on first use
(``daskmask.exceptions.NotFittedError`` or ``from daskmask.exceptions import
NotFittedError``): every module of daskmask imports this one, and scikit-learn
takes about 0.5 s to import, which the batch command and the functional API do
without.
"""

from __future__ import annotations

import threading


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


class InputChangedError(DaskmaskError, RuntimeError):
    """An input changed between the moment it was opened (or fitted) and a read.

    Its size, modification time, ETag or version no longer match what was
    recorded, so the data read now would not be the data the mask, plan or
    cached mean were made from.
    """


class ScratchSpaceError(DaskmaskError, OSError):
    """The scratch folder (``daskmask.temporary-directory``) ran out of space.

    Raised instead of a generic read error when writing an intermediate
    (decoded copy of a ``.nii.gz``, time-to-voxel reorganisation) fails with
    ``ENOSPC`` or ``EDQUOT``; the message names the folder and the setting.
    """


class ConfoundsError(DaskmaskError, ValueError):
    """A confounds table cannot be used (non-finite values, wrong length, ...).

    The message names the file (when there is one), the columns and rows.
    """


class ConfoundsNotFoundError(ConfoundsError, FileNotFoundError):
    """An fMRIPrep confounds file (the ``.tsv`` or its ``.json`` sidecar) is missing.

    The message names the run and the file that was looked for.
    """


class MissingConfoundsError(ConfoundsError):
    """An fMRIPrep confounds table lacks the columns a strategy needs.

    The message names the file, the missing columns and the strategy asking for them.
    """


class UnsupportedFmriprepError(ConfoundsError):
    """A confounds file comes from an fMRIPrep release daskmask cannot read (older than 1.2)."""


class DatasetError(DaskmaskError, ValueError):
    """A folder or URL is not a usable BIDS derivatives dataset, or a filter selects no run.

    The message names the folder or URL, what was looked for and how to fix it.
    """


class MissingExtraError(DaskmaskError, ImportError):
    """An optional dependency of the feature in use is not installed.

    The message names the feature and the ``pip install "daskmask[extra]"`` that adds it.
    """


class ClusterError(DaskmaskError, RuntimeError):
    """A cluster could not be started, reached or configured.

    The message names the kind of cluster, what went wrong and how to fix it.
    """


class ClusterExtraMissingError(ClusterError, MissingExtraError):
    """The package a kind of cluster needs is not installed (the message names the pip command)."""


class ClusterConfigError(ClusterError, ValueError):
    """A cluster's settings are missing or wrong (jobqueue.yaml, kubeconfig, an argument)."""


class StorageError(DaskmaskError, OSError):
    """Data could not be reached where it lives (a local folder or an object store).

    The message names the path or URL, what went wrong and how to fix it.
    """


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """An object, file or bucket does not exist."""


class StorageAccessError(StorageError, PermissionError):
    """Credentials are missing, wrong or not allowed to read or write the object."""


class StorageUnreachableError(StorageError, ConnectionError):
    """The storage endpoint did not answer (network, DNS, wrong endpoint URL)."""


class MaskWarning(UserWarning):
    """A computed mask is suspicious (for instance empty)."""


_not_fitted_lock = threading.Lock()


def _not_fitted_error() -> type[Exception]:
    """Define :class:`NotFittedError` over scikit-learn's, once; it is a module attribute after."""
    with _not_fitted_lock:  # two threads must not make two distinct classes
        if "NotFittedError" not in globals():
            from sklearn.exceptions import NotFittedError as SklearnNotFittedError

            class NotFittedError(DaskmaskError, SklearnNotFittedError):
                """An estimator was used before ``fit``.

                A subclass of scikit-learn's ``NotFittedError`` (itself a
                ``ValueError`` and an ``AttributeError``), so code written for
                scikit-learn catches it.

                The class is defined on first use (``daskmask.exceptions.NotFittedError``
                or ``from daskmask.exceptions import NotFittedError``): importing
                scikit-learn takes about 0.5 s (``scipy.stats``, through
                ``sklearn.utils``), which the batch command, the functional API and
                every other error do without.
                """

            # pickle and the documentation find it under its module-level name
            NotFittedError.__qualname__ = "NotFittedError"
            globals()["NotFittedError"] = NotFittedError  # later lookups skip __getattr__
        return globals()["NotFittedError"]


def __getattr__(name: str) -> object:
    # PEP 562: only called for a name not defined yet, i.e. NotFittedError before its first use
    if name == "NotFittedError":
        return _not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"NotFittedError"})
