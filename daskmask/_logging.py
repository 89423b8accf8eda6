"""Progress lines in nilearn's format: ``[NiftiMasker.fit] Computing mask``.

The prefix names the *outermost* public estimator method being run, so the
lines printed while ``fit_transform`` calls ``fit`` read
``[NiftiMasker.fit_transform] ...``, as nilearn users are used to. The method
is tracked with a context variable set by :func:`logged_method` instead of
walking the interpreter stack.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import xarray as xr

_current_method: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "daskmask_current_method", default=None
)

_F = TypeVar("_F", bound=Callable[..., Any])

#: Longest file name shown at verbose=1 before it is cut with "...".
_SHORT_NAME_LENGTH = 20


def logged_method(method: _F) -> _F:
    """Make ``method`` the prefix of log lines unless an outer method already is."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _current_method.get() is not None:
            return method(self, *args, **kwargs)
        token = _current_method.set(f"{type(self).__name__}.{method.__name__}")
        try:
            return method(self, *args, **kwargs)
        finally:
            _current_method.reset(token)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def logging_as(estimator: Any, method_name: str) -> Iterator[None]:
    """Prefix log lines with ``estimator``'s ``method_name`` unless an outer method does."""
    token = None
    if _current_method.get() is None:
        token = _current_method.set(f"{type(estimator).__name__}.{method_name}")
    try:
        yield
    finally:
        if token is not None:
            _current_method.reset(token)


def log(message: str, verbose: int | bool, level: int = 1) -> None:
    """Print ``message`` with the current method prefix when ``verbose >= level``."""
    if int(verbose) < level:
        return
    prefix = _current_method.get()
    print(f"[{prefix}] {message}" if prefix else message, flush=True)


def short_file_name(path: str | Path, shorten: bool = True) -> str:
    """Return a file name fit for a log line.

    At most about 20 characters: a long name is cut and ends with ``...``;
    a short one keeps as many parent folders as fit, behind ``.../``. A URL
    (``s3://bucket/run.nii.gz``) is shown whole when not shortened.
    """
    if isinstance(path, str) and "://" in path:
        # A URL: pathlib would fold its "//"; keep it whole, or shorten its name.
        if not shorten:
            return path
        path = Path(path.partition("://")[2])
    path = Path(path)
    if not shorten:
        return str(path)
    name = path.name
    if len(name) > _SHORT_NAME_LENGTH:
        return name[: _SHORT_NAME_LENGTH - 2] + "..."
    shown = Path(name)
    for parent in reversed(path.parts[:-1]):
        if len(str(shown)) + len(parent) >= _SHORT_NAME_LENGTH - 3:
            return str(Path("...", shown))
        shown = Path(parent, shown)
    return str(shown)


def describe_images(imgs: Any, verbose: int | bool) -> str | None:
    """Describe ``imgs`` for a "Loading data from ..." line, or None to skip it.

    Paths (and DataArrays opened from files by :func:`daskmask.open_nifti`)
    are shown by file name at ``verbose=1`` and by full path from
    ``verbose=2``; other objects by their ``repr``.
    """
    verbose = int(verbose)
    if verbose < 1:
        return None
    if isinstance(imgs, xr.DataArray):
        source = imgs.attrs.get("source")
        if isinstance(source, (str, Path)) and not str(source).startswith("<"):
            imgs = source
        elif isinstance(source, list) and source:
            imgs = source
    if isinstance(imgs, (str, Path)):
        return short_file_name(imgs, shorten=verbose == 1)
    if isinstance(imgs, Sequence) and imgs and all(isinstance(i, (str, Path)) for i in imgs):
        names = [short_file_name(i, shorten=verbose == 1) for i in imgs]
        if verbose == 1 and len(names) > 3:
            names = [names[0], "...", names[-1]]
        return "[" + ", ".join(names) + "]"
    return repr(imgs)
