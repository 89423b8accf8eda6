"""Where data lives: the one seam between daskmask and file systems.

Every open, stat, glob and ranged read of an input or an output goes through
a :class:`Location`. A local path keeps the fast path of the operating system
(``os.pread`` on a file descriptor, ``os.stat``, :mod:`glob`); any other
``protocol://`` URL goes through :mod:`fsspec` (``s3://``, ``gs://``,
``az://``, ``http(s)://``, ``memory://``; ``file://`` is a local path).

Credentials and endpoints come, in order of precedence, from the
``storage_options`` a user passes, from the dask config key
``daskmask.storage-options`` (a mapping per protocol, for code that only
passes URLs), and from the file system's usual environment (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``). A :class:`Location` pickles to its URL and options,
so a worker rebuilds the file system itself.

Errors of the storage libraries (botocore, aiohttp, ...) are translated into
:class:`~daskmask.exceptions.StorageError` subclasses that name the URL and the
fix; the S3 client gets bounded timeouts and retries unless told otherwise, so
that an unreachable endpoint fails within seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import io
import json
import os
import stat as _stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from daskmask.exceptions import (
    ObjectNotFoundError,
    StorageAccessError,
    StorageError,
    StorageUnreachableError,
)

#: Protocols that name the local file system.
LOCAL_PROTOCOLS = frozenset({"file", "local"})

#: S3 client settings when the user gives none: a dead endpoint fails in seconds.
_S3_BOUNDED_CLIENT = {
    "connect_timeout": 5,
    "read_timeout": 60,
    "retries": {"max_attempts": 3, "mode": "standard"},
}
#: botocore (>= 1.36) computes a CRC32 of every upload by default, reading the
#: body once more in 64 KiB pieces: 0.3-0.4 s of CPU for the 648 MB of the
#: HCP-like store. daskmask's chunks carry their own CRC-32C, checked on every
#: read, so the client computes one only where the operation requires it
#: (botocore's behaviour before 1.36), unless the user or the environment
#: (``AWS_REQUEST_CHECKSUM_CALCULATION``) asks for more.
_S3_REQUEST_CHECKSUMS = ("request_checksum_calculation", "when_required")

_GLOB_CHARACTERS = frozenset("*?[")


def split_protocol(url: str) -> tuple[str, str]:
    """Return ``(protocol, path)``; a plain path has protocol ``"file"``."""
    if "://" in url:
        protocol, _, rest = url.partition("://")
        protocol = protocol.lower()
        if protocol in LOCAL_PROTOCOLS:
            return "file", rest
        return protocol, rest
    return "file", url


def is_url(value: Any) -> bool:
    """Whether ``value`` is a string naming a non-local ``protocol://`` location."""
    return isinstance(value, str) and split_protocol(value)[0] != "file"


def has_glob(path: str) -> bool:
    """Whether a path or URL contains glob characters."""
    return any(character in _GLOB_CHARACTERS for character in path)


def _freeze(options: Mapping[str, Any] | None) -> str:
    # Options travel as canonical JSON: hashable, comparable and picklable.
    return json.dumps(dict(options or {}), sort_keys=True, default=str)


