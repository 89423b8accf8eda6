"""What a results store holds, and the checks that it still holds it.

A store of format 2 or newer is self-checking:

* every array (signals, mask, mean image and every coordinate) ends its
  codec chain with Zarr's ``crc32c`` codec, so each chunk file carries the
  CRC-32C of its (compressed) bytes;
* every chunk is written, even one that holds only the fill value
  (``write_empty_chunks``), so the chunks on disk are exactly the chunk grid;
* the root attribute ``manifest`` records, when the write completes, each
  array's shape, chunk shape, data type, number of chunks and the SHA-256 of
  its metadata document, and the SHA-256 of the other root attributes.

:func:`check_arrays` (run by ``open_results``) compares the array metadata
with the manifest and lists the chunk files, without reading any data; it
works on any :class:`~daskmask.storage._tree.StoreTree` (a local folder or an
object-store prefix). :class:`CheckedLocalStore` and
:class:`CheckedFsspecStore` are the stores the lazy arrays read through: a
chunk that the manifest says exists but is missing, or whose checksum does
not match, raises :class:`CorruptStoreError` naming the array and chunk,
where plain Zarr would return the fill value or a codec error.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from zarr.abc.store import ByteRequest
from zarr.codecs import Crc32cCodec
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore

from daskmask._fs import storage_errors
from daskmask.storage._errors import CorruptStoreError
from daskmask.storage._tree import LocalTree, StoreTree

#: Name of the codec that checksums every chunk (last of every codec chain).
CHECKSUM_CODEC = "crc32c"
#: The one chunk key encoding a store uses: ``c/0/3``.
_SEPARATOR = "/"
_ENTRY_KEYS = ("shape", "chunks", "dtype", "n_chunks", "metadata_sha256")
_MANIFEST = "manifest"
_COMPLETE = "complete"

REWRITE = "Write the store again from its input (daskmask.save(..., overwrite=True))."


def digest(document: Any) -> str:
    """Return the SHA-256 of a JSON document in canonical form (sorted keys, no spaces)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def attributes_digest(attrs: Mapping[str, Any]) -> str:
    """Return the digest of the root attributes, the manifest and the marker excepted."""
    return digest({k: v for k, v in attrs.items() if k not in (_MANIFEST, _COMPLETE)})


def checksum_codec() -> Crc32cCodec:
    """Return the codec appended to every array's codecs."""
    return Crc32cCodec()


def chunk_grid(shape: Iterable[int], chunks: Iterable[int]) -> tuple[int, ...]:
    """Return the number of chunks along each axis."""
    return tuple(math.ceil(n / max(c, 1)) for n, c in zip(shape, chunks, strict=True))


def chunk_keys(grid: Iterable[int]) -> Iterable[str]:
    """Yield the keys (relative to the array) of every chunk of a chunk grid."""
    for index in itertools.product(*(range(n) for n in grid)):
        yield _SEPARATOR.join(("c", *map(str, index)))


def as_tree(root: StoreTree | Path | str) -> StoreTree:
    """Return ``root`` as a :class:`StoreTree` (a path is a local folder)."""
    return root if isinstance(root, StoreTree) else LocalTree(root)


def _read_metadata(root: StoreTree, name: str) -> dict[str, Any]:
    """Return the parsed ``zarr.json`` of the array ``name``, or raise CorruptStoreError."""
    file = root.describe(f"{name}/zarr.json")
    try:
        text = root.read(f"{name}/zarr.json")
    except FileNotFoundError:
        raise CorruptStoreError(
            f"The results store {root} has no array '{name}' ({file} is missing), "
            f"though its manifest lists it. {REWRITE}",
            path=str(root),
            array=name,
        ) from None
    try:
        metadata = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptStoreError(
            f"The metadata of array '{name}' in the results store {root} ({file}) is not "
            f"valid JSON ({error}). {REWRITE}",
            path=str(root),
            array=name,
        ) from None
    if not isinstance(metadata, dict):
        raise CorruptStoreError(
            f"The metadata of array '{name}' in the results store {root} ({file}) is a "
            f"JSON {type(metadata).__name__}, not an object. {REWRITE}",
            path=str(root),
            array=name,
        )
    return metadata


def _int_list(value: Any) -> list[int] | None:
    """Return ``value`` as a list of non-negative ints, or None if it is not one."""
    if not isinstance(value, list):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        return None
    return list(value)


