"""Finding and reading the confounds files that fMRIPrep writes beside a run.

fMRIPrep names a run's confounds after the run's BIDS entities, without the
ones that describe the image (space, resolution, hemisphere, ...):
``sub-01_task-rest_desc-confounds_timeseries.tsv`` (fMRIPrep >= 20.2) or
``..._desc-confounds_regressors.tsv`` (1.2 to 20.1), with a ``.json``
sidecar from 1.4 on. A confounds file belongs to an image when its entities
are a subset of the image's (``desc`` aside).

Every access goes through :mod:`daskmask._fs`, so local paths and URLs work
alike; the folder is listed once per run, which on an object store is one
request instead of one per candidate name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from daskmask._fs import Location, locate
from daskmask.exceptions import (
    ConfoundsError,
    ConfoundsNotFoundError,
    MissingConfoundsError,
    ObjectNotFoundError,
    UnsupportedFmriprepError,
)

ImageKind = Literal["regular", "aroma", "tedana"]

#: What each kind of input must be called (searched in the file name).
_IMAGE_NAMES: dict[str, tuple[re.Pattern[str], str]] = {
    "aroma": (
        re.compile(r"_desc-smoothAROMAnonaggr_bold\."),
        "the full ICA-AROMA strategy needs fMRIPrep's ICA-AROMA output "
        "(*_desc-smoothAROMAnonaggr_bold.nii.gz); pass that file, or use ica_aroma='basic' "
        "with the *_desc-preproc_bold image",
    ),
    "tedana": (
        re.compile(r"_desc-optcom_bold\.nii\.gz$"),
        "the tedana strategy needs tedana's optimally combined image "
        "(*_desc-optcom_bold.nii.gz); denoised outputs are already cleaned",
    ),
}
_VOLUME_NAME = re.compile(r"_desc-preproc_bold\.nii(\.gz)?$")
_CIFTI_NAME = re.compile(r"_bold\.dtseries\.nii$")
_GIFTI_NAME = re.compile(r"_hemi-[LR]_(.*_)?bold\.func\.gii$")

_CONFOUNDS_SUFFIXES = ("timeseries", "regressors")
_TEDANA_SUFFIXES = ("mixing", "metrics")


@dataclass(frozen=True)
class ConfoundsFiles:
    """The files that hold one run's confounds.

    Attributes
    ----------
    image : str
        The image the files were found for (its path or URL).
    table : Location
        The confounds TSV (tedana: its ICA mixing matrix).
    sidecar : Location or None
        The JSON sidecar when it exists (fMRIPrep >= 1.4).
    expected_sidecar : Location
        Where the sidecar should be (named in errors when it is missing).
    layout : str
        ``"timeseries"`` (fMRIPrep >= 20.2), ``"regressors"`` (older) or
        ``"tedana"``.
    metrics : Location or None
        tedana's component table (classification of each component).

    """

    image: str
    table: Location
    sidecar: Location | None
    expected_sidecar: Location
    layout: str
    metrics: Location | None = None


def parse_entities(name: str) -> tuple[dict[str, str], str]:
    """Split a BIDS file name into its entities (in order) and its suffix.

    ``sub-01_task-rest_desc-preproc_bold.nii.gz`` gives
    ``({"sub": "01", "task": "rest", "desc": "preproc"}, "bold")``.
    """
    parts = name.split("_")
    suffix = parts[-1].split(".", 1)[0]
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, _, value = part.partition("-")
        entities[key] = value
    return entities, suffix


def image_text(image: Any) -> str:
    """Return the path or URL of one image as text (a Location, path-like or str)."""
    if isinstance(image, Location):
        return image.url
    return os.fspath(image)


def check_image_name(images: list[Any], kind: ImageKind) -> None:
    """Refuse an input whose name is not the fMRIPrep output the strategy needs.

    Parameters
    ----------
    images : list
        One image, or the two hemispheres of a surface run.
    kind : {"regular", "aroma", "tedana"}
        Which fMRIPrep output the strategy reads.

    Raises
    ------
    ConfoundsError
        Naming the file and the expected name.

    """
    names = [_base(image) for image in images]
    if kind in _IMAGE_NAMES:
        pattern, fix = _IMAGE_NAMES[kind]
        for image, name in zip(images, names, strict=True):
            if not pattern.search(name):
                raise ConfoundsError(f"{image_text(image)}: wrong input for this strategy: {fix}.")
        return
    if len(images) == 2:
        for image, name in zip(images, names, strict=True):
            if not _GIFTI_NAME.search(name):
                raise ConfoundsError(
                    f"{image_text(image)}: a pair of images must be the two hemispheres of a "
                    "surface run (*_hemi-L_*bold.func.gii and *_hemi-R_*bold.func.gii)."
                )
        return
    (name,) = names
    if not (
        _VOLUME_NAME.search(name) or _CIFTI_NAME.search(name) or name.endswith("_bold.func.gii")
    ):
        raise ConfoundsError(
            f"{image_text(images[0])}: not an fMRIPrep functional output. Pass the "
            "preprocessed run (*_desc-preproc_bold.nii.gz or .nii, *_bold.dtseries.nii, or the "
            "*_hemi-L/R_*_bold.func.gii pair) from the fMRIPrep derivatives folder, where its "
            "confounds file lies beside it."
        )


def _base(image: Any) -> str:
    text = image_text(image).rstrip("/")
    return text.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]


def _listing(folder: Location) -> list[Location]:
    """Every file in ``folder`` (one listing request on an object store)."""
    if not folder.is_local:
        # A listing cached by an earlier call would hide files written since.
        folder.fs.invalidate_cache(folder.path)
    try:
        return folder.join("*").glob()
    except ObjectNotFoundError:
        return []


def _belongs(candidate: dict[str, str], image: dict[str, str]) -> bool:
    """Whether a confounds file's entities (``desc`` aside) all come from the image."""
    return all(image.get(key) == value for key, value in candidate.items() if key != "desc")


