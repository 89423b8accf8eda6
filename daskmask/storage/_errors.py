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


class CorruptStoreError(DaskmaskError, ValueError):
    """A results store is damaged: a chunk is missing or fails its checksum, or metadata is bad.

    Raised by :func:`daskmask.storage.open_results` (metadata, attributes, the
    list of chunks) and when the lazy arrays are read (a chunk removed or
    changed after the store was opened). The message names the store, the
    array and the chunk, and how to get a good store back.

    Attributes
    ----------
    path : str or None
        The store directory.
    array : str or None
        The damaged array, when one is.
    chunk : str or None
        The chunk key inside the array (for instance ``"c/0/3"``), when one is.

    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        array: str | None = None,
        chunk: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.array = array
        self.chunk = chunk

    def __reduce__(self) -> tuple:
        # keep the attributes when the error travels from a distributed worker
        return (_rebuild_corrupt, (self.args[0], self.path, self.array, self.chunk))


def _rebuild_corrupt(
    message: str, path: str | None, array: str | None, chunk: str | None
) -> CorruptStoreError:
    """Unpickle a :class:`CorruptStoreError` with its attributes."""
    return CorruptStoreError(message, path=path, array=array, chunk=chunk)