def describe_array(root: StoreTree | Path, name: str) -> dict[str, Any]:
    """Return the manifest entry of array ``name`` from its metadata.

    Raises
    ------
    CorruptStoreError
        The metadata is missing, not JSON, or not that of a regular-grid
        array whose chunks are checksummed with ``crc32c``.

    """
    root = as_tree(root)
    metadata = _read_metadata(root, name)
    problem = None

    def bad(what: str) -> CorruptStoreError:
        return CorruptStoreError(
            f"The metadata of array '{name}' in the results store {root} "
            f"({root.describe(name + '/zarr.json')}) is damaged: {what}. {REWRITE}",
            path=str(root),
            array=name,
        )

    if metadata.get("node_type") != "array" or metadata.get("zarr_format") != 3:
        problem = "it is not the metadata of a Zarr v3 array"
    shape = _int_list(metadata.get("shape"))
    grid = metadata.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) else None
    chunks = _int_list(config.get("chunk_shape")) if isinstance(config, dict) else None
    encoding = metadata.get("chunk_key_encoding")
    codecs = metadata.get("codecs")
    dtype = metadata.get("data_type")
    if problem is None and shape is None:
        problem = f"'shape' is {metadata.get('shape')!r}, not a list of sizes"
    if problem is None and (
        not isinstance(grid, dict)
        or grid.get("name") != "regular"
        or chunks is None
        or len(chunks) != len(shape or ())
        or not all(chunks)
    ):
        problem = f"'chunk_grid' is {grid!r}, not a regular grid of positive chunk sizes"
    if problem is None and encoding != {
        "name": "default",
        "configuration": {"separator": _SEPARATOR},
    }:
        problem = f"'chunk_key_encoding' is {encoding!r}, not the default one with '/'"
    if problem is None and not isinstance(dtype, str):
        problem = f"'data_type' is {dtype!r}, not a type name"
    if problem is None and (
        not isinstance(codecs, list)
        or not codecs
        or not isinstance(codecs[-1], dict)
        or codecs[-1].get("name") != CHECKSUM_CODEC
    ):
        problem = f"'codecs' is {codecs!r}, not a codec chain ending in '{CHECKSUM_CODEC}'"
    if problem is not None:
        raise bad(problem)
    return {
        "shape": shape,
        "chunks": chunks,
        "dtype": dtype,
        "n_chunks": math.prod(chunk_grid(shape, chunks)),  # type: ignore[arg-type]
        "metadata_sha256": digest(metadata),
    }


def array_names(root: StoreTree | Path) -> list[str]:
    """Return the names of the arrays directly under the store ``root`` (sorted)."""
    root = as_tree(root)
    children = root.children()
    prefetch = getattr(root, "prefetch", None)
    if prefetch is not None:  # an object store: fetch every array's metadata at once
        prefetch([f"{name}/zarr.json" for name in children])
    names = []
    for name in children:
        try:
            node = json.loads(root.read(f"{name}/zarr.json")).get("node_type")
        except (OSError, ValueError, AttributeError):
            continue
        if node == "array":
            names.append(name)
    return names


