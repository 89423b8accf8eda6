"""The estimators users call: nilearn's maskers, with the same parameters and results.

The names load on first use (PEP 562): the maskers are scikit-learn estimators,
and importing scikit-learn takes about 0.5 s, which code that only needs
:mod:`daskmask.maskers._core` (the batch command) does without.
"""

from daskmask._lazy import lazy_names

__all__ = ["MultiNiftiMasker", "NiftiMasker"]

#: name -> (module that defines it, attribute)
_LAZY = {
    "MultiNiftiMasker": ("daskmask.maskers._multi", "MultiNiftiMasker"),
    "NiftiMasker": ("daskmask.maskers._nifti", "NiftiMasker"),
}

__getattr__, __dir__ = lazy_names(globals(), _LAZY)
