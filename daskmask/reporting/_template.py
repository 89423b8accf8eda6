"""The report's page: inline CSS and HTML skeleton (no external resource).

The figure block stacks an optional second picture over the first one and
reveals it on hover with CSS only, so the page works without scripts.
"""

from __future__ import annotations

__all__ = ["CSS", "PAGE", "SCOPE"]

#: Class of the element wrapping a report; all CSS rules are scoped to it so
#: that a report embedded in a notebook does not restyle the notebook.
SCOPE = "daskmask-report"

CSS = """
.daskmask-report {
  font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif;
  color: #1f2328; background: #ffffff; max-width: 1200px; margin: 0 auto;
  padding: 12px 18px; line-height: 1.45; font-size: 14px;
}
.daskmask-report h1 { font-size: 1.7em; margin: 0.2em 0 0.6em; color: #0b3d2e; }
.daskmask-report h2 { font-size: 1.15em; margin: 1.2em 0 0.4em; color: #0b3d2e;
  border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
.daskmask-report .dm-warnings { background: #fff4e5; border-left: 5px solid #d97706;
  padding: 6px 14px; margin: 0 0 14px; }
.daskmask-report .dm-warnings h2 { color: #92400e; border: none; margin-top: 0.3em; }
.daskmask-report .dm-warnings li { margin: 0.2em 0; white-space: pre-line; }
.daskmask-report .dm-main { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.daskmask-report .dm-figure { flex: 2 1 520px; min-width: 320px; }
.daskmask-report .dm-side { flex: 1 1 260px; }
.daskmask-report .dm-stack { position: relative; display: block; }
.daskmask-report .dm-stack img { display: block; width: 100%; height: auto; }
.daskmask-report .dm-stack .dm-after { position: absolute; top: 0; left: 0;
  opacity: 0; transition: opacity 0.4s ease-in-out; }
.daskmask-report .dm-stack:hover .dm-after { opacity: 1; }
.daskmask-report .dm-caption { font-size: 0.92em; color: #57606a; margin: 6px 0 0; }
.daskmask-report .dm-coverage { font-weight: 600; }
.daskmask-report table.dm-params { border-collapse: collapse; width: 100%; font-size: 0.92em; }
.daskmask-report table.dm-params th, .daskmask-report table.dm-params td {
  border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
.daskmask-report table.dm-params th { background: #f0f4f2; }
.daskmask-report table.dm-params td.dm-value { font-family: "DejaVu Sans Mono", monospace;
  word-break: break-word; }
.daskmask-report .dm-footer { margin-top: 18px; font-size: 0.85em; color: #6e7781;
  border-top: 1px solid #d0d7de; padding-top: 6px; }
"""

#: The standalone document; ``{title}`` and ``{body}`` are filled in
#: (the title HTML-escaped by the caller).
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
</head>
<body style="margin: 0; background: #ffffff;">
{body}
</body>
</html>
"""