def resolve_storage_options(
    protocol: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Merge the dask config ``daskmask.storage-options`` with explicit options.

    Parameters
    ----------
    protocol : str
        The URL's protocol (``"s3"``, ``"gs"``, ...).
    storage_options : mapping, optional
        Options given by the caller; they win over the config.

    Returns
    -------
    dict
        Keyword arguments for the fsspec file system.

    """
    import dask.config

    configured = dask.config.get("daskmask.storage-options", default=None) or {}
    merged = dict(configured.get(protocol, {}) or {})
    merged.update(storage_options or {})
    if protocol in {"s3", "s3a"}:
        config_kwargs = dict(merged.get("config_kwargs") or {})
        for key, value in _S3_BOUNDED_CLIENT.items():
            config_kwargs.setdefault(key, value)
        if "AWS_REQUEST_CHECKSUM_CALCULATION" not in os.environ:
            config_kwargs.setdefault(*_S3_REQUEST_CHECKSUMS)
        merged["config_kwargs"] = config_kwargs
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        if endpoint and "endpoint_url" not in merged:
            merged["endpoint_url"] = endpoint
    return merged


@dataclass(frozen=True)
class FileStat:
    """What identifies one version of a file or object.

    Attributes
    ----------
    size : int
        Size in bytes.
    version : str
        The object's version id or ETag, or a local file's modification time
        and inode: it changes when the content is replaced.
    is_file : bool
        Whether it is a regular file (an object) rather than a folder or
        something else.

    """

    size: int
    version: str
    is_file: bool = True


@dataclass(frozen=True)
class Location:
    """A file or folder, local or in an object store.

    Build it with :func:`locate`. Local paths are absolute; URLs keep their
    protocol. ``options`` holds the file system's keyword arguments as
    canonical JSON so that the location is hashable and pickles small.
    """

    url: str
    options_json: str = field(default="{}", repr=False)

    # -- identity -------------------------------------------------------
    @property
    def protocol(self) -> str:
        """``"file"`` for a local path, else the URL's protocol."""
        return split_protocol(self.url)[0]

    @property
    def is_local(self) -> bool:
        """Whether the location is on this machine's file system."""
        return self.protocol == "file"

    @property
    def path(self) -> str:
        """The local path, or the URL without its protocol (fsspec's path)."""
        return split_protocol(self.url)[1]

    @property
    def name(self) -> str:
        """The last part of the path."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def storage_options(self) -> dict[str, Any]:
        """The file system's keyword arguments."""
        return json.loads(self.options_json)

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self.url} is not a local path")
        return self.path

    def join(self, *names: str) -> Location:
        """Return a location inside this folder."""
        if self.is_local:
            return Location(os.path.join(self.path, *names), self.options_json)
        return Location("/".join([self.url.rstrip("/"), *names]), self.options_json)

    @property
    def parent(self) -> Location:
        """The folder that holds this location."""
        if self.is_local:
            return Location(os.path.dirname(self.path.rstrip(os.sep)), self.options_json)
        head = self.url.rstrip("/").rsplit("/", 1)[0]
        return Location(head, self.options_json)

    # -- file system ------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec file system (cached by fsspec per process and options)."""
        import fsspec

        try:
            return fsspec.filesystem(self.protocol, **self.storage_options)
        except ImportError as error:
            raise StorageError(
                f"Cannot read {self.url}: the file system for {self.protocol}:// is not "
                f"installed ({error}). Install daskmask's cloud extra: "
                "pip install 'daskmask[cloud]'."
            ) from error
        except ValueError as error:
            raise StorageError(
                f"Cannot read {self.url}: {self.protocol}:// is not a known protocol ({error})."
            ) from error

    def stat(self, refresh: bool = False) -> FileStat:
        """Size, version and kind; a typed error if missing or unreachable.

        ``refresh=True`` asks the object store again (one HEAD request) instead
        of answering from fsspec's listings cache, so that a replaced object
        is seen as such.
        """
        if self.is_local:
            try:
                info = os.stat(self.path)
            except OSError as error:
                raise translate_error(error, self.url) from None
            return FileStat(
                size=info.st_size,
                version=f"mtime_ns={info.st_mtime_ns},ino={info.st_ino}",
                is_file=_stat.S_ISREG(info.st_mode),
            )
        with storage_errors(self.url):
            fs = self.fs
            if refresh:
                fs.invalidate_cache(self.path)
            info = fs.info(self.path)
        return FileStat(
            size=int(info.get("size") or 0),
            version=object_version(info),
            is_file=info.get("type") == "file",
        )

    def exists(self) -> bool:
        """Whether anything exists at the location."""
        if self.is_local:
            return os.path.lexists(self.path)
        with storage_errors(self.url):
            return bool(self.fs.exists(self.path))

    def isdir(self) -> bool:
        """Whether the location is a folder (a prefix with objects, for object stores)."""
        if self.is_local:
            return os.path.isdir(self.path)
        with storage_errors(self.url):
            return bool(self.fs.isdir(self.path))

    def open(self, mode: str = "rb", **kwargs: Any) -> IO[bytes]:
        """Open for reading or writing; remote files stream through fsspec."""
        if self.is_local:
            try:
                return open(self.path, mode)  # noqa: SIM115 - the caller closes it
            except OSError as error:
                raise translate_error(error, self.url) from error
        with storage_errors(self.url):
            return self.fs.open(self.path, mode, **kwargs)

    def read_range(self, start: int, length: int) -> bytes:
        """Read ``length`` bytes from offset ``start`` (one ranged request remotely)."""
        if length <= 0:
            return b""
        if self.is_local:
            try:
                descriptor = os.open(self.path, os.O_RDONLY)
            except OSError as error:
                raise translate_error(error, self.url) from error
            try:
                return os.pread(descriptor, length, start)
            finally:
                os.close(descriptor)
        with storage_errors(self.url):
            return self.fs.cat_file(self.path, start=start, end=start + length)

    def glob(self) -> list[Location]:
        """Sorted matches of this location taken as a glob pattern."""
        if self.is_local:
            return [Location(match, self.options_json) for match in sorted(_glob.glob(self.path))]
        with storage_errors(self.url):
            matches = sorted(self.fs.glob(self.path))
        return [Location(f"{self.protocol}://{match}", self.options_json) for match in matches]

    def mapper(self) -> Any:
        """Return a key-value view of the folder (for Zarr stores on object storage)."""
        with storage_errors(self.url):
            return self.fs.get_mapper(self.path)