def find_confounds_files(image: Any, kind: ImageKind = "regular") -> ConfoundsFiles:
    """Find the confounds files of one run (the image's folder is listed once).

    Parameters
    ----------
    image : str, path-like or Location
        The run's image (for a surface pair, the left hemisphere).
    kind : {"regular", "aroma", "tedana"}
        ``"tedana"`` looks for tedana's ``*_mixing.tsv`` and ``*_metrics.tsv``
        instead of fMRIPrep's ``*_desc-confounds_*.tsv``.

    Returns
    -------
    ConfoundsFiles

    Raises
    ------
    ConfoundsNotFoundError
        No confounds file beside the image.
    ConfoundsError
        More than one file matches (for instance both layouts).

    """
    location = locate(image)
    entities, _ = parse_entities(location.name)
    folder = location.parent
    files = _listing(folder)
    if kind == "tedana":
        return _find_tedana(location, entities, files)
    found = []
    for candidate in files:
        name = candidate.name
        if not name.endswith(".tsv"):
            continue
        candidate_entities, suffix = parse_entities(name)
        if (
            suffix in _CONFOUNDS_SUFFIXES
            and candidate_entities.get("desc") == "confounds"
            and _belongs(candidate_entities, entities)
        ):
            found.append(candidate)
    if not found:
        stem = "_".join(
            f"{key}-{value}"
            for key, value in entities.items()
            if key not in {"space", "res", "den", "desc", "hemi", "cohort"}
        )
        expected = folder.join(f"{stem}_desc-confounds_timeseries.tsv")
        raise ConfoundsNotFoundError(
            f"{location.url}: no fMRIPrep confounds file beside the image (looked for "
            f"{expected.url}, or *_desc-confounds_regressors.tsv from fMRIPrep < 20.2, with any "
            "subset of the image's entities). Keep fMRIPrep's confounds TSV and JSON in the "
            "image's folder, or pass confounds yourself."
        )
    if len(found) > 1:
        listed = "\n\t".join(candidate.url for candidate in found)
        raise ConfoundsError(
            f"{location.url}: more than one confounds file matches the image:\n\t{listed}\n"
            "Keep only the one fMRIPrep wrote for this run."
        )
    (table,) = found
    layout = parse_entities(table.name)[1]
    sidecar = table.parent.join(table.name[: -len(".tsv")] + ".json")
    names = {candidate.name for candidate in files}
    return ConfoundsFiles(
        image=location.url,
        table=table,
        sidecar=sidecar if sidecar.name in names else None,
        expected_sidecar=sidecar,
        layout=layout,
    )


