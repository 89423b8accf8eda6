"""Storage backends: how a results store is written, made complete, replaced and read.

:func:`daskmask.storage.save` and :func:`daskmask.storage.open_results` know
only the small interface :class:`StoreBackend`; each place a store can live is
one class here, picked by :func:`backend_for` from the store's
:class:`~daskmask._fs.Location`. Adding a backend is adding one class to
:data:`BACKENDS`.

Two backends exist:

:class:`LocalBackend` (a local path)
    The store is written into a leased hidden work folder beside its final
    name, the manifest and the ``complete`` marker are written last, and the
    store is renamed into place; an overwrite swaps the old and new stores in
    one atomic ``renameat2(RENAME_EXCHANGE)`` (see
    :mod:`daskmask.storage._commit`). The path holds the old complete store
    or the new one, never a mix.

:class:`ObjectStoreBackend` (any other fsspec URL: ``s3://``, ``gs://``, ``az://``, ``memory://``)
    Object stores have no rename, so the store is written at its final
    prefix and is complete only once its root ``zarr.json``, rewritten as the
    very last object, says ``complete: true`` and holds the manifest. The
    first object written is a placeholder root saying ``complete: false``:
    from then on, until the last write, ``open_results`` refuses the prefix
    with :class:`IncompleteStoreError`. An overwrite first invalidates the old
    store (that placeholder replaces its root in one PUT), then deletes its
    other objects, then writes the new store, marker last. An interrupted
    write or overwrite therefore leaves the old complete store (if it was
    interrupted before the invalidation) or a store refused as incomplete,
    never objects of two stores that open as one. Each object is written by
    one PUT (or one multipart upload, which S3 makes visible only when it
    completes), so no object is ever seen half written.

    The metadata (every array's ``zarr.json``, and the small arrays that are
    already in memory) is first written by xarray into an in-memory staging
    store and then sent in one batch of concurrent PUTs
    (:meth:`ObjectStoreBackend.publish`): written straight to the object
    store, xarray's and zarr's checks and writes took 70-80 sequential
    requests (0.4-0.9 s on a local S3 server). An overwrite deletes only
    the old objects the new store does not write again: the chunks it writes
    at the same keys are replaced by their PUTs (all of them before the
    marker, or the write failed and everything is removed), which spares a
    deletion of every chunk (0.6 s for the HCP-like run's 90 objects).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr
from zarr.core.buffer import Buffer
from zarr.storage import FsspecStore

from daskmask._fs import Location, pipe_buffer, share_botocore_models, storage_errors
from daskmask._memory import release_free_memory
from daskmask._version import __version__
from daskmask.exceptions import StorageAccessError, StorageUnreachableError
from daskmask.storage import _commit
from daskmask.storage import _layout as layout
from daskmask.storage._errors import StoreExistsError
from daskmask.storage._guarded import GuardedLocalStore
from daskmask.storage._integrity import (
    CheckedFsspecStore,
    CheckedLocalStore,
    build_manifest,
    chunk_grid,
    chunk_keys,
)
from daskmask.storage._tree import STORE_KEY, LocalTree, ObjectTree, StoreTree

logger = logging.getLogger(__name__)

#: The root metadata document of a store.
ROOT = "zarr.json"


def is_debris(keys: set[str]) -> bool:
    """Whether object keys are only arrays of a results store (metadata and chunks)."""
    return all(STORE_KEY.match(key) for key in keys)


@dataclass
class WriteTarget:
    """A store being written: where, through which Zarr store, and the backend's state.

    Attributes
    ----------
    location : Location
        Where the store will be once complete.
    store : zarr.abc.store.Store
        The Zarr store the arrays are written into.
    mode : str
        The ``to_zarr`` mode to write with.
    state : dict
        What the backend needs to commit or abort (work folder, lease, ...).
    staging : zarr.abc.store.Store or None
        The store the metadata is written into first, or None (into ``store``).

    """

    location: Location
    store: Any
    mode: str
    state: dict[str, Any] = field(default_factory=dict)
    #: Where ``to_zarr`` writes the metadata first (None: into ``store``);
    #: :meth:`StoreBackend.publish` then puts it in place.
    staging: Any = None


def mark_complete(store: Any, tree: StoreTree) -> None:
    """Record the manifest and set the completion marker: the last write of a store.

    The manifest is read back from the arrays' metadata, after checking that
    every chunk of every array is there (``tree`` lists what was written).
    """
    attrs = json.loads(tree.read(ROOT))["attributes"]
    manifest = build_manifest(tree, attrs)
    group = zarr.open_group(store, mode="r+", zarr_format=3)
    group.attrs.update({layout.MANIFEST: manifest, layout.COMPLETE: True})


#: Chunks at least this large give the free heap memory back after their upload.
TRIM_AFTER_BYTES = 1 << 20


class ObjectWriteStore(FsspecStore):
    """zarr's FsspecStore, whose writes send the encoded chunk's memory without a copy.

    zarr's ``FsspecStore.set`` hands the file system ``bytes(chunk)``, a copy
    of every chunk while it uploads; this store hands over the chunk's own
    memory (see :func:`daskmask._fs.pipe_buffer`).

    After each chunk's upload the free pages of glibc's heaps go back to the
    system (:func:`daskmask._memory.release_free_memory`). On dask's threads a
    save frees each block's buffers (the cleaned block, its float copies, the
    encoded chunk) in the malloc arenas of several threads (dask's, zarr's
    event loop), which keep them for reuse: on the HCP-like run 190-200 MiB
    of free heap memory was resident throughout an S3 save, and the save's
    peak was 585-598 MiB against 512-518 MiB with the trim (three pairs of
    runs, its CPU time unchanged: 5.3-6.7 s against 5.3-6.1 s). The upload
    paces the save (0.1-0.2 s per 15 MB chunk over S3), and the pages given
    back are only those of buffers already freed. Everything else is zarr's.
    """

    async def set(
        self, key: str, value: Buffer, byte_range: tuple[int, int] | None = None
    ) -> None:
        """Write ``value`` at ``key`` (see ``zarr.storage.FsspecStore.set``)."""
        data = value.as_numpy_array() if isinstance(value, Buffer) else None
        if byte_range is not None or data is None or not data.flags.c_contiguous:
            await super().set(key, value, byte_range)  # zarr's checks and errors
            return
        if not self._is_open:
            await self._open()
        self._check_writable()
        root = self.path.rstrip("/")
        await pipe_buffer(self.fs, f"{root}/{key}" if root else key, data)
        if data.nbytes >= TRIM_AFTER_BYTES:
            release_free_memory()


class StoreBackend(ABC):
    """Where a results store lives, and how it is written and read there."""

    @classmethod
    @abstractmethod
    def handles(cls, location: Location) -> bool:
        """Whether this backend writes and reads stores at ``location``."""

    @abstractmethod
    def check_target(self, location: Location, overwrite: bool) -> None:
        """Raise StoreExistsError unless ``location`` is free (or replaceable, with overwrite)."""

    @abstractmethod
    def begin(self, location: Location, overwrite: bool) -> WriteTarget:
        """Prepare the write of a new store to ``location``; return where to write it."""

    def publish(self, target: WriteTarget) -> None:  # noqa: B027 - optional hook
        """Put the metadata written into ``target.staging`` in place (nothing by default)."""
        return None

    @abstractmethod
    def commit(self, target: WriteTarget, overwrite: bool) -> None:
        """Make the written store complete and put it in place (the marker last)."""

    @abstractmethod
    def abort(self, target: WriteTarget, error: BaseException) -> None:
        """Remove what a failed write left, so that nothing opens as complete."""

    @abstractmethod
    def tree(self, location: Location) -> StoreTree:
        """Return the key view of the store at ``location`` (for checks and opening)."""

    @abstractmethod
    def read_store(self, location: Location, arrays: Any) -> Any:
        """Return a read-only Zarr store refusing missing or corrupt chunks of ``arrays``."""

    def recover(self, location: Location) -> bool:
        """Bring back a store left half moved by a killed save; whether one is there now."""
        return False


class LocalBackend(StoreBackend):
    """A store in a local folder: work folder beside it, rename (or exchange) into place."""

    @classmethod
    def handles(cls, location: Location) -> bool:  # noqa: D102
        return location.is_local

    @staticmethod
    def _is_replaceable(path: Path) -> bool:
        """Tell whether ``overwrite=True`` may delete ``path``: a Zarr store or an empty folder."""
        if path.is_symlink() or not path.is_dir():
            return False
        return (path / ROOT).is_file() or not any(path.iterdir())

    def check_target(self, location: Location, overwrite: bool) -> None:  # noqa: D102
        path = Path(location.path)
        if not os.path.lexists(path):
            return
        if not overwrite:
            raise StoreExistsError(
                f"{path} already exists; pass overwrite=True to replace the results store."
            )
        if not self._is_replaceable(path):
            raise StoreExistsError(
                f"{path} exists and is not a Zarr store; overwrite=True only replaces stores."
            )

    def begin(self, location: Location, overwrite: bool) -> WriteTarget:  # noqa: D102
        path = Path(location.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _commit.remove_dead_work_folders(path.parent)
        work, lease = _commit.new_work_folder(path, secrets.token_hex(4))
        store = GuardedLocalStore(work / _commit.STORE)
        return WriteTarget(location, store, "w-", {"work": work, "lease": lease})

    def commit(self, target: WriteTarget, overwrite: bool) -> None:  # noqa: D102
        work: Path = target.state["work"]
        partial = work / _commit.STORE
        path = Path(target.location.path)
        mark_complete(target.store, LocalTree(partial))
        self.check_target(target.location, overwrite)
        if os.path.lexists(path):
            _commit.replace(work, path)
        else:
            try:
                _commit.move_new(partial, path)
            except FileExistsError:
                # a store appeared at path meanwhile: never replace it silently
                self.check_target(target.location, overwrite)
                _commit.replace(work, path)
        # the work folder now holds nothing, or the replaced store
        _commit.discard(work, target.state["lease"])

    def abort(self, target: WriteTarget, error: BaseException) -> None:  # noqa: D102
        _commit.discard(target.state["work"], target.state["lease"])

    def tree(self, location: Location) -> StoreTree:  # noqa: D102
        return LocalTree(location.path)

    def read_store(self, location: Location, arrays: Any) -> Any:  # noqa: D102
        return CheckedLocalStore(location.path, read_only=True, arrays=arrays)

    def recover(self, location: Location) -> bool:  # noqa: D102
        return _commit.recover_missing(Path(location.path))


class ObjectStoreBackend(StoreBackend):
    """A store under an object-store prefix: written in place, complete by its root written last.

    See the module's documentation for the order of the writes.
    """

    @classmethod
    def handles(cls, location: Location) -> bool:  # noqa: D102
        return not location.is_local

    @staticmethod
    def _base(location: Location) -> str:
        return location.path.rstrip("/")

    def check_target(self, location: Location, overwrite: bool) -> None:  # noqa: D102
        keys = ObjectTree(location).keys()
        if keys and ROOT not in keys and is_debris(keys):
            return  # chunks that a failed write left, no store: free (begin removes them)
        if not keys:
            with storage_errors(location.url):
                is_object = bool(location.fs.isfile(self._base(location)))
            if not is_object:
                return
            raise StoreExistsError(
                f"{location.url} is an object, not a results store; overwrite=True only "
                "replaces stores. Choose another URL."
            )
        if not overwrite:
            raise StoreExistsError(
                f"{location.url} already exists; pass overwrite=True to replace the results store."
            )
        if ROOT not in keys and not is_debris(keys):
            raise StoreExistsError(
                f"{location.url} holds objects that are not a Zarr store; overwrite=True only "
                "replaces stores. Choose another URL."
            )

    def _placeholder(self) -> bytes:
        """Return the root of a store being written: a group that says ``complete: false``."""
        document = {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {
                "daskmask_version": __version__,
                "format_version": layout.FORMAT_VERSION,
                layout.COMPLETE: False,
            },
        }
        return json.dumps(document, indent=2).encode()

    def _remove(
        self, location: Location, keep_root: bool, keep: frozenset[str] = frozenset()
    ) -> None:
        """Delete the store's objects; the root last, or not at all with ``keep_root``.

        Keys in ``keep`` are not deleted (the new store writes them again).
        """
        base = self._base(location)
        keys = sorted(ObjectTree(location).keys() - {ROOT} - keep)
        with storage_errors(location.url):
            if keys:
                location.fs.rm([f"{base}/{key}" for key in keys])
            if not keep_root:
                with contextlib.suppress(FileNotFoundError):
                    location.fs.rm_file(f"{base}/{ROOT}")

    def begin(self, location: Location, overwrite: bool) -> WriteTarget:  # noqa: D102
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore

        self.check_target(location, overwrite)
        found = ObjectTree(location).keys()
        replaced = ROOT in found
        base = self._base(location)
        placeholder = self._placeholder()
        with storage_errors(location.url):
            # first the root that says incomplete: it invalidates an old store in one PUT
            location.fs.pipe_file(f"{base}/{ROOT}", placeholder)
        with storage_errors(location.url):
            store = ObjectWriteStore.from_url(
                location.url, storage_options=location.storage_options
            )
            share_botocore_models(store.fs, location.fs)
        # The metadata is written into memory first, over the same root (see publish).
        staged: dict[str, Any] = {ROOT: default_buffer_prototype().buffer.from_bytes(placeholder)}
        state = {"replaced": replaced, "found": found, "staged": staged}
        return WriteTarget(location, store, "a", state, staging=MemoryStore(staged))

    def publish(self, target: WriteTarget) -> None:
        """Delete the old objects the new store does not rewrite, then PUT its metadata.

        The staged objects (metadata and small arrays) go in one batch of
        concurrent PUTs. The old objects at keys the new store writes (its
        metadata now, its chunks during the computation) are left to be
        replaced; an interrupted write leaves the root that says incomplete.
        """
        location = target.location
        staged: dict[str, Any] = target.state["staged"]
        if target.state["found"] - {ROOT}:
            self._remove(location, keep_root=True, keep=written_keys(target.staging, staged))
        base = self._base(location)
        with storage_errors(location.url):
            location.fs.pipe({f"{base}/{key}": value.to_bytes() for key, value in staged.items()})

    def commit(self, target: WriteTarget, overwrite: bool) -> None:  # noqa: D102
        with storage_errors(target.location.url):
            mark_complete(target.store, ObjectTree(target.location))

    def abort(self, target: WriteTarget, error: BaseException) -> None:
        """Remove the objects written; an overwrite keeps its root saying incomplete.

        A task still running when the write failed (another thread, a worker)
        may write its chunk after this: such debris has no root, is refused by
        ``open_results`` as incomplete, and is removed by the next save.
        """
        if isinstance(error, StorageUnreachableError | StorageAccessError):
            return  # nothing can be removed; the root written first says incomplete
        try:
            # an overwrite keeps its root saying incomplete: the old store is gone, say so
            self._remove(target.location, keep_root=target.state["replaced"])
        except Exception as cleanup:  # the write's error matters more than the cleanup's
            logger.warning("Could not remove the partial store %s: %s", target.location, cleanup)

    def tree(self, location: Location) -> StoreTree:  # noqa: D102
        return ObjectTree(location)

    def read_store(self, location: Location, arrays: Any) -> Any:  # noqa: D102
        from zarr.storage import FsspecStore

        with storage_errors(location.url):
            plain = FsspecStore.from_url(
                location.url, storage_options=location.storage_options, read_only=True
            )
        return CheckedFsspecStore(
            plain.fs, plain.path, label=location.url, read_only=True, arrays=arrays
        )


def written_keys(store: Any, staged: dict[str, Any]) -> frozenset[str]:
    """Return every key a store being written will hold: its staged objects and every chunk.

    ``store`` holds the metadata of every array (``staged`` is its content);
    the chunk keys come from each array's shape and chunk shape.
    """
    keys = set(staged)
    group = zarr.open_group(store, mode="r", zarr_format=3)
    for name, array in group.arrays():
        grid = chunk_grid(array.shape, array.chunks)
        keys.update(f"{name}/{key}" for key in chunk_keys(grid))
    return frozenset(keys)


#: The backends, asked in order; the first that handles a location is used.
BACKENDS: list[StoreBackend] = [LocalBackend(), ObjectStoreBackend()]


def backend_for(location: Location) -> StoreBackend:
    """Return the backend for the store at ``location``."""
    for backend in BACKENDS:
        if backend.handles(location):
            return backend
    raise ValueError(f"No storage backend for {location.url}.")  # pragma: no cover


__all__ = [
    "BACKENDS",
    "LocalBackend",
    "ObjectStoreBackend",
    "ObjectWriteStore",
    "StoreBackend",
    "WriteTarget",
    "backend_for",
    "mark_complete",
]