#: Bytes :func:`object_head` reads: a NIfTI header and, usually, its extensions.
HEAD_BYTES = 64 << 10

#: First bytes of the object versions read in this process, by (location,
#: size, version): a version's bytes never change, and each ranged read costs
#: a round trip (on moto's server, a read of the whole object).
_HEADS: OrderedDict[tuple[Location, int, str], bytes] = OrderedDict()
_HEADS_SIZE = 64
_HEADS_LOCK = threading.Lock()

#: Seconds the GET that read an object's first bytes stays open for a pass
#: from byte 0 to continue (:func:`take_parked_stream`); then it is closed.
PARKED_STREAM_SECONDS = 10.0


@dataclass
class ParkedStream:
    """A streamed GET of an object, its first bytes read, waiting to be continued.

    ``head`` holds bytes ``0:len(head)``; the stream's next byte is ``len(head)``.
    """

    location: Location
    #: ``(size, version)`` of the object when the GET was sent.
    version: tuple[int, str]
    head: bytes
    stream: Any
    fs: Any
    pid: int = field(default_factory=os.getpid)

    def close(self) -> None:
        """Close the stream (and the response body it holds)."""
        close_streamed(self.fs, self.stream)


#: At most one parked stream per object, in this process.
_PARKED: dict[Location, ParkedStream] = {}


def open_streamed(fs: Any, path: str) -> Any:
    """Return ``fs``'s streamed reader of ``path`` (``open_async``: one GET), or None."""
    if not getattr(fs, "async_impl", False):
        return None
    from fsspec.asyn import sync

    try:
        return sync(fs.loop, fs.open_async, path, "rb")
    except (NotImplementedError, ValueError):
        return None


async def _close_stream(stream: Any) -> None:
    # s3fs's streamed file does not close its body itself: a body not read to
    # its end would keep its connection.
    body = getattr(stream, "r", None)
    if body is not None:
        body.close()
    await stream.close()


def close_streamed(fs: Any, stream: Any) -> None:
    """Close a stream of :func:`open_streamed`, and the response body it holds."""
    from fsspec.asyn import sync

    with contextlib.suppress(Exception):
        sync(fs.loop, _close_stream, stream, timeout=10)


async def fill_from_stream(stream: Any, view: memoryview, piece: int = 8 << 20) -> int:
    """Fill ``view`` from an fsspec async streamed file; fewer bytes only at its end."""
    filled = 0
    while filled < len(view):
        chunk = await stream.read(min(len(view) - filled, piece))
        if not chunk:
            break
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return filled


