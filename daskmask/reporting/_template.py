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
  color: #1f2328; background: #ffffff; max-width: 1500px; margin: 0 auto;
  padding: 12px 2%; line-height: 1.45; font-size: 15px; box-sizing: border-box;
}
.daskmask-report h1 { font-size: 1.7em; margin: 0.2em 0 0.5em; color: #0b3d2e; }
.daskmask-report h2 { font-size: 1.15em; margin: 1.1em 0 0.4em; color: #0b3d2e;
  border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
.daskmask-report .dm-warnings { background: #fff4e5; border-left: 5px solid #d97706;
  padding: 6px 14px; margin: 0 0 14px; }
.daskmask-report .dm-warnings h2 { color: #92400e; border: none; margin-top: 0.3em; }
.daskmask-report .dm-warnings li { margin: 0.2em 0; white-space: pre-line; }
.daskmask-report .dm-figure { margin: 0; width: 100%; }
.daskmask-report .dm-stack { position: relative; display: block; }
.daskmask-report .dm-stack img { display: block; width: 100%; height: auto; }
.daskmask-report .dm-stack .dm-after { position: absolute; top: 0; left: 0;
  opacity: 0; transition: opacity 0.4s ease-in-out; }
.daskmask-report .dm-stack:hover .dm-after { opacity: 1; }
.daskmask-report .dm-caption { font-size: 0.92em; color: #57606a; margin: 6px 0 0; }
.daskmask-report .dm-about p { max-width: 60em; }
.daskmask-report .dm-coverage { font-weight: 600; font-size: 1.05em; }
.daskmask-report details { margin: 4px 0; }
.daskmask-report details > summary { cursor: pointer; padding: 4px 8px; font-weight: 600; }
.daskmask-report details details > summary { font-weight: normal;
  font-family: "DejaVu Sans Mono", monospace; }
.daskmask-report .dm-estimator { border: 1px solid #9fb3c8; border-radius: 4px;
  background: #f6f9fc; padding: 2px 8px 6px; max-width: 60em; }
.daskmask-report .dm-estimator > summary { background: #dbe9f7; margin: 0 -8px 4px;
  font-family: "DejaVu Sans Mono", monospace; }
.daskmask-report details details { background: #ffffff; border: 1px solid #d0d7de;
  border-radius: 3px; padding: 0 6px; }
.daskmask-report table.dm-params { border-collapse: collapse; width: 100%; font-size: 0.92em;
  margin: 4px 0 8px; }
.daskmask-report table.dm-params th, .daskmask-report table.dm-params td {
  border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
.daskmask-report table.dm-params th { background: #f0f4f2; }
.daskmask-report table.dm-params td.dm-value { font-family: "DejaVu Sans Mono", monospace;
  word-break: break-word; white-space: pre-wrap; }
.daskmask-report ol.dm-features { columns: 14em; font-family: "DejaVu Sans Mono", monospace;
  font-size: 0.85em; margin: 4px 0 8px; }
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
