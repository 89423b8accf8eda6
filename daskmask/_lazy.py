"""Names of a package loaded on first use (PEP 562), so that importing it stays light.

``daskmask`` and ``daskmask.maskers`` both define their public names this way:
nothing heavy (dask.array, xarray, scipy, scikit-learn, zarr, distributed) is
imported before a name that needs it is used.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    namespace: dict[str, Any], names: Mapping[str, tuple[str, str | None]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Return a module's ``__getattr__`` and ``__dir__`` that load ``names`` on first use.

    Parameters
    ----------
    namespace : dict
        The module's ``globals()``: a loaded name is stored there, so later
        lookups skip ``__getattr__``.
    names : mapping of str to (str, str or None)
        Public name -> (module to import, attribute of it; None for the module itself).

    Returns
    -------
    (callable, callable)
        The module's ``__getattr__`` and ``__dir__``.

    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, attribute = names[name]
        # The first use imports the scientific stack (scikit-learn too for a masker:
        # 1.2-1.5 s); Python's cyclic garbage collector would walk what those imports
        # create three times over, though modules, classes and functions are no garbage:
        # it pauses during the imports and is then left as the caller had it. Nothing is
        # frozen (gc.freeze): a library must not take its caller's existing objects out
        # of the collections (cyclic garbage among them would never be reclaimed); the
        # daskmask command, which owns its process, does freeze.
        collecting = gc.isenabled()
        gc.disable()
        try:
            module = importlib.import_module(module_name)
        finally:
            if collecting:
                gc.enable()
        value = module if attribute is None else getattr(module, attribute)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