class BufferBody(io.BytesIO):
    """A read-only, seekable file over memory another object owns (no copy).

    botocore wraps a ``bytes`` body in an :class:`io.BytesIO`, which shares
    the bytes until aiohttp asks for its buffer (to learn the size) and so
    copies them then; the ``bytes`` themselves are already a copy of the
    encoded chunk. This file serves the chunk's own memory instead: aiohttp
    reads it in 256 KiB pieces, as it reads any BytesIO, and botocore rewinds
    it (``seek``) for a retry. Nothing else of :class:`io.BytesIO` is
    available (writing raises :class:`io.UnsupportedOperation`).

    Parameters
    ----------
    data : buffer
        C-contiguous bytes (a ``memoryview``, a NumPy array, ``bytes``); they
        must not change until the upload is done.

    """

    def __init__(self, data: Any) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._offset = 0

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def readable(self) -> bool:  # noqa: D102
        self._check_open()
        return True

    def seekable(self) -> bool:  # noqa: D102
        self._check_open()
        return True

    def writable(self) -> bool:  # noqa: D102
        self._check_open()
        return False

    def tell(self) -> int:  # noqa: D102
        self._check_open()
        return self._offset

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:  # noqa: D102
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._offset, io.SEEK_END: len(self._view)}
        if whence not in base:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        position = base[whence] + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._offset = position
        return position

    def read(self, size: int | None = -1) -> bytes:  # noqa: D102
        self._check_open()
        start = min(self._offset, len(self._view))
        end = len(self._view) if size is None or size < 0 else min(start + size, len(self._view))
        self._offset = max(self._offset, end)
        return bytes(self._view[start:end])

    read1 = read

    def readinto(self, buffer: Any) -> int:  # noqa: D102
        target = memoryview(buffer).cast("B")
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    readinto1 = readinto

    def readline(self, size: int | None = -1) -> bytes:  # noqa: D102
        self._check_open()
        start = min(self._offset, len(self._view))
        newline = bytes(self._view[start:]).find(b"\n")
        length = len(self._view) - start if newline < 0 else newline + 1
        return self.read(length if size is None or size < 0 else min(size, length))

    def getbuffer(self) -> memoryview:
        """Return a read-only view of the whole content (no copy)."""
        self._check_open()
        return self._view.toreadonly()

    def getvalue(self) -> bytes:
        """Return the whole content (a copy)."""
        self._check_open()
        return bytes(self._view)

    def write(self, data: Any) -> int:  # noqa: D102
        raise io.UnsupportedOperation("a BufferBody is read-only")

    def writelines(self, lines: Any) -> None:  # noqa: D102
        raise io.UnsupportedOperation("a BufferBody is read-only")

    def truncate(self, size: int | None = None) -> int:  # noqa: D102
        raise io.UnsupportedOperation("a BufferBody is read-only")

    def close(self) -> None:  # noqa: D102
        self._view = memoryview(b"")  # drop the reference to the owner's memory
        super().close()


class UploadBuffer:
    """Bytes to upload that botocore turns into a fresh :class:`BufferBody` per request.

    s3fs takes the length of what it uploads and slices it for multipart
    uploads; a file object given as the body of every attempt would be read
    from where the failed attempt stopped when s3fs retries an upload (a
    new request). An :class:`UploadBuffer` is not a file: the hook
    :func:`_upload_body` makes each request's own body, at offset 0, as
    botocore does for ``bytes``.
    """

    __slots__ = ("view",)

    def __init__(self, data: Any) -> None:
        self.view = memoryview(data).cast("B")

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, key: slice) -> UploadBuffer:
        if not isinstance(key, slice):
            raise TypeError("an UploadBuffer is sliced, not indexed")
        return UploadBuffer(self.view[key])


def _upload_body(params: dict[str, Any], **kwargs: Any) -> None:
    """Turn an UploadBuffer body into a file (a botocore ``before-parameter-build`` hook)."""
    body = params.get("Body")
    if isinstance(body, UploadBuffer):
        params["Body"] = BufferBody(body.view)


#: The S3 operations whose body :func:`pipe_buffer` hands over without a copy.
_UPLOAD_EVENTS = (
    "before-parameter-build.s3.PutObject",
    "before-parameter-build.s3.UploadPart",
)


async def pipe_buffer(fs: Any, path: str, data: Any) -> None:
    """Write ``data`` as the object ``path`` of the async file system ``fs``.

    With s3fs the memory of ``data`` is sent as it is: zarr's ``FsspecStore``
    gives ``bytes(chunk)`` (a copy), and botocore's BytesIO of those bytes is
    copied once more by aiohttp; two copies of every chunk being uploaded
    (15 MB each for the HCP-like run, one upload per dask thread) were part
    of the peak memory of a save to S3. Other file systems get ``bytes``.

    Parameters
    ----------
    fs : fsspec.asyn.AsyncFileSystem
        Used from its own event loop (``await``).
    path : str
        The object's path in ``fs``.
    data : buffer
        C-contiguous bytes, unchanged until this returns.

    """
    if not _is_s3fs(fs):
        await fs._pipe_file(path, bytes(data))
        return
    await fs.set_session()
    client = await fs.get_s3(fs.split_path(path)[0])
    for event in _UPLOAD_EVENTS:
        # unique_id: registering again (every chunk) is a no-op
        client.meta.events.register_first(event, _upload_body, unique_id=f"daskmask-{event}")
    await fs._pipe_file(path, UploadBuffer(data))