def build_manifest(root: StoreTree | Path, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Return the manifest of a freshly written store, after checking every chunk is there.

    Parameters
    ----------
    root : StoreTree or pathlib.Path
        The store.
    attrs : mapping
        Its root attributes as written (parsed from its ``zarr.json``).

    Returns
    -------
    dict
        ``{"arrays": {name: entry}, "attributes_sha256": digest}``; each
        entry holds the array's shape, chunk shape, data type, number of
        chunks and the digest of its whole metadata document.

    """
    root = as_tree(root)
    arrays = {name: describe_array(root, name) for name in array_names(root)}
    for name, entry in arrays.items():
        _check_chunk_files(root, name, entry)
    return {"arrays": arrays, "attributes_sha256": attributes_digest(attrs)}


def check_manifest(attrs: Mapping[str, Any], root: object) -> dict[str, dict[str, Any]]:
    """Check the root attribute ``manifest`` and the attributes it covers; return its arrays.

    Raises
    ------
    CorruptStoreError
        The manifest is malformed, or the other root attributes changed since
        the store was written (their digest differs).

    """
    value = attrs.get(_MANIFEST)
    problem = None
    arrays = value.get("arrays") if isinstance(value, dict) else None
    if not isinstance(value, dict) or set(value) != {"arrays", "attributes_sha256"}:
        problem = f"it is {value!r}, not {{arrays, attributes_sha256}}"
    elif not isinstance(arrays, dict) or not arrays:
        problem = f"its 'arrays' are {arrays!r}, not an object with one entry per array"
    else:
        for name, entry in arrays.items():
            if not isinstance(entry, dict) or set(entry) != set(_ENTRY_KEYS):
                problem = f"the entry of '{name}' is {entry!r}, not {{{', '.join(_ENTRY_KEYS)}}}"
            elif (
                _int_list(entry["shape"]) is None
                or _int_list(entry["chunks"]) is None
                or len(entry["shape"]) != len(entry["chunks"])
                or not all(entry["chunks"])
                or not isinstance(entry["dtype"], str)
                or not isinstance(entry["metadata_sha256"], str)
                or _int_list([entry["n_chunks"]]) is None
                or entry["n_chunks"] != math.prod(chunk_grid(entry["shape"], entry["chunks"]))
            ):
                problem = f"the entry of '{name}' is inconsistent: {entry!r}"
            if problem is not None:
                break
    if problem is not None:
        raise CorruptStoreError(
            f"The results store {root} has a damaged root attribute 'manifest': {problem}. "
            f"{REWRITE}",
            path=str(root),
        )
    if value["attributes_sha256"] != attributes_digest(attrs):
        raise CorruptStoreError(
            f"The root attributes of the results store {root} (affine, mask_shape, "
            "masker_params, provenance, ...) changed after the store was written: their "
            f"SHA-256 differs from the one in its manifest (damage or an edit). {REWRITE}",
            path=str(root),
        )
    return arrays


def _check_chunk_files(root: StoreTree, name: str, entry: Mapping[str, Any]) -> None:
    """Raise CorruptStoreError if a chunk of the manifest entry has no file."""
    start = len(name) + 1
    present = {key[start:] for key in root.files(f"{name}/c")}
    if root.is_file(f"{name}/c"):
        present.add("c")
    grid = chunk_grid(entry["shape"], entry["chunks"])
    missing = [key for key in chunk_keys(grid) if key not in present]
    if missing:
        raise CorruptStoreError(
            f"The results store {root} is missing {len(missing)} of the "
            f"{entry['n_chunks']} chunks of array '{name}' (first: {name}/{missing[0]}); "
            f"reading it would give fill values instead of the data written. {REWRITE}",
            path=str(root),
            array=name,
            chunk=missing[0],
        )


def check_arrays(root: StoreTree | Path, manifest: Mapping[str, Mapping[str, Any]]) -> None:
    """Check each array's metadata against the manifest and that all its chunk files exist.

    Reads only the small ``zarr.json`` files and lists the chunk directories.

    Raises
    ------
    CorruptStoreError
        An array is missing, its metadata is damaged or disagrees with the
        manifest, or one of its chunks has no file.

    """
    root = as_tree(root)
    for name, entry in manifest.items():
        found = describe_array(root, name)
        if found != dict(entry):
            changed = [key for key in _ENTRY_KEYS if found[key] != entry[key]]
            raise CorruptStoreError(
                f"The metadata of array '{name}' in the results store {root} changed after "
                f"the store was written (damage or an edit): {', '.join(changed)} differ from "
                f"its manifest ({ {k: found[k] for k in changed} } instead of "
                f"{ {k: entry[k] for k in changed} }). {REWRITE}",
                path=str(root),
                array=name,
            )
        _check_chunk_files(root, name, entry)


def verify_chunk(data: np.ndarray | bytes, root: object, name: str, chunk: str) -> None:
    """Raise CorruptStoreError unless the last 4 bytes of ``data`` are the CRC-32C of the rest."""
    view = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if view.size < 4:
        raise CorruptStoreError(
            f"Chunk {chunk} of array '{name}' in the results store {root} is truncated "
            f"({view.size} bytes, shorter than its checksum). {REWRITE}",
            path=str(root),
            array=name,
            chunk=chunk,
        )
    computed = np.uint32(google_crc32c.value(view[:-4])).tobytes()
    if computed != bytes(view[-4:]):
        raise CorruptStoreError(
            f"Chunk {chunk} of array '{name}' in the results store {root} fails its CRC-32C "
            f"checksum: its bytes changed after they were written (disk or copy error). "
            f"{REWRITE}",
            path=str(root),
            array=name,
            chunk=chunk,
        )


class _ChecksChunks:
    """What both checked stores do: refuse missing chunks, verify each chunk's CRC-32C.

    ``arrays`` names the arrays whose every chunk was written (the manifest);
    ``label`` names the store in messages.
    """

    arrays: frozenset[str]
    label: str

    def _chunk(self, key: str) -> tuple[str, str] | None:
        """Return ``(array, chunk key)`` when ``key`` is a chunk of a checked array."""
        name, _, rest = key.partition("/")
        if name in self.arrays and (rest == "c" or rest.startswith("c/")):
            return name, rest
        return None

    def _checked(self, key: str, buffer: Buffer | None, whole: bool) -> Buffer | None:
        chunk = self._chunk(key)
        if chunk is None:
            return buffer
        name, rest = chunk
        if buffer is None:
            raise CorruptStoreError(
                f"Chunk {rest} of array '{name}' is missing from the results store "
                f"{self.label} (it was written: the store's manifest counts it). "
                f"{REWRITE}",
                path=self.label,
                array=name,
                chunk=rest,
            )
        if whole:
            verify_chunk(buffer.as_numpy_array(), self.label, name, rest)
        return buffer


class CheckedLocalStore(_ChecksChunks, LocalStore):
    """A read-only local store that refuses missing or corrupt chunks of known arrays.

    Parameters
    ----------
    root : str or pathlib.Path
        The store directory.
    read_only : bool, default=True
        Zarr's read-only flag.
    arrays : iterable of str
        Arrays whose every chunk was written (the manifest): a missing chunk
        of one of them raises instead of reading as the fill value, and each
        chunk's trailing CRC-32C is checked before it is decoded.

    """

    def __init__(
        self, root: Path | str, *, read_only: bool = True, arrays: Iterable[str] = ()
    ) -> None:
        super().__init__(root, read_only=read_only)
        self.arrays = frozenset(arrays)

    @property
    def label(self) -> str:  # type: ignore[override]
        """The store directory, for messages."""
        return str(self.root)

    def with_read_only(self, read_only: bool = False) -> CheckedLocalStore:  # noqa: D102
        return type(self)(self.root, read_only=read_only, arrays=self.arrays)

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and self.arrays == getattr(other, "arrays", None)

    def __hash__(self) -> int:
        return hash((str(self.root), self.arrays))

    async def get(  # noqa: D102
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        buffer = await super().get(key, prototype, byte_range)
        return self._checked(key, buffer, byte_range is None)

    def get_sync(  # noqa: D102
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        buffer = super().get_sync(key, prototype=prototype, byte_range=byte_range)
        return self._checked(key, buffer, byte_range is None)

    async def get_partial_values(  # noqa: D102
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        buffers = await super().get_partial_values(prototype, key_ranges)
        return [
            self._checked(key, buffer, byte_range is None)
            for (key, byte_range), buffer in zip(key_ranges, buffers, strict=True)
        ]


class CheckedFsspecStore(_ChecksChunks, FsspecStore):
    """A read-only fsspec store (an object-store prefix) with the checks of CheckedLocalStore.

    Errors of the storage library (no credentials, an endpoint that does not
    answer, ...) raised while reading a chunk become the typed
    :class:`~daskmask.exceptions.StorageError` subclasses naming the URL.

    Parameters
    ----------
    fs : fsspec.asyn.AsyncFileSystem
        The file system (asynchronous, as zarr's ``FsspecStore`` needs it).
    path : str
        The store's path in ``fs`` (without the protocol).
    label : str
        The store's URL, for messages.
    read_only : bool, default=True
        Zarr's read-only flag.
    arrays : iterable of str
        As for :class:`CheckedLocalStore`.

    """

    def __init__(
        self,
        fs: Any,
        path: str,
        *,
        label: str,
        read_only: bool = True,
        arrays: Iterable[str] = (),
    ) -> None:
        super().__init__(fs=fs, read_only=read_only, path=path)
        self.arrays = frozenset(arrays)
        self.label = label

    def with_read_only(self, read_only: bool = False) -> CheckedFsspecStore:  # noqa: D102
        return type(self)(
            self.fs, self.path, label=self.label, read_only=read_only, arrays=self.arrays
        )

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and self.arrays == getattr(other, "arrays", None)

    def __hash__(self) -> int:
        return hash((self.label, self.arrays))

    async def get(  # noqa: D102
        self,
        key: str,
        prototype: BufferPrototype,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        with storage_errors(f"{self.label}/{key}"):
            buffer = await super().get(key, prototype, byte_range)
        return self._checked(key, buffer, byte_range is None)

    async def get_partial_values(  # noqa: D102
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        with storage_errors(self.label):
            buffers = await super().get_partial_values(prototype, key_ranges)
        return [
            self._checked(key, buffer, byte_range is None)
            for (key, byte_range), buffer in zip(key_ranges, buffers, strict=True)
        ]
