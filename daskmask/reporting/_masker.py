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
from daskmask._warnings import warn_user
from daskmask.plotting._display import OrthoDisplay
from daskmask.plotting._volumes import Grid3D, find_xyz_cut_coords, to_grid
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

#: What the picture shows, completed with the shown volume (see ``_shown``).
DESCRIPTION = (
    "The picture shows {shown}, cut along the three axes through the centre of the mask, "
    "with the border of the mask drawn in green. A good mask follows the outline of the "
    "brain: it should neither cut into the brain nor take in the skull or the background."
)
#: How many feature names the report lists (nilearn lists 100 too).
N_FEATURES_LISTED = 100
HOVER_CAPTION = (
    "Shown: the input image with the mask before resampling. Hover over the picture to see "
    "the image and the mask resampled to the target grid (nearest neighbour)."
)
FOOTER_NOTE = (
    "Built from what was known when the masker was created and fitted; transform may "
    "still resample the images it is given."
)


def _reference_volume(
    images: xr.DataArray, n_runs: int = 1
) -> tuple[nib.Nifti1Image, str, str | None]:
    """Read the volume a report shows (only it); say what it is; maybe warn."""
    warning = None
    if images.ndim == 3:
        volume = images
        shown = "the image the masker was fitted on"
    else:
        source = images.attrs.get("source")
        n_time = images.sizes["time"]
        if isinstance(source, list) and len(source) > 1:
            index = 0  # a list: its first image (first volume of the first run)
            shown = f"the first of the {len(source)} images the masker was fitted on"
            if len(source) != n_time:
                warning = LIST_OF_4D
                shown = "the first volume of the first of the runs the masker was fitted on"
        else:
            index = n_time // 2
            shown = (
                f"volume {index} (the middle one of {n_time}, numbered from 0) of the run "
                "the masker was fitted on"
            )
        if n_runs > 1:
            shown = shown.replace(
                "of the run the masker", f"of the first of the {n_runs} runs the masker"
            )
        volume = images.isel(time=index)
    data = np.asarray(volume.compute().values)
    affine = np.asarray(images.attrs["affine"], dtype=float)
    return nib.Nifti1Image(data, affine), shown, warning


def _svg_uri(display: OrthoDisplay) -> str:
    svg = display.to_bytes("svg", facecolor="white")
    display.close()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def _display(
    background: Any, mask: Any, cuts: tuple[float, float, float], cmap: Any
) -> OrthoDisplay:
    """Draw the image and the mask's outline: views framed on the data and the whole mask."""
    grid = to_grid(background, "continuous")
    mask_grid = mask if isinstance(mask, Grid3D) else to_grid(mask, "nearest")
    display = OrthoDisplay.create(
        grid, cut_coords=cuts, black_bg=False, colorbar=True, frame=(mask_grid,)
    )
    display.add_image(grid, cmap=cmap)
    display.add_contours(mask_grid, levels=(0.5,), colors="g", linewidths=2.5)
    return display


def _figure(background: Any, mask: Any, cuts: tuple[float, float, float], cmap: Any) -> str:
    return _svg_uri(_display(background, mask, cuts, cmap))


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