def share_botocore_models(fs: Any, source: Any) -> None:
    """Let the s3fs file system ``fs`` reuse the API models ``source`` has loaded.

    zarr's stores use file systems of their own, on zarr's event loop; for
    s3fs each starts a botocore session that parses the S3 service model and
    its endpoint rules again: 18 MiB more for a save to S3 after reading
    from it. The models are read-only data; only the loader that holds them
    is shared (credentials, clients and connections stay ``fs``'s own). Does
    nothing unless both are s3fs file systems, ``source`` has a session and
    ``fs`` has neither session nor client yet (a file system rebuilt from a
    pickle, on a worker, starts its own).

    Parameters
    ----------
    fs : s3fs.S3FileSystem
        Not used yet.
    source : s3fs.S3FileSystem
        Already connected (its ``session`` set).

    """
    if not (_is_s3fs(fs) and _is_s3fs(source)) or fs is source:
        return
    loaded = getattr(source, "session", None)
    if loaded is None or fs.session is not None or getattr(fs, "_s3", None) is not None:
        return
    from aiobotocore.session import AioSession

    session = AioSession(**fs.kwargs)  # as s3fs makes its own
    session.register_component("data_loader", loaded.get_component("data_loader"))
    fs.session = session


def _is_s3fs(fs: Any) -> bool:
    """Whether ``fs`` is an s3fs file system (without importing s3fs)."""
    module = sys.modules.get("s3fs")
    return module is not None and isinstance(fs, module.S3FileSystem)


def _distributed_client_active() -> bool:
    """Whether a ``distributed.Client`` computes this process's graphs."""
    if "distributed" not in sys.modules:  # never import distributed just to ask
        return False
    from distributed import default_client

    try:
        default_client()
    except ValueError:
        return False
    return True


def _head_from_stream(location: Location, stat: FileStat) -> bytes | None:
    """Read an object's first bytes with a streamed GET and park it; None if not worth it.

    Worth it when this process may go on to read the object from its first
    byte (dask's threads: ``fit`` streams a ``.nii`` once, or inflates a
    ``.nii.gz``), so that one GET serves the header and the pass. Under a
    distributed client the workers read the data, and a small ranged read is
    all the client needs.
    """
    if stat.size <= HEAD_BYTES or _distributed_client_active():
        return None
    with storage_errors(location.url):
        fs = location.fs
        stream = open_streamed(fs, location.path)
    if stream is None:
        return None
    from fsspec.asyn import sync

    head = bytearray(HEAD_BYTES)
    try:
        filled = sync(fs.loop, fill_from_stream, stream, memoryview(head))
    except Exception:  # the ranged read that replaces it reports the failure, typed
        close_streamed(fs, stream)
        return None
    if filled != HEAD_BYTES:
        close_streamed(fs, stream)
        return None
    parked = ParkedStream(location, (stat.size, stat.version), bytes(head), stream, fs)
    with _HEADS_LOCK:
        previous = _PARKED.pop(location, None)
        _PARKED[location] = parked
    if previous is not None:
        previous.close()
    timer = threading.Timer(PARKED_STREAM_SECONDS, _expire, (parked,))
    timer.daemon = True
    timer.start()
    return parked.head


def _expire(parked: ParkedStream) -> None:
    """Close a parked stream nobody continued."""
    with _HEADS_LOCK:
        if _PARKED.get(parked.location) is not parked:
            return
        del _PARKED[parked.location]
    parked.close()


def take_parked_stream(location: Location) -> ParkedStream | None:
    """Hand over the parked GET of ``location`` (its first bytes read), if there is one.

    The caller continues the stream from ``len(parked.head)`` and closes it.
    The stream serves the object version that was current when
    :func:`object_head` read it (``parked.version``); a pass checks the
    version recorded at open before and after reading, as for a fresh GET.

    Parameters
    ----------
    location : daskmask._fs.Location
        The object.

    Returns
    -------
    ParkedStream or None
        None when no stream is parked for it in this process (expired, taken,
        never opened, or opened by the process this one was forked from).

    """
    with _HEADS_LOCK:
        parked = _PARKED.get(location)
        if parked is None or parked.pid != os.getpid():
            return None
        del _PARKED[location]
    return parked


def object_head(location: Location, stat: FileStat | None = None) -> bytes:
    """Return the first bytes of an object (up to 64 KiB), read once per version.

    Without a distributed client, they are read by a streamed GET that stays
    open for :data:`PARKED_STREAM_SECONDS` (see :func:`take_parked_stream`):
    the pass that ``fit`` makes from the first byte continues it instead of
    sending a GET of its own. Otherwise one small ranged read.

    Parameters
    ----------
    location : daskmask._fs.Location
        The object (not local).
    stat : daskmask._fs.FileStat, optional
        Its size and version now; asked afresh (one HEAD request) if not given.

    Returns
    -------
    bytes

    """
    if stat is None:
        stat = location.stat(refresh=True)
    key = (location, stat.size, stat.version)
    with _HEADS_LOCK:
        head = _HEADS.get(key)
        if head is not None:
            _HEADS.move_to_end(key)
            return head
    head = _head_from_stream(location, stat)
    if head is None:
        head = location.read_range(0, min(stat.size, HEAD_BYTES))
    with _HEADS_LOCK:
        _HEADS[key] = head
        while len(_HEADS) > _HEADS_SIZE:
            _HEADS.popitem(last=False)
    return head


