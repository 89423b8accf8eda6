"""``masker_report``: the HTML report of a NiftiMasker.

It reads at most one volume of the fitted run (the middle one) plus the
mask, draws them with :mod:`daskmask.plotting` as SVG and embeds everything
in one self-contained page.
"""

from __future__ import annotations

import base64
import html
import warnings
from typing import Any

import nibabel as nib
import numpy as np
import xarray as xr

from daskmask._version import __version__
from daskmask.plotting._display import OrthoDisplay
from daskmask.plotting._volumes import Grid3D, find_cut_coords, to_grid
from daskmask.reporting._html import HTMLReport
from daskmask.reporting._template import CSS, SCOPE

__all__ = ["masker_report"]

NOT_FITTED = (
    "This estimator has not been fit yet. Make sure to run `fit` before inspecting reports."
)
REPORTS_OFF = "Report generation not enabled! No visual outputs created."
REPORTS_OFF_AT_FIT = (
    "Report generation was disabled when fit was run. No reporting data is available. "
    "Make sure to set self.reports=True before fit."
)
MASK_ONLY = "No image provided to fit in {name}. Setting image to mask for reporting."
LIST_OF_4D = (
    "A list of 4D subject images were provided to fit. Only first subject is shown in the report."
)

DESCRIPTION = (
    "The picture shows the image the mask was computed from, cut along the three axes, with "
    "the border of the mask drawn in green. A good mask follows the outline of the brain: "
    "it should neither cut into the brain nor take in the skull or the background."
)
HOVER_CAPTION = (
    "Shown: the input image with the mask before resampling. Hover over the picture to see "
    "the image and the mask resampled to the target grid (nearest neighbour)."
)
FOOTER_NOTE = (
    "Built from what was known when the masker was created and fitted; transform may "
    "still resample the images it is given."
)


def _reference_volume(images: xr.DataArray) -> tuple[nib.Nifti1Image, str | None]:
    """Read the volume a report shows (only it); also return an optional warning."""
    if images.ndim == 3:
        volume = images
        warning = None
    else:
        source = images.attrs.get("source")
        n_time = images.sizes["time"]
        warning = None
        if isinstance(source, list) and len(source) > 1:
            index = 0  # a list: its first image (first volume of the first run)
            if len(source) != n_time:
                warning = LIST_OF_4D
        else:
            index = n_time // 2
        volume = images.isel(time=index)
    data = np.asarray(volume.compute().values)
    return nib.Nifti1Image(data, np.asarray(images.attrs["affine"], dtype=float)), warning


def _svg_uri(display: OrthoDisplay) -> str:
    svg = display.to_bytes("svg", facecolor="white")
    display.close()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def _figure(background: Any, mask: Any, cuts: tuple[float, float, float]) -> str:
    grid = to_grid(background, "continuous")
    display = OrthoDisplay.create(grid, cut_coords=cuts, black_bg=False, colorbar=True)
    display.add_image(grid, cmap="gray")
    display.add_contours(mask, levels=(0.5,), colors="g", linewidths=2.5)
    return _svg_uri(display)


def _summarise(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, nib.spatialimages.SpatialImage):
        path = value.get_filename()
        where = f", file={path!r}" if path else ""
        return f"{type(value).__name__}(shape={tuple(value.shape)}{where})"
    if isinstance(value, xr.DataArray):
        return f"DataArray(shape={tuple(value.shape)}, source={value.attrs.get('source')!r})"
    if isinstance(value, np.ndarray):
        if value.size <= 16:
            return np.array2string(value, precision=3, separator=", ", suppress_small=True)
        return f"array(shape={value.shape}, dtype={value.dtype})"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__}(shape={tuple(value.shape)}, dtype={value.dtype})"
    text = repr(value)
    return text if len(text) <= 300 else text[:297] + "..."


