"""The files of a results store, local or in an object store, as keys.

The integrity checks (:mod:`daskmask.storage._integrity`) and the opening of a
store (:mod:`daskmask.storage._read`) only read small metadata documents and
list chunk keys. A :class:`StoreTree` gives them that view of a store,
whatever holds it: :class:`LocalTree` walks a folder with :mod:`os` (the fast
path of today), :class:`ObjectTree` lists an object-store prefix once through
fsspec (one paginated LIST for the whole store) and reads objects by key.

Keys are relative to the store's root and use ``/`` (``signals/c/0/3``).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from daskmask._fs import storage_errors

if TYPE_CHECKING:
    from daskmask._fs import Location

#: Keys of the arrays of a results store (their metadata and chunks), relative to its root.
STORE_KEY = re.compile(r"^[^/]+/(zarr\.json|c(/[0-9]+)*)$")


class StoreTree(ABC):
    """Read-only key view of a store: read small objects, list keys."""

    @abstractmethod
    def __str__(self) -> str:
        """Return the store's path or URL, for messages."""

    def describe(self, key: str) -> str:
        """Return the path or URL of ``key`` inside the store, for messages."""
        return f"{str(self).rstrip('/')}/{key}"

    @abstractmethod
    def exists(self) -> bool:
        """Whether anything is at the store's path (a folder, a file, or objects)."""

    @abstractmethod
    def is_container(self) -> bool:
        """Whether the store's path is a folder (locally) or a prefix holding objects."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """Return the bytes of ``key``; FileNotFoundError when it does not exist."""

    @abstractmethod
    def files(self, prefix: str) -> set[str]:
        """Return the keys of every file below the folder ``prefix`` (recursively)."""

    @abstractmethod
    def is_file(self, key: str) -> bool:
        """Whether ``key`` is a file (an object)."""

    @abstractmethod
    def children(self) -> list[str]:
        """Return the names of the folders directly under the root, sorted."""

    def holds_arrays_only(self) -> bool:
        """Whether the store holds arrays of a results store but no root (a cut-short write)."""
        return "signals" in self.children()


class LocalTree(StoreTree):
    """A store in a local folder, read with :mod:`os`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def describe(self, key: str) -> str:  # noqa: D102
        return str(self.root / key)

    def exists(self) -> bool:  # noqa: D102
        return os.path.lexists(self.root)

    def is_container(self) -> bool:  # noqa: D102
        return self.root.is_dir()

    def read(self, key: str) -> bytes:  # noqa: D102
        return (self.root / key).read_bytes()

    def files(self, prefix: str) -> set[str]:  # noqa: D102
        found: set[str] = set()
        for directory, _, names in os.walk(self.root / prefix):
            relative = os.path.relpath(directory, self.root).replace(os.sep, "/")
            found.update(f"{relative}/{name}" for name in names)
        return found

    def is_file(self, key: str) -> bool:  # noqa: D102
        return (self.root / key).is_file()

    def children(self) -> list[str]:  # noqa: D102
        return sorted(
            entry.name for entry in os.scandir(self.root) if entry.is_dir(follow_symlinks=False)
        )


class ObjectTree(StoreTree):
    """A store under an object-store prefix, read through fsspec.

    The keys are listed once, on first use, and kept: the tree is a snapshot,
    as a check of a store should be. Reads are not cached by fsspec.
    """

    def __init__(self, location: Location) -> None:
        self.location = location
        self._keys: set[str] | None = None
        self._documents: dict[str, bytes] = {}

    def __str__(self) -> str:
        return self.location.url

    @property
    def _base(self) -> str:
        # As the file system names its keys in listings (memory:// puts a "/" first).
        with storage_errors(self.location.url):
            fs = self.location.fs
        return str(fs._strip_protocol(self.location.path)).rstrip("/")

    def keys(self) -> set[str]:
        """Return every key of the store (listed once)."""
        if self._keys is None:
            with storage_errors(self.location.url):
                found = self.location.fs.find(self._base, withdirs=False, detail=False)
            start = len(self._base) + 1
            self._keys = {name[start:] for name in found if name.startswith(self._base + "/")}
        return self._keys

    def exists(self) -> bool:  # noqa: D102
        if self.keys():
            return True
        with storage_errors(self.location.url):
            return bool(self.location.fs.exists(self._base))

    def is_container(self) -> bool:  # noqa: D102
        return bool(self.keys())

    def read(self, key: str) -> bytes:  # noqa: D102
        if key not in self._documents:
            with storage_errors(self.describe(key)):
                self._documents[key] = self.location.fs.cat_file(f"{self._base}/{key}")
        return self._documents[key]

    def prefetch(self, keys: list[str]) -> None:
        """Read several small objects concurrently (the arrays' metadata)."""
        wanted = [key for key in keys if key not in self._documents and key in self.keys()]
        if not wanted:
            return
        with storage_errors(self.location.url):
            found = self.location.fs.cat(
                [f"{self._base}/{key}" for key in wanted], on_error="omit"
            )
        start = len(self._base) + 1
        for path, data in found.items():
            if isinstance(data, bytes):
                self._documents[path[start:]] = data

    def files(self, prefix: str) -> set[str]:  # noqa: D102
        head = prefix.rstrip("/") + "/"
        return {key for key in self.keys() if key.startswith(head)}

    def is_file(self, key: str) -> bool:  # noqa: D102
        return key in self.keys()

    def children(self) -> list[str]:  # noqa: D102
        return sorted({key.split("/", 1)[0] for key in self.keys() if "/" in key})

    def holds_arrays_only(self) -> bool:  # noqa: D102
        keys = self.keys()
        return bool(keys) and "zarr.json" not in keys and all(STORE_KEY.match(k) for k in keys)
