"""``daskmask run IMAGE_OR_URL... --output-dir DIR``: mask the runs given, one store each.

Each image is one run (a glob, local or in an object store, gives one run per
match). Stores are named after the image (``sub-01_bold.nii.gz`` ->
``sub-01_bold.zarr``), under DIR in the images' folder structure below their
common folder. ``--confounds`` gives one table per image, in the same order.
A JSON sidecar beside an image (same name, ``.json``) gives the default
``--t-r`` (its ``RepetitionTime``), else the header does.
"""

from __future__ import annotations

import argparse
import json
import posixpath
from collections.abc import Sequence

from daskmask._fs import has_glob, locate, split_protocol
from daskmask.batch._runner import RunPlan
from daskmask.cli._batch import add_batch_options, run_batch
from daskmask.cli._options import UsageError, add_masker_options, masker_parameters

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand."""
    parser = commands.add_parser(
        "run",
        help="mask 4D runs (files or URLs), one results store each",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_URL", help="4D NIfTI runs")
    parser.add_argument(
        "--output-dir", required=True, metavar="DIR", help="where the stores go (path or URL)"
    )
    parser.add_argument(
        "--confounds",
        nargs="+",
        metavar="FILE",
        help="confounds tables (TSV, CSV), one per image in the same order",
    )
    add_masker_options(parser)
    add_batch_options(parser)
    return parser


def _stem(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0]


def _expand(images: Sequence[str]) -> list[str]:
    """Every image given, globs expanded (one run per match)."""
    runs: list[str] = []
    for image in images:
        if has_glob(image):
            matches = [match.url for match in locate(image).glob()]
            if not matches:
                raise UsageError("IMAGE_OR_URL", f"{image} matches no file")
            runs.extend(matches)
        else:
            runs.append(locate(image).url)
    return runs


def _relative_outputs(images: Sequence[str]) -> list[str]:
    """Store names mirroring the images' folders below their common folder."""
    folders = [posixpath.dirname(split_protocol(locate(i).url)[1]) for i in images]
    try:
        common = posixpath.commonpath(folders) if folders else ""
    except ValueError:  # absolute and relative mixed: names only
        common = None
    outputs = []
    for image, folder in zip(images, folders, strict=True):
        relative = posixpath.relpath(folder, common) if common is not None else "."
        name = f"{_stem(image)}.zarr"
        outputs.append(name if relative == "." else posixpath.join(relative, name))
    if len(set(outputs)) != len(outputs):
        raise UsageError("IMAGE_OR_URL", "two images would share a store name; give each run once")
    return outputs


def _sidecar_t_r(image: str) -> float | None:
    """RepetitionTime of the JSON sidecar beside ``image``, if there is one."""
    location = locate(image)
    sidecar = location.parent.join(_stem(image) + ".json")
    try:
        if not sidecar.exists():
            return None
        with sidecar.open("rb") as handle:
            value = json.loads(handle.read()).get("RepetitionTime")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def command(args: argparse.Namespace) -> int:
    """Run ``daskmask run``; return the exit status."""
    params = masker_parameters(args)
    images = _expand(args.images)
    confounds = [locate(c).url for c in args.confounds] if args.confounds else [None] * len(images)
    if len(confounds) != len(images):
        raise UsageError(
            "--confounds",
            f"got {len(confounds)} tables for {len(images)} images; give one per image, "
            "in the same order",
        )
    output_dir = locate(args.output_dir)
    plans = [
        RunPlan(
            input=image,
            output=output_dir.join(*relative.split("/")).url,
            params=params,
            label=relative,
            confounds=table,
            mask=str(params.get("mask_img") or params["mask_strategy"]),
            sidecar_t_r=_sidecar_t_r(image),
        )
        for image, table, relative in zip(
            images, confounds, _relative_outputs(images), strict=True
        )
    ]
    return run_batch(plans, output_dir.url, args, command="run")