def _find_tedana(
    location: Location, entities: dict[str, str], files: list[Location]
) -> ConfoundsFiles:
    chosen: dict[str, list[Location]] = {suffix: [] for suffix in _TEDANA_SUFFIXES}
    for candidate in files:
        if not candidate.name.endswith(".tsv"):
            continue
        candidate_entities, suffix = parse_entities(candidate.name)
        if suffix in chosen and _belongs(candidate_entities, entities):
            chosen[suffix].append(candidate)
    for suffix, found in chosen.items():
        if len(found) != 1:
            listed = ", ".join(candidate.url for candidate in found) or "none"
            error = ConfoundsNotFoundError if not found else ConfoundsError
            raise error(
                f"{location.url}: expected one tedana *_{suffix}.tsv beside the image "
                f"(*_desc-ICA_mixing.tsv and *_desc-tedana_metrics.tsv), found {listed}. "
                "Keep exactly tedana's two tables in the image's folder."
            )
    table = chosen["mixing"][0]
    return ConfoundsFiles(
        image=location.url,
        table=table,
        sidecar=None,
        expected_sidecar=table,
        layout="tedana",
        metrics=chosen["metrics"][0],
    )


def _looks_camel_case(name: str) -> bool:
    # fMRIPrep 1.0 and 1.1 wrote CamelCase headers (GlobalSignal, FramewiseDisplacement).
    return "_" not in name and name != name.lower() and name != name.upper()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_tsv(location: Location) -> pd.DataFrame:
    """Read a tab-separated table (``n/a`` is NaN) through the file-system seam."""
    try:
        with location.open("rb") as handle:
            return pd.read_csv(handle, sep="\t", encoding="utf-8")
    except ObjectNotFoundError as error:
        raise ConfoundsNotFoundError(
            f"{location.url}: the confounds file disappeared while reading ({error})."
        ) from None
    except pd.errors.EmptyDataError:
        raise ConfoundsError(
            f"{location.url}: the confounds file is empty. Copy fMRIPrep's file again."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ConfoundsError(
            f"{location.url}: not a tab-separated table ({error}). Copy fMRIPrep's file again."
        ) from None


def read_confounds_table(location: Location) -> pd.DataFrame:
    """Read fMRIPrep's confounds TSV and refuse releases older than 1.2.

    Raises
    ------
    UnsupportedFmriprepError
        The header is CamelCase (fMRIPrep 1.0/1.1) or missing (older still).

    """
    table = read_tsv(location)
    columns = [str(column) for column in table.columns]
    if any(_is_number(column) for column in columns):
        raise UnsupportedFmriprepError(
            f"{location.url}: the confounds file has no header line; it comes from an fMRIPrep "
            "release older than 1.2, which daskmask cannot read. Rerun fMRIPrep >= 1.2 "
            "(>= 20.2 recommended), or pass the confounds you want as an array."
        )
    camel = [column for column in columns if _looks_camel_case(column)]
    if camel:
        raise UnsupportedFmriprepError(
            f"{location.url}: CamelCase column names ({', '.join(camel[:5])}) mean fMRIPrep 1.0 "
            "or 1.1, which daskmask cannot read. Rerun fMRIPrep >= 1.2 (>= 20.2 recommended), "
            "or pass the confounds you want as an array."
        )
    return table


def read_sidecar(location: Location) -> dict[str, Any]:
    """Read the confounds JSON sidecar."""
    try:
        with location.open("rb") as handle:
            content = json.loads(handle.read().decode("utf-8"))
    except ObjectNotFoundError:
        raise ConfoundsNotFoundError(
            f"{location.url}: the confounds sidecar disappeared while reading."
        ) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfoundsError(
            f"{location.url}: the confounds sidecar is not valid JSON ({error}). Copy "
            "fMRIPrep's file again."
        ) from None
    if not isinstance(content, Mapping):
        raise ConfoundsError(
            f"{location.url}: the confounds sidecar is not a JSON object. Copy fMRIPrep's file "
            "again."
        )
    return dict(content)


def read_tedana_tables(files: ConfoundsFiles) -> dict[str, pd.DataFrame]:
    """Read tedana's mixing matrix and component table, checking their columns."""
    assert files.metrics is not None
    mixing = read_tsv(files.table)
    metrics = read_tsv(files.metrics)
    if not any(str(column).startswith("ICA_") for column in mixing.columns):
        raise MissingConfoundsError(
            f"{files.table.url}: no ICA_XX columns; this is not tedana's mixing matrix "
            "(*_desc-ICA_mixing.tsv). Keep tedana's own file beside the image."
        )
    missing = [name for name in ("Component", "classification") if name not in metrics.columns]
    if missing:
        raise MissingConfoundsError(
            f"{files.metrics.url}: missing columns {missing}; this is not tedana's component "
            "table (*_desc-tedana_metrics.tsv). Keep tedana's own file beside the image."
        )
    return {"mixing": mixing, "metrics": metrics}
