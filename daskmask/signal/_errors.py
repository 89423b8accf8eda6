"""Errors raised by signal cleaning."""

from __future__ import annotations

from daskmask.exceptions import DaskmaskError


class AllVolumesRemovedError(DaskmaskError, ValueError):
    """Every volume of a run was censored by ``sample_mask``.

    A ``ValueError`` (what nilearn 0.14.1 ends up raising for an empty
    sample mask) with a message that says what happened.
    """

    def __init__(self, run: int | None = None) -> None:
        where = "" if run is None else f" (run {run})"
        super().__init__(
            f"The sample mask{where} is empty: every volume was marked as "
            "censored, nothing is left to clean."
        )