def locate(
    path_or_url: str | os.PathLike[str] | Location,
    storage_options: Mapping[str, Any] | None = None,
) -> Location:
    """Normalise a path or URL into a :class:`Location`.

    Parameters
    ----------
    path_or_url : str, os.PathLike or Location
        A local path (``~`` expanded, made absolute), a ``file://`` URL (a
        local path) or any fsspec URL.
    storage_options : mapping, optional
        File-system options (credentials, endpoint); merged over the dask
        config ``daskmask.storage-options`` for the URL's protocol.

    Returns
    -------
    Location

    """
    if isinstance(path_or_url, Location):
        if storage_options:
            merged = {**path_or_url.storage_options, **storage_options}
            return Location(path_or_url.url, _freeze(merged))
        return path_or_url
    text = os.fspath(path_or_url)
    protocol, path = split_protocol(text)
    if protocol == "file":
        return Location(os.path.abspath(os.path.expanduser(path)))
    options = resolve_storage_options(protocol, storage_options)
    return Location(f"{protocol}://{path}", _freeze(options))


def object_version(info: Mapping[str, Any]) -> str:
    """Return the most specific version marker an fsspec ``info`` dictionary offers."""
    for key in ("VersionId", "version_id", "generation", "ETag", "etag", "md5Hash", "md5"):
        value = info.get(key)
        if value:
            return f"{key}={str(value).strip(chr(34))}"
    for key in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(key)
        if value:
            return f"{key}={value}"
    return f"size={info.get('size')}"


_CREDENTIAL_HINT = (
    "Give credentials through the environment (for S3: AWS_ACCESS_KEY_ID, "
    "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL), through storage_options=..., or through the "
    "dask config key daskmask.storage-options."
)


def translate_error(error: BaseException, url: str) -> BaseException:
    """Map an exception of a storage library to a typed daskmask error.

    Errors that are already daskmask's, and errors that are not about storage,
    are returned unchanged.
    """
    if isinstance(error, StorageError):
        return error
    name = type(error).__name__
    text = str(error)
    lowered = text.lower()
    if isinstance(error, FileNotFoundError) or name in {"NoSuchKey", "NoSuchBucket"}:
        if "bucket" in lowered:
            return ObjectNotFoundError(
                f"{url}: the bucket does not exist ({text}). Check the bucket name, or create "
                "it before writing."
            )
        return ObjectNotFoundError(
            f"{url}: no such file or object. Check the path or URL (and the endpoint)."
        )
    if isinstance(error, OSError) and error.errno == 40:  # ELOOP
        return StorageError(f"{url}: a symbolic link loop. Point the path at a real file.")
    if (
        isinstance(error, PermissionError)
        or name in {"NoCredentialsError", "PartialCredentialsError", "ClientError"}
        and any(
            word in lowered
            for word in (
                "credential",
                "access denied",
                "accessdenied",
                "signature",
                "forbidden",
                "invalidaccesskeyid",
                "403",
            )
        )
        or "credentials" in lowered
    ):
        return StorageAccessError(
            f"{url}: access refused or no credentials ({text}). " + _CREDENTIAL_HINT
        )
    if name in {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
    } or isinstance(error, ConnectionError | TimeoutError):
        return StorageUnreachableError(
            f"{url}: the storage endpoint did not answer ({text}). Check the endpoint URL "
            "(AWS_ENDPOINT_URL or storage_options={'endpoint_url': ...}) and the network."
        )
    if isinstance(error, OSError) and not isinstance(error, StorageError):
        return StorageError(f"{url}: {text or name}")
    return error


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn storage libraries' exceptions raised inside the block into typed errors."""
    try:
        yield
    except StorageError:
        raise
    except Exception as error:
        translated = translate_error(error, url)
        if translated is error:
            raise
        # The message carries the library's words; its traceback (botocore,
        # aiohttp internals) only hides the typed error, so it is not chained
        # (it stays reachable as ``__context__`` for debugging).
        raise translated from None
