"""Write a results store: every chunk checksummed, the manifest and marker last.

Where the store is written and how it is put in place is the backend's
(:mod:`daskmask.storage._backends`): a local work folder renamed into place,
or an object-store prefix made complete by its root written last.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec

from daskmask._fs import Location, locate, storage_errors
from daskmask._version import __version__
from daskmask.storage import _layout as layout
from daskmask.storage._assemble import assemble
from daskmask.storage._backends import StoreBackend, WriteTarget, backend_for
from daskmask.storage._errors import SignalsLayoutError
from daskmask.storage._integrity import checksum_codec


def default_compressors() -> tuple[BytesBytesCodec, ...]:
    """Return the codecs of a deliverable store: Blosc lz4 level 5 with byte shuffle.

    Cleaned fMRI signals are noise-like float32 and compress little. Measured
    on z-scored HCP-sized signals (1200 x 45,000 float32, 216 MB, chunks of
    1200 x 7,500): lz4-5 writes in 0.36 s for a ratio of 1.07, zstd-5 in
    1.53 s for 1.16, zstd-1 in 0.79 s for 1.09. lz4 keeps the write off the
    critical path; pass ``compressor=[BloscCodec(cname="zstd", clevel=5,
    shuffle="shuffle")]`` for smaller files.
    """
    return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)


def _compressors(compressor: Any) -> tuple[BytesBytesCodec, ...]:
    """Normalise the ``compressor`` argument of :func:`save` to a tuple of codecs."""
    if isinstance(compressor, str):
        if compressor != "default":
            raise ValueError(
                f"compressor must be 'default', None or zarr codecs, not {compressor!r}."
            )
        return default_compressors()
    if compressor is None:
        return ()
    codecs = tuple(compressor) if isinstance(compressor, Sequence) else (compressor,)
    for codec in codecs:
        if not isinstance(codec, BytesBytesCodec):
            raise TypeError(
                "compressor must be 'default', None, or zarr v3 bytes-to-bytes codecs "
                f"(e.g. zarr.codecs.ZstdCodec()), got {type(codec).__name__}."
            )
    return codecs


def _encoding(dataset: xr.Dataset, compressors: tuple[BytesBytesCodec, ...]) -> dict:
    """Return the ``to_zarr`` encoding: chunks of the signals, codecs, no CF fill values.

    Every array, coordinates included, ends its codecs with ``crc32c``: each
    chunk file carries the checksum of its bytes (see
    :mod:`daskmask.storage._integrity`).
    """
    checked = (*compressors, checksum_codec())
    encoding: dict[str, dict[str, Any]] = {
        name: {"compressors": checked} for name in dataset.variables
    }
    for name in (layout.SIGNALS, layout.MASK, layout.MEAN_IMAGE):
        if name not in dataset:
            continue
        data = dataset[name].data
        chunks = layout.regular_chunks(data.chunks) if hasattr(data, "chunks") else None
        encoding[name] = {
            "compressors": checked,
            "_FillValue": None,
            "chunks": chunks if chunks is not None else tuple(max(n, 1) for n in data.shape),
        }
    return encoding


def save(
    X: xr.DataArray,
    path: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    compressor: Any = "default",
    mask_img: Any = None,
    mean_img: Any = None,
) -> Path | str:
    """Write signals with their mask, mean image and metadata to one Zarr store.

    Parameters
    ----------
    X : xarray.DataArray
        Signals, dims ``("time", "voxel")`` or ``("voxel",)``, dask- or
        numpy-backed, with coordinates ``i, j, k`` (and ``x, y, z``) along
        ``voxel`` and attributes ``affine``, ``mask_shape``,
        ``masker_params``, ``provenance`` and the lazy ``mean_image``, as
        :meth:`daskmask.NiftiMasker.transform` returns them.
    path : str or os.PathLike
        Local directory of the store (conventionally ending in ``.zarr``), or
        the URL of an object-store prefix (``s3://bucket/sub-01.zarr``,
        ``gs://...``, any fsspec URL).
    storage_options : mapping, optional
        File-system options for a URL (credentials, ``endpoint_url``, ...),
        merged over the dask config ``daskmask.storage-options``; by default
        the file system's usual environment (for S3: ``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``).
    overwrite : bool, default=False
        Replace an existing store at ``path``. Only Zarr stores (or empty
        directories) are ever replaced. Locally the old store is removed only
        once the new one is complete; in an object store it is invalidated
        first (see Notes).
    compressor : "default", None, or zarr codec(s)
        ``"default"``: Blosc lz4 level 5 with byte shuffle; None:
        uncompressed; or one or more zarr v3 bytes-to-bytes codecs.
    mask_img : nibabel image, optional
        The mask, instead of the one rebuilt from ``i, j, k`` and
        ``attrs["mask_shape"]``; it must select the same voxels.
    mean_img : nibabel image, optional
        The mean image, instead of ``attrs["mean_image"]``.

    Returns
    -------
    pathlib.Path or str
        The absolute path of a local store, or the URL of an object-store one.

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is false (or ``path`` is not a store).
    SignalsLayoutError
        ``X`` does not follow the signals contract, or disagrees with the images.
    daskmask.exceptions.StorageError
        An object store cannot be written: a missing bucket
        (:class:`~daskmask.exceptions.ObjectNotFoundError`), missing or wrong
        credentials (:class:`~daskmask.exceptions.StorageAccessError`), an
        endpoint that does not answer
        (:class:`~daskmask.exceptions.StorageUnreachableError`).

    Notes
    -----
    The signals and the mean image are computed in one dask computation on
    the current scheduler (a distributed ``Client`` if one is active), so the
    input is read once; each task writes its chunks itself (on a cluster,
    workers write straight to the object store, no data goes through the
    client). Every chunk carries a CRC-32C, and the root attributes
    ``manifest`` (the chunks of every array) and ``complete`` are written
    last.

    A local store is written into a hidden work folder
    ``.<name>.partial-<token>`` beside ``path``, leased by this process, and
    then renamed to ``path``, or swapped with the old store in one atomic
    step. If anything fails, the work folder is deleted and nothing appears at
    ``path``; if the process is killed, the next save into the same folder
    deletes what it left (only once its lease shows that the process is
    gone). See :mod:`daskmask.storage._commit`.

    An object store has no rename: the store is written at ``path`` itself,
    its root first written as ``complete: false`` (which, on an overwrite,
    invalidates the old store before its objects are deleted) and rewritten
    with the manifest and ``complete: true`` as the last object. Until then
    :func:`open_results` refuses it as incomplete. See
    :mod:`daskmask.storage._backends`.

    """
    plan = plan_store(
        X,
        path,
        storage_options,
        overwrite=overwrite,
        compressor=compressor,
        mask_img=mask_img,
        mean_img=mean_img,
    )
    pending = begin_store(plan)
    try:
        with store_errors(plan.location):
            dask.compute(*pending.writes)
    except BaseException as error:
        abort_store(pending, error)
        raise
    return commit_store(pending)


# ------------------------------------------------------------------ the steps of a save
# plan (nothing written) -> begin (metadata written, chunk writes pending as dask
# arrays) -> compute the writes -> commit (manifest and marker last) or abort.
# save() computes one store's writes; save_many() computes many stores' together.


@dataclass(frozen=True)
class StorePlan:
    """What one store will hold and where, checked and assembled; nothing written yet."""

    #: Where the store will be once complete.
    location: Location
    #: How it is written there.
    backend: StoreBackend
    #: The lazy Dataset to write (signals, mask, mean image, root attributes).
    dataset: xr.Dataset
    #: The ``to_zarr`` encoding (chunks, codecs, no fill values).
    encoding: dict[str, dict[str, Any]]
    #: Whether an existing store may be replaced.
    overwrite: bool

    @property
    def result(self) -> Path | str:
        """What :func:`save` returns for this store: a local path or the URL."""
        location = self.location
        return Path(location.path) if location.is_local else location.url


@dataclass
class PendingStore:
    """A store begun: its metadata and small arrays written, its chunk writes pending.

    ``writes`` are dask arrays whose computation writes every chunk of every
    lazy array of the store (each task writes its own chunk, wherever it runs)
    and returns one small boolean per chunk. They are arrays, not a
    ``Delayed``: dask loses the keys of a delayed built over a P2P rechunk (the
    reorganisation on a cluster without a shared disk), arrays keep them.
    """

    plan: StorePlan
    target: WriteTarget
    writes: list[da.Array]


def store_errors(location: Location) -> contextlib.AbstractContextManager[None]:
    """Turn a storage library's errors (in the client or a worker) into typed ones."""
    return contextlib.nullcontext() if location.is_local else storage_errors(location.url)


def plan_store(
    X: xr.DataArray,
    path: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    compressor: Any = "default",
    mask_img: Any = None,
    mean_img: Any = None,
) -> StorePlan:
    """Check the target and assemble the Dataset of one store (see :func:`save`).

    Raises what :func:`save` raises before writing anything:
    :class:`StoreExistsError`, :class:`SignalsLayoutError`, a storage error.
    """
    location = locate(path, storage_options)
    backend = backend_for(location)
    backend.check_target(location, overwrite)
    compressors = _compressors(compressor)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dataset = assemble(
        X, mask_img=mask_img, mean_img=mean_img, version=__version__, created=created
    )
    return StorePlan(location, backend, dataset, _encoding(dataset, compressors), overwrite)


def begin_store(plan: StorePlan) -> PendingStore:
    """Start writing the store of ``plan``: metadata now, chunk writes as dask arrays.

    On failure, what was begun is removed (the backend's ``abort``) and the
    error raised.
    """
    target = plan.backend.begin(plan.location, plan.overwrite)
    try:
        with store_errors(plan.location):
            _without_lazy_data(plan.dataset).to_zarr(
                target.store if target.staging is None else target.staging,
                mode=target.mode,
                compute=False,  # metadata and in-memory arrays now, no lazy chunk
                zarr_format=3,
                consolidated=False,
                encoding=plan.encoding,
                # every chunk written, even one of fill values only: a missing chunk is damage
                write_empty_chunks=True,
            )
            plan.backend.publish(target)
            writes = _chunk_writes(plan.dataset, target.store)
    except BaseException as error:
        plan.backend.abort(target, error)
        raise
    return PendingStore(plan, target, writes)


def _without_lazy_data(dataset: xr.Dataset) -> xr.Dataset:
    """Return ``dataset`` with every dask array replaced by an empty one of its chunks.

    ``to_zarr(compute=False)`` then writes the metadata without building (and
    materialising) a delayed over the signals' graph, which is thrown away:
    :func:`_chunk_writes` writes the chunks.
    """

    def empty(variable: xr.Variable) -> xr.Variable:
        data = variable.data
        if not isinstance(data, da.Array):
            return variable
        return variable.copy(data=da.empty(data.shape, chunks=data.chunks, dtype=data.dtype))

    template = dataset.copy()
    for name, variable in dataset.variables.items():
        if isinstance(variable.data, da.Array):
            if name in dataset.coords:
                template = template.assign_coords({name: empty(variable)})
            else:
                template[name] = empty(variable)
    return template


def _written_flag(block: np.ndarray) -> np.ndarray:
    """One True per chunk written (what the computation of a write returns)."""
    return np.ones((1,) * block.ndim, dtype=bool)


def _chunk_writes(dataset: xr.Dataset, store: Any) -> list[da.Array]:
    """Return, per lazy array of ``dataset``, a dask array that writes its chunks.

    Every chunk is written, even one of fill values only (a missing chunk is
    damage, see :mod:`daskmask.storage._integrity`).
    """
    group = zarr.open_group(store, mode="r+", zarr_format=3)
    writes = []
    for name, variable in dataset.variables.items():
        if not isinstance(variable.data, da.Array):
            continue  # written by to_zarr already
        target = group[str(name)]
        if target.dtype != variable.dtype or target.shape != variable.shape:
            raise SignalsLayoutError(  # the assembled Dataset carries no CF encoding
                f"The store's array {name!r} is {target.dtype}{target.shape}, its data "
                f"{variable.dtype}{variable.shape}."
            )
        target = target.with_config({"write_empty_chunks": True})
        stored = da.store(
            variable.data,
            target,
            lock=False,
            compute=False,
            return_stored=True,
            load_stored=False,
        )
        writes.append(
            stored.map_blocks(
                _written_flag,
                chunks=tuple((1,) * len(sizes) for sizes in stored.chunks),
                dtype=bool,
                token=f"store-written-{name}",
            )
        )
    return writes


def commit_store(pending: PendingStore) -> Path | str:
    """Make a store whose chunks are all written complete (manifest and marker last).

    On failure the store is aborted (never left looking complete) and the
    error raised.
    """
    plan = pending.plan
    try:
        with store_errors(plan.location):
            plan.backend.commit(pending.target, plan.overwrite)
    except BaseException as error:
        plan.backend.abort(pending.target, error)
        raise
    return plan.result


def abort_store(pending: PendingStore, error: BaseException) -> None:
    """Remove what a failed write left, so that nothing opens as complete."""
    pending.plan.backend.abort(pending.target, error)
