"""Write a results store: every chunk checksummed, the manifest and marker last.

Where the store is written and how it is put in place is the backend's
(:mod:`daskmask.storage._backends`): a local work folder renamed into place,
or an object-store prefix made complete by its root written last.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import xarray as xr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec

from daskmask._fs import locate, storage_errors
from daskmask._version import __version__
from daskmask.storage import _layout as layout
from daskmask.storage._assemble import assemble
from daskmask.storage._backends import backend_for
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
    location = locate(path, storage_options)
    backend = backend_for(location)
    backend.check_target(location, overwrite)
    compressors = _compressors(compressor)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dataset = assemble(
        X, mask_img=mask_img, mean_img=mean_img, version=__version__, created=created
    )
    encoding = _encoding(dataset, compressors)

    target = backend.begin(location, overwrite)
    try:
        # errors of a storage library, raised in the client or a worker, become typed
        network = contextlib.nullcontext() if location.is_local else storage_errors(location.url)
        with network:
            # compute=True: one computation of every array, as dask.compute of the
            # delayed of compute=False, which dask breaks (keys renamed, graph not)
            # when the graph holds a P2P rechunk (the reorganisation on a cluster
            # without a shared disk, daskmask.extraction).
            dataset.to_zarr(
                target.store,
                mode=target.mode,
                compute=True,
                zarr_format=3,
                consolidated=False,
                encoding=encoding,
                # every chunk written, even one of fill values only: a missing chunk is damage
                write_empty_chunks=True,
            )
        backend.commit(target, overwrite)
    except BaseException as error:
        backend.abort(target, error)
        raise
    return Path(location.path) if location.is_local else location.url
