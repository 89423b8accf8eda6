"""``HTMLReport``: a self-contained HTML report for notebooks, files and browsers."""

from __future__ import annotations

import html
import os
import tempfile
import webbrowser
from pathlib import Path

from daskmask._warnings import warn_user
from daskmask.reporting._template import PAGE

__all__ = ["HTMLReport"]

_DEFAULT_SIZE = 800


class HTMLReport:
    """An HTML report that needs nothing from the network.

    CSS is inline and figures are embedded as ``data:`` URIs, so the page
    shows the same offline, in a notebook, in a saved file or in an iframe.

    Parameters
    ----------
    body : str
        The report's HTML fragment (it carries its own ``<style>``).
    title : str
        Document title (``<title>``).
    width, height : int, default=800
        Size of the iframe made by :meth:`get_iframe`.

    """

    def __init__(
        self, body: str, title: str, width: int = _DEFAULT_SIZE, height: int = _DEFAULT_SIZE
    ) -> None:
        self.body = body
        self.title = title
        self.width = _DEFAULT_SIZE
        self.height = _DEFAULT_SIZE
        self.resize(width, height)

    def resize(self, width: int, height: int) -> HTMLReport:
        """Set the iframe size; invalid values warn and keep the default (800).

        Parameters
        ----------
        width, height : int
            Size in pixels.

        Returns
        -------
        HTMLReport
            The report itself.

        """
        self.width = _check_size(width, "width")
        self.height = _check_size(height, "height")
        return self

    def _repr_html_(self) -> str:
        return self.body

    def __str__(self) -> str:
        return self.body

    def get_standalone(self) -> str:
        """Return the full HTML document (doctype, head and body)."""
        return PAGE.format(title=html.escape(self.title), body=self.body)

    def save_as_html(self, file_name: str | os.PathLike) -> Path:
        """Write the standalone document to ``file_name`` (UTF-8).

        Returns
        -------
        pathlib.Path
            The written file.

        """
        path = Path(file_name)
        path.write_text(self.get_standalone(), encoding="utf-8")
        return path

    def get_iframe(self, width: int | None = None, height: int | None = None) -> str:
        """Return an ``<iframe>`` holding the whole document in its ``srcdoc``.

        Parameters
        ----------
        width, height : int or None, default=None
            Size in pixels (default: :attr:`width`, :attr:`height`).

        Returns
        -------
        str
            The iframe element.

        """
        width = self.width if width is None else _check_size(width, "width")
        height = self.height if height is None else _check_size(height, "height")
        document = html.escape(self.get_standalone(), quote=True)
        return (
            f'<iframe srcdoc="{document}" width="{width}" height="{height}" '
            'style="border: none;" sandbox="allow-same-origin"></iframe>'
        )

    def open_in_browser(self, file_name: str | os.PathLike | None = None) -> Path:
        """Save the report (a temporary file by default) and open it in a browser.

        Returns
        -------
        pathlib.Path
            The saved file.

        """
        if file_name is None:
            handle, name = tempfile.mkstemp(prefix="daskmask_report_", suffix=".html")
            os.close(handle)
            file_name = name
        path = self.save_as_html(file_name).resolve()
        webbrowser.open(path.as_uri())
        return path


def _check_size(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        warn_user(
            f"Invalid report {name} {value!r}: it must be a positive integer. "
            f"Using the default instead, {_DEFAULT_SIZE}.",
            UserWarning,
        )
        return _DEFAULT_SIZE
    return value
