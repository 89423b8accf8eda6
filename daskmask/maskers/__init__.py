"""The estimators users call: nilearn's maskers, with the same parameters and results."""

from daskmask.maskers._nifti import NiftiMasker

__all__ = ["NiftiMasker"]