def _table(rows: list[tuple[str, str]], headers: tuple[str, str]) -> str:
    body = "".join(
        f'<tr><td>{html.escape(name)}</td><td class="dm-value">{html.escape(value)}</td></tr>'
        for name, value in rows
    )
    return (
        f'<table class="dm-params"><thead><tr><th>{headers[0]}</th><th>{headers[1]}</th>'
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


def _parameters_table(masker: Any) -> str:
    rows = [
        (name, _summarise(value)) for name, value in sorted(masker.get_params(deep=False).items())
    ]
    return _table(rows, ("Parameter", "Value"))


def _fitted_attributes(masker: Any) -> list[tuple[str, str]]:
    """Public fitted attributes (names ending in ``_``), as the estimator has them."""
    return [
        (name, _summarise(value))
        for name, value in sorted(vars(masker).items())
        if name.endswith("_") and not name.startswith("_")
    ]


def _features(masker: Any) -> str:
    """List the first voxels of the mask, in the order of transform's columns."""
    n = masker.n_elements_
    mask = np.asanyarray(masker.mask_img_.dataobj) != 0
    # C order of the mask's voxels: the order of transform's voxel axis.
    voxels = np.argwhere(mask)[:N_FEATURES_LISTED]
    items = "".join(f"<li>voxel ({i}, {j}, {k})</li>" for i, j, k in voxels.tolist())
    listed = min(n, N_FEATURES_LISTED)
    return (
        f"<p>{n:,} features: one per voxel of the mask, in the order of the columns of "
        f"<code>transform</code>'s output (its <code>voxel</code> axis, with the voxels' "
        f"<code>i, j, k</code> indices as coordinates). The first {listed}:</p>"
        f'<ol class="dm-features" start="0">{items}</ol>'
    )


def _summary(masker: Any, name: str) -> str:
    """Build the estimator summary: collapsible parameters, fitted attributes, features."""
    parts = [
        '<details class="dm-estimator" open>',
        f"<summary>{html.escape(name)}</summary>",
        f"<details><summary>Parameters</summary>{_parameters_table(masker)}</details>",
    ]
    fitted = _fitted_attributes(masker)
    if fitted:
        parts.append(
            "<details><summary>Fitted attributes</summary>"
            f"{_table(fitted, ('Attribute', 'Value'))}</details>"
        )
    if hasattr(masker, "n_elements_") and hasattr(masker, "mask_img_"):
        parts.append(
            f"<details><summary>{masker.n_elements_:,} features</summary>"
            f"{_features(masker)}</details>"
        )
    parts.append("</details>")
    return "".join(parts)


def _figures(
    masker: Any, data: dict[str, Any], name: str
) -> tuple[str, str | None, str, list[str]]:
    """Draw the main figure and the resampled one (or None); say what they show; warn."""
    messages = []
    mask = data["mask"]
    images = data.get("images")
    if images is None:
        messages.append(MASK_ONLY.format(name=name))
        background = mask
        shown = "the mask itself (the masker was fitted with a mask_img and no image)"
    else:
        n_runs = 1
        if isinstance(images, list):  # a MultiNiftiMasker's runs: the first one is shown
            n_runs = len(images)
            if n_runs > 1 and any(run.ndim == 4 for run in images):
                messages.append(LIST_OF_4D)
            images = images[0]
        background, shown, warning = _reference_volume(images, n_runs)
        if warning:
            messages.append(warning)
    mask_grid = to_grid(mask, "nearest")
    mask_grid = Grid3D((mask_grid.data != 0).astype(float), mask_grid.origin, mask_grid.spacing)
    # Cut where nilearn cuts: found on the mask's own voxels.
    binary = (np.asanyarray(mask.dataobj) != 0).astype(np.uint8)
    cuts = find_xyz_cut_coords(nib.Nifti1Image(binary, mask.affine))
    cmap = getattr(masker, "cmap", "gray")
    main = _figure(background, mask_grid, cuts, cmap)
    resampled = None
    if masker.target_affine is not None or masker.target_shape is not None:
        from daskmask.image import resample_to_img

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            moved = resample_to_img(background, data["resampled_mask"], interpolation="nearest")
        resampled = _figure(moved, data["resampled_mask"], cuts, cmap)
    return main, resampled, shown, messages


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
    shown = None
    coverage_text = None
    fitted = hasattr(masker, "mask_img_")
    if not fitted:
        messages.append(NOT_FITTED)
    elif not masker.reports:
        messages.append(REPORTS_OFF)
    elif getattr(masker, "_reporting_data", None) is None:
        messages.append(REPORTS_OFF_AT_FIT)
    else:
        main, resampled, shown, figure_messages = _figures(masker, masker._reporting_data, name)
        messages.extend(figure_messages)
    if fitted and masker.n_elements_ > 0:
        coverage = masker.n_elements_ / float(np.prod(masker.mask_img_.shape[:3])) * 100
        coverage_text = (
            f"The mask includes {masker.n_elements_} voxels ({coverage:.1f} %) of the image."
        )
    messages = sorted(set(messages))
    for message in messages:
        warn_user(message, UserWarning)
    description = DESCRIPTION.format(shown=shown) if shown is not None else None
    body = _body(
        title, main, resampled, description, coverage_text, messages, _summary(masker, name)
    )
    return HTMLReport(body, title=f"daskmask - {title} report")


def _body(
    title: str,
    main: str | None,
    resampled: str | None,
    description: str | None,
    coverage_text: str | None,
    messages: list[str],
    summary: str,
) -> str:
    parts = [f'<div class="{SCOPE}">', f"<style>{CSS}</style>", f"<h1>{html.escape(title)}</h1>"]
    if messages:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in messages)
        parts.append(
            '<section class="dm-warnings" id="warnings">'
            f"<h2>Warnings</h2><ul>{items}</ul></section>"
        )
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
            '<figure class="dm-figure"><div class="dm-stack">'
            f'<img class="dm-before" src="{main}" alt="Input image with the outline of the mask">'
            f"{after}</div>{caption}</figure>"
        )
    parts.append('<section class="dm-about"><h2>About this report</h2>')
    if coverage_text is not None:
        parts.append(f'<p class="dm-coverage">{html.escape(coverage_text)}</p>')
    if description is not None:
        parts.append(f"<p>{html.escape(description)}</p>")
    parts.append("</section>")
    parts.append(f'<section id="parameters"><h2>Estimator</h2>{summary}</section>')
    note = f"<p>{html.escape(FOOTER_NOTE)}</p>" if main is not None else ""
    parts.append(
        f'<footer class="dm-footer">{note}<p>Made with daskmask {html.escape(__version__)}.</p>'
        "</footer>"
    )
    parts.append("</div>")
    return "\n".join(parts)
