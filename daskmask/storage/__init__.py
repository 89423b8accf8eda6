"""The Zarr results store: one self-describing store per extraction.

:func:`save` writes signals with their mask, mean image, coordinates,
masker parameters and provenance, atomically; :func:`open_results` reopens
the store lazily as a :class:`Results`.
"""

from daskmask.storage._errors import (
    CorruptStoreError,
    IncompleteStoreError,
    NotAStoreError,
    SignalsLayoutError,
    StoreExistsError,
    StoreNotFoundError,
)
from daskmask.storage._read import open_results
from daskmask.storage._results import Results
from daskmask.storage._save_many import save_many
from daskmask.storage._write import save

__all__ = [
    "CorruptStoreError",
    "IncompleteStoreError",
    "NotAStoreError",
    "Results",
    "SignalsLayoutError",
    "StoreExistsError",
    "StoreNotFoundError",
    "open_results",
    "save",
    "save_many",
]
