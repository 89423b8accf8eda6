"""Self-contained HTML reports (no network: inline CSS, embedded figures)."""

from daskmask.reporting._html import HTMLReport
from daskmask.reporting._masker import masker_report

__all__ = ["HTMLReport", "masker_report"]
