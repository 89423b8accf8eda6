"""The estimators users call: nilearn's maskers, with the same parameters and results.

The names load on first use (PEP 562): the maskers are scikit-learn estimators,
and importing scikit-learn takes about 0.5 s, which code that only needs
:mod:`daskmask.maskers._core` (the batch command) does without.
"""

import importlib

__all__ = ["MultiNiftiMasker", "NiftiMasker"]

#: name -> module that defines it
_LAZY = {
    "MultiNiftiMasker": "daskmask.maskers._multi",
    "NiftiMasker": "daskmask.maskers._nifti",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
