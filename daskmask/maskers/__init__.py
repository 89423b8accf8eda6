"""The estimators users call: nilearn's maskers, with the same parameters and results."""

from daskmask.maskers._multi import MultiNiftiMasker
from daskmask.maskers._nifti import NiftiMasker

__all__ = ["MultiNiftiMasker", "NiftiMasker"]
