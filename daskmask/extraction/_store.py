"""The raw ``(time, voxel)`` intermediate of the extraction, in a scratch directory.

One raw ``(time, voxel)`` file, ``signals.raw``, per graph. Its tasks:

* ``prepare`` creates the file at its full size if it is missing or shorter
  (a sparse extension), and never truncates or shrinks it;
* each stage-1 task writes its rows with ``pwrite``, one call per voxel block;
* after a barrier on every write, each stage-2 task reads its block of columns
  with one ``pread``, or, when the file holds a narrower dtype than the
  result (an int16 run's values, for float32 signals), with one ``pread`` per
  piece of :data:`PIECE_BYTES` cast into the result's dtype.

The file is shared by every computation of the graph (``np.asarray`` in two
threads, ``.compute()`` then ``.mean()``, ``save``) and outlives them all:

* two computations at once each write every row with the same bytes (the
  stage-1 tasks are deterministic), so a reader of one computation only ever
  sees the bytes it expects, whichever computation wrote them last; nothing
  truncates a file another computation may be reading;
* a task recomputed after a worker is lost (a read whose result, or whose
  consumer's result, died with the worker, at any phase, even after every
  block was read once) finds the file complete;
* it is removed only with the :class:`TemporaryStore`, which the graph
  holds. Removing it earlier, when every block has been read once (as
  daskmask did) or in a final task depending on every read, is wrong on a
  cluster: the result of a read can be lost later, while its consumers still
  need it, and must then be read again.

The cost: the intermediate stays on disk (the masked run's size) while the
lazy signals, or anything built on them, are referenced, not only while
they are computed. Drop the lazy array (or rebind its name) to free it. A
computation that was handed to a cluster (``client.compute``,
``client.persist``) must keep the lazy array referenced until its results are
no longer needed: if it is collected, a read recomputed after a worker loss
fails with a ``FileNotFoundError`` that says so.

Where the intermediate lives, how long, and who removes what dead owners left:
:mod:`daskmask._scratch` (one :class:`~daskmask._scratch.TemporaryStore` per
graph). On a cluster whose workers do not see the client's scratch folder the
plan uses dask's P2P rechunk instead (:mod:`daskmask.extraction._plan`).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import numpy as np

from daskmask._rawio import read_exactly, write_exactly

# The scratch directory itself (lease, lifetime, orphans) is daskmask._scratch's.
from daskmask._scratch import TemporaryStore

__all__ = [
    "RAW",
    "SIGNALS",
    "InMemoryIntermediate",
    "TemporaryStore",
    "barrier",
    "prepare_store",
    "read_block",
    "write_blocks",
]

#: Name of the Zarr array inside a temporary directory (unmasking).
SIGNALS = "signals.zarr"
#: Name of the raw ``(time, voxel)`` file of the extraction intermediate.
RAW = "signals.raw"
#: Start of the name of the graph layer that writes and reads the intermediate.
LAYER_PREFIX = "daskmask-voxel-blocks-"
#: Bytes of one piece of a block read in a narrower dtype than its result's: the
#: read holds its cast block and one piece (small enough to stay in the CPU's
#: cache between the ``pread`` and the cast), never the whole narrow block too.
PIECE_BYTES = 1 << 20


def _codec() -> list[Any]:
    from zarr.codecs import BloscCodec

    # lz4 + shuffle: the fastest codec on noisy float32 fMRI (a scratch copy).
    return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]


class InMemoryIntermediate:
    """The intermediate kept in memory, in the result array of an in-process computation.

    When the signals are computed into one result array in this process (see
    :mod:`daskmask.maskers._in_memory`) and that array has the intermediate's
    shape and dtype, its graph optimisation puts an object of this class in
    place of the ``prepare`` task: stage 1 then copies its rows into the
    result (cast to its dtype on the way when they are narrower), and
    stage 2 hands on views of its columns, which the cleaning
    copies before its cleaned block is copied back to the same columns. No
    file is written, read or removed: on the benchmark machine the file's
    ``pwrite`` into fresh page-cache pages alone took 2.1 s of CPU for the
    618 MiB of an HCP-sized run (cProfile), more than the rest of stage 1.

    Parameters
    ----------
    array : callable
        Returns the result array (allocated on first call, then the same one).

    """

    def __init__(self, array: Any) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the in-process schedulers get this graph; a copy elsewhere
        # would write into an array nobody reads.
        raise TypeError("An in-memory intermediate cannot leave its process.")


def _missing(root: str) -> FileNotFoundError:
    return FileNotFoundError(
        errno.ENOENT,
        "The temporary intermediate of these lazy signals was removed, because the lazy "
        "array it belongs to was garbage collected (or its process ended) while a "
        "computation of it still needed it, e.g. a task recomputed after a worker was "
        "lost. Keep the lazy signals referenced until every computation of them "
        "(client.compute, client.persist, save) has finished.",
        root,
    )


def prepare_store(root: Any, shape: tuple[int, int], dtype: str) -> str:
    """Make sure the raw row-major array of a temporary store exists; return its path.

    The intermediate is a plain raw file, not a chunked store, laid out block
    after block: the C-ordered ``(n_timepoints, width)`` array of each voxel
    block of the result, one after the other. Stage 1 writes the rows of its
    slab into each block's region (one contiguous ``pwrite`` per block), and
    stage 2 reads a whole block with one ``pread``. In a row-major
    ``(n_timepoints, n_voxels)`` file stage 2 needed one ``pread`` per time
    point and block (4,800 calls for a 400-volume run in 12 blocks, 4 % of
    the run's CPU time). No codec, no chunk index: the scratch copy costs two
    passes through the page cache (measured on a 1200 x 135k float32 run:
    0.5 s, against 2.6 s with an lz4-compressed Zarr array).

    Idempotent: a file that exists keeps its bytes (another computation of
    the same graph may be reading it), a short one is only extended.

    Parameters
    ----------
    root : str or TemporaryStore
        The temporary directory (it must exist: it is never recreated).
    shape : tuple of int
        ``(n_timepoints, n_voxels)``.
    dtype : str
        Data type.

    Returns
    -------
    str
        Path of the file (sparse until written).

    Raises
    ------
    FileNotFoundError
        If the directory was removed (its graph was garbage collected).

    """
    root = os.fspath(root)
    path = os.path.join(root, RAW)
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        # No O_TRUNC: truncating would zero rows that a concurrent computation
        # of the same graph already wrote and may be reading.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise _missing(root) from None
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return path


def write_blocks(
    block: np.ndarray,
    path: str | InMemoryIntermediate,
    start: int,
    n_timepoints: int,
    edges: tuple[int, ...],
) -> int:
    """Write rows ``start:start + len(block)`` of every voxel block into the file at ``path``.

    Parameters
    ----------
    block : numpy.ndarray
        ``(rows, n_voxels)`` masked slab.
    path : str or InMemoryIntermediate
        The intermediate (:func:`prepare_store`), or the result array it is
        kept in.
    start : int
        Its first time point.
    n_timepoints : int
        Time points of the whole run.
    edges : tuple of int
        Voxel edges of the blocks: block ``b`` holds columns
        ``edges[b]:edges[b + 1]`` (from 0 to ``n_voxels``).

    Returns
    -------
    int
        Rows written.

    Notes
    -----
    Every computation writes the same bytes at the same place, so a write
    never changes what a concurrent reader sees.

    """
    block = np.asarray(block)
    if isinstance(path, InMemoryIntermediate):
        path.array()[start : start + block.shape[0]] = block
        return int(block.shape[0])
    itemsize = block.itemsize
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _missing(os.path.dirname(path)) from None
    try:
        for first, stop in zip(edges[:-1], edges[1:], strict=True):
            rows = np.ascontiguousarray(block[:, first:stop])
            if not rows.size:
                continue
            # block b's region starts after the n_timepoints rows of the blocks before it
            offset = (n_timepoints * first + start * (stop - first)) * itemsize
            write_exactly(fd, memoryview(rows).cast("B"), offset)
    finally:
        os.close(fd)
    return int(block.shape[0])


def barrier(path: str | InMemoryIntermediate, written: list[int]) -> str | InMemoryIntermediate:
    """Wait for every stage-1 write (by depending on them); return the path."""
    return path


def read_block(
    path: str | InMemoryIntermediate,
    start: int,
    stop: int,
    shape: tuple[int, int],
    dtype: str,
    out_dtype: str | None = None,
) -> Any:
    """Read the voxel block of columns ``start:stop`` (all rows) written by :func:`write_blocks`.

    Parameters
    ----------
    path : str or InMemoryIntermediate
        The intermediate (:func:`prepare_store`), or the result array it is
        kept in.
    start, stop : int
        Its columns.
    shape : tuple of int
        ``(n_timepoints, n_voxels)`` of the intermediate.
    dtype : str
        Data type of the file.
    out_dtype : str or None, default=None
        Data type of the block returned (None: ``dtype``); the file's values
        are cast to it exactly, :data:`PIECE_BYTES` at a time.

    Returns
    -------
    numpy.ndarray
        C-contiguous ``(n_timepoints, stop - start)`` block; for an
        :class:`InMemoryIntermediate`, a view of the result's columns.

    Raises
    ------
    FileNotFoundError
        If the intermediate was removed (its graph was garbage collected).

    """
    stored = np.dtype(dtype)
    wanted = stored if out_dtype is None else np.dtype(out_dtype)
    if isinstance(path, InMemoryIntermediate):
        columns = path.array()[:, start:stop]  # a view: its consumer copies it
        return columns if columns.dtype == wanted else columns.astype(wanted)
    n_rows, width = int(shape[0]), stop - start
    block = np.empty((n_rows, width), dtype=wanted)
    if not block.size:
        return block
    offset = n_rows * start * stored.itemsize
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _missing(os.path.dirname(path)) from None
    try:
        if stored == wanted:
            # One pread for the whole block (see daskmask._rawio on memory maps).
            read_exactly(fd, memoryview(block).cast("B"), offset)
            return block
        rows = max(1, PIECE_BYTES // (width * stored.itemsize))
        piece = np.empty((min(rows, n_rows), width), dtype=stored)
        for first in range(0, n_rows, rows):
            part = piece[: min(rows, n_rows - first)]
            read_exactly(fd, memoryview(part).cast("B"), offset + first * width * stored.itemsize)
            block[first : first + len(part)] = part
    finally:
        os.close(fd)
    return block
