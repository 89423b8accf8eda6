"""The estimators users call: nilearn's maskers, with the same parameters and results.

The names load on first use (PEP 562): the maskers are scikit-learn estimators,
and importing scikit-learn takes about 0.5 s, which code that only needs
:mod:`daskmask.maskers._core` (the batch command) does without.
"""

import gc
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
    # The first masker imports the scientific stack and scikit-learn (1.2-1.5 s); Python's
    # cyclic garbage collector would walk what those imports create three times over, though
    # modules, classes and functions are no garbage: it pauses during the imports and is
    # then left as the caller had it. Nothing is frozen (gc.freeze): a library must not
    # take its caller's existing objects out of the collections (cyclic garbage among them
    # would never be reclaimed); the daskmask command, which owns its process, does freeze.
    collecting = gc.isenabled()
    gc.disable()
    try:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    finally:
        if collecting:
            gc.enable()
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
