"""Exceptions raised by the Zarr results store."""

from __future__ import annotations

from daskmask.exceptions import DaskmaskError


class StoreExistsError(DaskmaskError, FileExistsError):
    """A results store (or another file) already exists where one should be written.

    Pass ``overwrite=True`` to :func:`daskmask.storage.save` to replace a store.
    """


class IncompleteStoreError(DaskmaskError, ValueError):
    """A results store has no completion marker: its write failed or was interrupted."""


class NotAStoreError(DaskmaskError, ValueError):
    """A path is not a daskmask results store (or one of an unsupported format)."""


class StoreNotFoundError(NotAStoreError, FileNotFoundError):
    """A results store path does not exist."""


class SignalsLayoutError(DaskmaskError, ValueError):
    """Signals handed to :func:`daskmask.storage.save` do not follow the data contract.

    For instance: wrong dimensions, no voxel indices and no mask, or a mask,
    affine or mean image that disagrees with the signals.
    """
