"""Warnings that point at the user's code, whatever the path through daskmask.

A fixed ``stacklevel`` is right for one entry point only: ``fit_transform``
calls ``transform`` one frame deeper, decorators add frames, and the same
check runs from several public functions. :func:`warn_user` skips every frame of
daskmask instead, so the warning names the line of the user's call (Python
3.12's ``skip_file_prefixes`` does the same; daskmask supports 3.10).
"""

from __future__ import annotations

import sys
import warnings

_PACKAGE = __name__.partition(".")[0]


def _inside_package(frame) -> bool:  # type: ignore[no-untyped-def]
    name = frame.f_globals.get("__name__", "")
    return name == _PACKAGE or name.startswith(_PACKAGE + ".")


def warn_user(message: str | Warning, category: type[Warning] = UserWarning) -> None:
    """Issue a warning attributed to the user's line that led to it.

    Parameters
    ----------
    message : str or Warning
        The message (or a Warning instance, whose class is then the category).
    category : type of Warning, default=UserWarning
        The warning's class.

    """
    frame = sys._getframe(1)
    level = 2  # 1 would name this function's frame; 2 names its caller
    while frame.f_back is not None and _inside_package(frame):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