def _parameters_table(masker: Any) -> str:
    rows = []
    for name, value in sorted(masker.get_params(deep=False).items()):
        rows.append(
            f'<tr><td>{html.escape(name)}</td><td class="dm-value">'
            f"{html.escape(_summarise(value))}</td></tr>"
        )
    return (
        '<table class="dm-params"><thead><tr><th>Parameter</th><th>Value</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _figures(masker: Any, data: dict[str, Any], name: str) -> tuple[str, str | None, list[str]]:
    """Draw the main figure, the resampled one (or None); return them and the warnings."""
    messages = []
    mask = data["mask"]
    images = data.get("images")
    if images is None:
        messages.append(MASK_ONLY.format(name=name))
        background = mask
    else:
        if isinstance(images, list):  # a MultiNiftiMasker's runs: the first one is shown
            if len(images) > 1 and any(run.ndim == 4 for run in images):
                messages.append(LIST_OF_4D)
            images = images[0]
        background, warning = _reference_volume(images)
        if warning:
            messages.append(warning)
    mask_grid = to_grid(mask, "nearest")
    mask_grid = Grid3D((mask_grid.data != 0).astype(float), mask_grid.origin, mask_grid.spacing)
    cuts = find_cut_coords(mask_grid)
    main = _figure(background, mask_grid, cuts)
    resampled = None
    if masker.target_affine is not None or masker.target_shape is not None:
        from daskmask.image import resample_to_img

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            moved = resample_to_img(background, data["resampled_mask"], interpolation="nearest")
        resampled = _figure(moved, data["resampled_mask"], cuts)
    return main, resampled, messages


def masker_report(masker: Any, title: str | None = None) -> HTMLReport:
    """Build the HTML report of a (fitted) NiftiMasker.

    The report shows the middle volume of the fitted run (the first image of
    a list; the mask itself when the masker was fitted with ``mask_img``
    only) in three orthogonal cuts with the mask's outline in green, the
    number of voxels in the mask, a description, every parameter and the
    warnings; when the mask was resampled to ``target_affine`` /
    ``target_shape``, hovering the picture shows the resampled image and
    mask. Only one volume of the run and the mask are read. Each warning is
    also emitted as a :class:`UserWarning`.

    Parameters
    ----------
    masker : daskmask.NiftiMasker
        The masker.
    title : str or None, default=None
        Report title (default: the class name).

    Returns
    -------
    HTMLReport
        Shows in Jupyter; ``save_as_html``, ``open_in_browser``, ``get_iframe``.

    """
    name = type(masker).__name__
    title = name if title is None else str(title)
    messages: list[str] = []
    main = resampled = None
    coverage_text = None
    fitted = hasattr(masker, "mask_img_")
    if not fitted:
        messages.append(NOT_FITTED)
    elif not masker.reports:
        messages.append(REPORTS_OFF)
    elif getattr(masker, "_reporting_data", None) is None:
        messages.append(REPORTS_OFF_AT_FIT)
    else:
        main, resampled, figure_messages = _figures(masker, masker._reporting_data, name)
        messages.extend(figure_messages)
    if fitted and masker.n_elements_ > 0:
        coverage = masker.n_elements_ / float(np.prod(masker.mask_img_.shape[:3])) * 100
        coverage_text = (
            f"The mask includes {masker.n_elements_} voxels ({coverage:.1f} %) of the image."
        )
    messages = sorted(set(messages))
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=2)
    body = _body(title, main, resampled, coverage_text, messages, _parameters_table(masker))
    return HTMLReport(body, title=f"daskmask - {title} report")


def _body(
    title: str,
    main: str | None,
    resampled: str | None,
    coverage_text: str | None,
    messages: list[str],
    parameters: str,
) -> str:
    parts = [f'<div class="{SCOPE}">', f"<style>{CSS}</style>", f"<h1>{html.escape(title)}</h1>"]
    if messages:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in messages)
        parts.append(
            '<section class="dm-warnings" id="warnings">'
            f"<h2>Warnings</h2><ul>{items}</ul></section>"
        )
    parts.append('<div class="dm-main">')
    if main is not None:
        after = ""
        caption = ""
        if resampled is not None:
            after = (
                f'<img class="dm-after" src="{resampled}" '
                'alt="Image and mask resampled to the target grid">'
            )
            caption = f'<p class="dm-caption">{html.escape(HOVER_CAPTION)}</p>'
        parts.append(
            '<figure class="dm-figure" style="margin: 0;"><div class="dm-stack">'
            f'<img class="dm-before" src="{main}" alt="Input image with the outline of the mask">'
            f"{after}</div>{caption}</figure>"
        )
    parts.append('<div class="dm-side"><h2>About this report</h2>')
    parts.append(f"<p>{html.escape(DESCRIPTION)}</p>")
    if coverage_text is not None:
        parts.append(f'<p class="dm-coverage">{html.escape(coverage_text)}</p>')
    parts.append("</div></div>")
    parts.append(f'<section id="parameters"><h2>Parameters</h2>{parameters}</section>')
    note = f"<p>{html.escape(FOOTER_NOTE)}</p>" if main is not None else ""
    parts.append(
        f'<footer class="dm-footer">{note}<p>Made with daskmask {html.escape(__version__)}.</p>'
        "</footer>"
    )
    parts.append("</div>")
    return "\n".join(parts)
