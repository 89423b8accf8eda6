"""Reading NIfTI images as lazy, time-chunked xarray DataArrays."""

from __future__ import annotations

from daskmask.reading._sources import open_nifti

__all__ = ["open_nifti"]
