"""What ``fit`` keeps of the run it computed the mask from, for ``transform`` to reuse.

A mean-based mask strategy (``background``, ``epi``) reduces the whole run to
its mean over time. When the run is one file or object read unchanged, that
work is kept in one :class:`FittedRun`, held by the masker in one attribute:

* the run's identity: path or URL, size, and version (modification time and
  inode, or the object's ETag / version id), as
  :func:`~daskmask.reading._decode.source_key` gives it;
* the mean, reused as the signals' mean image instead of reducing the run
  again;
* for a ``.nii.gz``, the handle of the decoded copy in scratch (one inflate
  pass serves ``fit`` and ``transform``), when there is one; for a ``.nii``
  object read by this process, its local copy (fetched once:
  :func:`~daskmask.reading._decode.fetches_once`).

``transform`` asks :meth:`FittedRun.kept_for` with the run it reads: a
different file, or the same file in another version, gets nothing, so the
fit's work is never reused for changed data. The decoded copy lives in the
client's scratch folder: it is made, and used, only when every process that
computes sees that folder (:func:`daskmask._scratch.scratch_is_shared`); on a
cluster whose workers do not, ``transform`` reads the ``.nii.gz`` itself. A
pickled FittedRun keeps the identity and the mean, never the decoded copy (a
temporary of this process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from daskmask._memory import release_free_memory
from daskmask._scratch import scratch_is_shared, temporary_base
from daskmask.masking._mean import mean_volume
from daskmask.reading._decode import (
    decode_once,
    fetches_once,
    file_source,
    is_gzip_file,
    source_key,
)

__all__ = ["FittedRun"]


@dataclass(frozen=True, eq=False)
class FittedRun:
    """The identity of a fitted run, its mean over time, and its decoded copy (if any).

    Build it with :meth:`from_run`.
    """

    #: :func:`~daskmask.reading._decode.source_key` of the file or object.
    key: tuple[Any, ...]
    #: The mean over time (``fit``'s mask strategies computed the mask from it).
    mean: np.ndarray
    #: The run over its decoded copy in scratch (``.nii.gz`` only), or None.
    decoded: xr.DataArray | None = None

    @classmethod
    def from_run(cls, run: xr.DataArray, *, chunk_volumes: int) -> FittedRun | None:
        """Compute the mean of ``run`` (and decode it once if gzip-compressed).

        Parameters
        ----------
        run : xarray.DataArray
            A run from :func:`daskmask.open_nifti`.
        chunk_volumes : int
            Volumes inflated at a time (a ``.nii.gz``).

        Returns
        -------
        FittedRun or None
            None when ``run`` is not one file or object read unchanged (a
            derived array, several files, an in-memory image): nothing of it
            can be recognised later.

        """
        source = file_source(run)
        if source is None:
            return None
        key = source_key(source)
        decoded = None
        # A local .nii.gz decodes into this process's scratch: only when every
        # worker can read it. An object's pass picks its own place (a worker
        # under distributed, without a copy). A .nii object read by this
        # process is fetched once into scratch the same way (identity decoder).
        gzip_pass = is_gzip_file(source) and (not isinstance(source, str) or scratch_is_shared())
        if gzip_pass or fetches_once(source):
            decoded, mean = decode_once(run, temporary_base(), chunk_volumes=chunk_volumes)
        else:
            mean = mean_volume(run)
        release_free_memory()  # the pass's freed slabs, before transform's result
        return cls(key, np.asarray(mean), decoded)

    def kept_for(self, run: xr.DataArray) -> tuple[np.ndarray | None, xr.DataArray | None]:
        """Return the mean and the decoded copy for ``run``, if it is the fitted version.

        Parameters
        ----------
        run : xarray.DataArray
            The run ``transform`` opened.

        Returns
        -------
        mean : numpy.ndarray or None
            The fitted mean, or None for another file or version.
        decoded : xarray.DataArray or None
            The decoded copy, or None (another file or version, none made,
            or workers that cannot see this process's scratch folder).

        """
        source = file_source(run)
        if source is None or source_key(source) != self.key:
            return None, None
        decoded = self.decoded if self.decoded is not None and scratch_is_shared() else None
        return self.mean, decoded

    def __reduce__(self) -> tuple[Any, ...]:
        # The decoded copy is a temporary of this process: never pickled.
        return (type(self), (self.key, self.mean, None))
