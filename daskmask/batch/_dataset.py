"""The runs of a BIDS derivatives dataset (fMRIPrep output): what a batch masks.

A :class:`BidsRun` names one preprocessed run and the files fMRIPrep writes
beside it. Paths are local paths or fsspec URLs, as the input was given.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daskmask._fs import Location, locate, storage_errors
from daskmask._warnings import warn_user
from daskmask.exceptions import DatasetError, MissingExtraError

#: BIDS entities in the order BIDS writes them in a file name.
ENTITY_ORDER: tuple[str, ...] = (
    "sub",
    "ses",
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "echo",
    "space",
    "res",
    "den",
)


@dataclass(frozen=True)
class BidsRun:
    """One preprocessed BOLD run of a derivatives dataset and its companion files.

    Parameters
    ----------
    bold : str
        The ``*_desc-preproc_bold.nii[.gz]`` file: a local path or a URL.
    entities : mapping of str to str
        Its BIDS entities, short names (``sub``, ``ses``, ``task``, ``run``,
        ``space``, ...) to values, without the ``sub-`` style prefixes.
    relative_path : str
        The bold file's path relative to the dataset's root, with ``/``
        (``sub-01/func/sub-01_task-rest_..._bold.nii.gz``): results mirror it.
    confounds : str or None
        The confounds table (``desc-confounds_timeseries.tsv``, or
        ``desc-confounds_regressors.tsv`` of fMRIPrep before 20.2).
    confounds_sidecar : str or None
        The confounds table's JSON sidecar (CompCor metadata).
    mask : str or None
        The run's ``desc-brain_mask.nii[.gz]`` in the same space.
    sidecar : str or None
        The bold file's JSON sidecar.
    t_r : float or None
        ``RepetitionTime`` from the sidecar, in seconds.

    """

    bold: str
    entities: Mapping[str, str] = field(default_factory=dict)
    relative_path: str = ""
    confounds: str | None = None
    confounds_sidecar: str | None = None
    mask: str | None = None
    sidecar: str | None = None
    t_r: float | None = None

    @property
    def stem(self) -> str:
        """The run's entities as BIDS writes them (``sub-01_task-rest_run-1_space-X``)."""
        known = [key for key in ENTITY_ORDER if key in self.entities]
        others = sorted(key for key in self.entities if key not in ENTITY_ORDER)
        return "_".join(f"{key}-{self.entities[key]}" for key in (*known, *others))

    def output_path(self, suffix: str = "desc-daskmask_timeseries.zarr") -> str:
        """Where this run's results go, relative to the output folder.

        The input's folder structure is kept (``sub-01/ses-1/func/``) and the
        name is the run's entities followed by ``suffix``.
        """
        folder = posixpath.dirname(self.relative_path)
        return posixpath.join(folder, f"{self.stem}_{suffix}")


# -- discovery ----------------------------------------------------------------------------

#: Entities that name what a file is rather than which run it belongs to.
_NON_RUN_KEYS = frozenset({"desc", "suffix", "ext", "datatype"})
#: Entities a confounds table does not carry: fMRIPrep writes one per acquisition.
_SPACE_KEYS = frozenset({"space", "res", "den", "cohort"})
#: Index entities (compared as numbers: ``run-01`` is run 1).
_INDEX_KEYS = frozenset({"run", "echo", "chunk"})
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")
#: Confounds table names: fMRIPrep 20.2 and later, then 1.2 to 20.1.
_CONFOUNDS_SUFFIXES = ("timeseries", "regressors")

#: Filters of :func:`find_runs`: argument name -> (entity, what it is called in messages).
_FILTERS: tuple[tuple[str, str, str], ...] = (
    ("participant_label", "sub", "participants"),
    ("session", "ses", "sessions"),
    ("task", "task", "tasks"),
    ("run", "run", "runs"),
    ("space", "space", "spaces"),
)

_INSTALL_HINT = 'pip install "daskmask[bids]"'


class BidsExtraMissingError(DatasetError, MissingExtraError):
    """The BIDS indexing library (daskmask's ``bids`` extra) is not installed."""


def _parse_entities() -> Callable[[str], dict[str, str]]:
    """bids2table's file-name parser, imported when a dataset is first searched."""
    try:
        from bids2table import parse_bids_entities
    except ImportError as error:
        raise BidsExtraMissingError(
            "Finding the runs of a BIDS dataset needs bids2table, which is not installed "
            f"({error}). Install daskmask's bids extra: {_INSTALL_HINT}."
        ) from error
    return parse_bids_entities


def _sort_key(entities: Mapping[str, str]) -> tuple[Any, ...]:
    """Order runs by entity, in BIDS order, numbers as numbers (run-2 before run-10)."""
    key: list[Any] = []
    for name in (*ENTITY_ORDER, *sorted(set(entities) - set(ENTITY_ORDER))):
        value = entities.get(name)
        if value is None:
            key.append((0, 0, ""))
        elif name in _INDEX_KEYS and value.isdigit():
            key.append((1, int(value), value))
        else:
            key.append((2, 0, value))
    return tuple(key)


def _as_labels(value: Any, prefix: str) -> list[str] | None:
    """Return a filter as a list of labels; ``sub-01`` and ``01`` are the same participant."""
    if value is None:
        return None
    values = [value] if isinstance(value, (str, int)) else list(value)
    labels = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(f"A BIDS label must be a str or an int, got {item!r}.")
        text = str(item)
        if text.startswith(f"{prefix}-"):
            text = text[len(prefix) + 1 :]
        labels.append(text)
    return labels


def _matches(entity: str, value: str | None, wanted: list[str]) -> bool:
    if value is None:
        return False
    if entity in _INDEX_KEYS and value.isdigit():
        return any(label.isdigit() and int(label) == int(value) for label in wanted)
    return value in wanted


def _describe(location: Location) -> dict[str, Any]:
    """Read ``dataset_description.json`` and check that it describes derivatives."""
    description = location.join("dataset_description.json")
    if not description.exists():
        nested = [
            entry.url
            for entry in (location.join("derivatives", "fmriprep"), location.join("fmriprep"))
            if entry.join("dataset_description.json").exists()
        ]
        hint = (
            f" fMRIPrep's output seems to be in {nested[0]}: pass that instead."
            if nested
            else " Pass the folder fMRIPrep wrote (its output directory, which holds "
            "dataset_description.json and the sub-* folders)."
        )
        raise DatasetError(
            f"{location.url} is not a BIDS dataset: it has no dataset_description.json." + hint
        )
    try:
        with description.open("rb") as stream:
            content = json.loads(stream.read())
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetError(
            f"{description.url} is not valid JSON ({error}); fix or rewrite the file."
        ) from None
    if not isinstance(content, dict):
        raise DatasetError(f"{description.url} must hold a JSON object, not {content!r}.")
    kind = content.get("DatasetType")
    # fMRIPrep before BIDS 1.4 wrote no DatasetType, but a PipelineDescription.
    derivative = kind == "derivative" or (
        kind is None and ("GeneratedBy" in content or "PipelineDescription" in content)
    )
    if not derivative:
        what = (
            f"a raw BIDS dataset (DatasetType {kind!r})"
            if kind is not None
            else "a raw BIDS dataset (no DatasetType, no GeneratedBy)"
        )
        nested = location.join("derivatives")
        hint = (
            f" Its derivatives are in {nested.url}: pass the fMRIPrep folder there."
            if nested.isdir()
            else " Run fMRIPrep on it and pass fMRIPrep's output folder."
        )
        raise DatasetError(
            f"{location.url} is {what}, not a derivatives dataset; daskmask masks "
            "fMRIPrep's preprocessed runs (*_desc-preproc_bold.nii.gz)." + hint
        )
    return content


def _list_files(location: Location, participants: list[str] | None) -> tuple[list[str], list[str]]:
    """Return the subject folders' labels and the paths of the files inside them.

    Paths are relative to the root, with ``/``. One recursive listing per subject folder
    locally; on an object store one listing of the whole prefix (a thousand keys per
    request) unless a few participants are asked for.
    """
    fs = location.fs
    base = location.path.rstrip("/")
    with storage_errors(location.url):
        subjects = sorted(
            name
            for name in (
                entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(base, detail=False)
            )
            if name.startswith("sub-") and "." not in name
        )
        labels = [name[len("sub-") :] for name in subjects]
        if participants is not None:
            missing = [label for label in participants if label not in labels]
            if missing:
                raise DatasetError(
                    f"{location.url}: participant_label={_show(missing)} has no sub-* "
                    f"folder. The participants present are: {', '.join(labels) or 'none'}."
                )
            subjects = [f"sub-{label}" for label in participants]
        if location.is_local or (participants is not None and len(subjects) <= 8):
            found = [path for name in subjects for path in fs.find(f"{base}/{name}")]
        else:
            found = fs.find(base)
    files = []
    for path in found:
        relative = path[len(base) :].lstrip("/") if path.startswith(base) else path
        if relative.startswith("sub-"):
            files.append(relative)
    return labels, files


def _read_t_r(location: Location, sidecars: list[str]) -> dict[str, float | None]:
    """``RepetitionTime`` of each sidecar (read together: one round trip each, concurrently)."""
    if not sidecars:
        return {}
    base = location.path.rstrip("/")
    with storage_errors(location.url):
        contents = location.fs.cat([f"{base}/{path}" for path in sidecars], on_error="return")
    result: dict[str, float | None] = {}
    for relative in sidecars:
        content = contents.get(f"{base}/{relative}")
        t_r = None
        try:
            if isinstance(content, BaseException):
                raise content
            value = json.loads(content).get("RepetitionTime")
            t_r = float(value) if value is not None else None
        except (ValueError, TypeError, AttributeError, OSError) as error:
            warn_user(
                f"{location.join(*relative.split('/')).url}: cannot read RepetitionTime "
                f"({error}); the run's t_r is left unset (the image header's TR applies).",
            )
        result[relative] = t_r
    return result


def find_runs(
    root: str | os.PathLike[str],
    *,
    participant_label: str | Iterable[str] | None = None,
    session: str | Iterable[str] | None = None,
    task: str | Iterable[str] | None = None,
    run: int | str | Iterable[int | str] | None = None,
    space: str | Iterable[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[BidsRun]:
    """Find the preprocessed BOLD runs of an fMRIPrep derivatives dataset.

    Every ``sub-*/[ses-*/]func/*_desc-preproc_bold.nii[.gz]`` is a run. Its companions
    are looked up by entities: the ``desc-brain_mask`` image with the same entities
    (space included), the ``.json`` sidecar of the BOLD file (``RepetitionTime``), and
    the ``desc-confounds_timeseries.tsv`` (or the older ``desc-confounds_regressors``)
    table and its JSON, which carry no space. File names are parsed by ``bids2table``
    (daskmask's ``bids`` extra); files are listed through fsspec, so a local folder and
    an object store (``s3://``...) are searched the same way.

    Parameters
    ----------
    root : str or os.PathLike
        The derivatives folder or URL (the one holding ``dataset_description.json``).
    participant_label, session, task, space : str or list of str, optional
        Keep only these labels (``"01"`` or ``"sub-01"``; ``"1"`` or ``"ses-1"``). Each
        label asked for must exist in the dataset.
    run : int, str or list, optional
        Keep only these runs, compared as numbers (``1`` matches ``run-1`` and ``run-01``).
    storage_options : mapping, optional
        File-system options for a URL (credentials, ``endpoint_url``).

    Returns
    -------
    list of BidsRun
        Ordered by subject, session, task, run and space. A run whose mask, sidecar or
        confounds are missing is returned with ``None`` there: the caller decides.

    Raises
    ------
    DatasetError
        ``root`` is not a folder, has no ``dataset_description.json``, is not a
        derivatives dataset, holds no preprocessed run, a label asked for does not exist,
        or the filters together select no run; the message lists the labels present.
    BidsExtraMissingError
        bids2table is not installed (a :class:`DatasetError` and an ``ImportError``).
    daskmask.exceptions.StorageError
        The folder or bucket cannot be reached or read.

    Warns
    -----
    UserWarning
        A sidecar whose ``RepetitionTime`` cannot be read (the run's ``t_r`` is ``None``).

    """
    parse = _parse_entities()
    filters = {
        name: _as_labels(value, entity)
        for (name, entity, _), value in zip(
            _FILTERS, (participant_label, session, task, run, space), strict=True
        )
    }
    location = locate(root, storage_options)
    if not location.exists():
        raise DatasetError(
            f"{location.url} does not exist. Pass the folder or URL of an fMRIPrep "
            "derivatives dataset (the one holding dataset_description.json)."
        )
    if not location.isdir():
        raise DatasetError(
            f"{location.url} is a file, not a folder. Pass the derivatives folder (the one "
            "holding dataset_description.json and the sub-* folders), not one of its files."
        )
    _describe(location)

    bold: dict[str, dict[str, str]] = {}
    masks: dict[tuple[tuple[str, str], ...], str] = {}
    sidecars: set[str] = set()
    confounds: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    subjects, files = _list_files(location, filters["participant_label"])
    for relative in files:
        entities = parse(relative)
        if entities.get("datatype") != "func":
            continue
        suffix, ext, desc = entities.get("suffix"), entities.get("ext"), entities.get("desc")
        key = tuple(sorted((k, v) for k, v in entities.items() if k not in _NON_RUN_KEYS))
        if suffix == "bold" and desc == "preproc":
            if ext in _NIFTI_EXTENSIONS:
                bold[relative] = {k: v for k, v in entities.items() if k not in _NON_RUN_KEYS}
            elif ext == ".json":
                sidecars.add(relative)
        elif suffix == "mask" and desc == "brain" and ext in _NIFTI_EXTENSIONS:
            masks.setdefault(key, relative)
        elif suffix in _CONFOUNDS_SUFFIXES and desc == "confounds" and ext in (".tsv", ".json"):
            slot = confounds.setdefault(key, {})
            # The newer name wins when an old and a new table both exist.
            if ext not in slot or suffix == "timeseries":
                slot[ext] = relative
    if not bold:
        raise DatasetError(
            f"{location.url} holds no preprocessed BOLD run (no "
            "sub-*/[ses-*/]func/*_desc-preproc_bold.nii[.gz]). Check that this is fMRIPrep's "
            "output folder and that fMRIPrep finished (it writes the runs last)."
        )
    selected = _select(location, bold, filters, subjects)
    sidecar_of = {
        relative: _strip_nifti(relative) + ".json"
        for relative in selected
        if _strip_nifti(relative) + ".json" in sidecars
    }
    t_r = _read_t_r(location, sorted(sidecar_of.values()))

    def url(relative: str | None) -> str | None:
        return None if relative is None else location.join(*relative.split("/")).url

    runs = []
    for relative, entities in selected.items():
        key = tuple(sorted(entities.items()))
        acquisition = tuple((k, v) for k, v in key if k not in _SPACE_KEYS)
        table = confounds.get(acquisition, {})
        sidecar = sidecar_of.get(relative)
        runs.append(
            BidsRun(
                bold=url(relative) or "",
                entities=dict(entities),
                relative_path=relative,
                confounds=url(table.get(".tsv")),
                confounds_sidecar=url(table.get(".json")),
                mask=url(masks.get(key)),
                sidecar=url(sidecar),
                t_r=None if sidecar is None else t_r.get(sidecar),
            )
        )
    runs.sort(key=lambda item: (_sort_key(item.entities), item.relative_path))
    return runs


def _strip_nifti(relative: str) -> str:
    for extension in _NIFTI_EXTENSIONS:
        if relative.endswith(extension):
            return relative[: -len(extension)]
    return relative


def _select(
    location: Location,
    bold: dict[str, dict[str, str]],
    filters: Mapping[str, list[str] | None],
    subjects: list[str],
) -> dict[str, dict[str, str]]:
    """Apply the filters; name the one that matches nothing and the labels that exist.

    ``subjects`` are the labels of every ``sub-*`` folder: when participants are asked
    for, only their folders were listed, so the others are named from it.
    """
    for name, entity, plural in _FILTERS:
        wanted = filters[name]
        if wanted is None:
            continue
        present = {entities.get(entity) for entities in bold.values()}
        missing = [
            label for label in wanted if not any(_matches(entity, v, [label]) for v in present)
        ]
        if missing:
            # Only the asked-for participants' folders were listed: name every folder.
            shown = set(subjects) if entity == "sub" else present
            labels = sorted((v for v in shown if v is not None), key=_label_key)
            available = ", ".join(labels) if labels else f"none: no file has a {entity} entity"
            scope = (
                f" (in the runs of participant_label={_show(filters['participant_label'])})"
                if entity != "sub" and filters["participant_label"] is not None
                else ""
            )
            raise DatasetError(
                f"{location.url}: {name}={_show(missing)} matches no preprocessed run. "
                f"The {plural} present{scope} are: {available}."
            )
    selected = {
        relative: entities
        for relative, entities in bold.items()
        if all(
            filters[name] is None or _matches(entity, entities.get(entity), filters[name])
            for name, entity, _ in _FILTERS
        )
    }
    if not selected:
        asked = ", ".join(
            f"{name}={_show(filters[name])}" for name, _, _ in _FILTERS if filters[name]
        )
        combinations = sorted(
            {
                "_".join(
                    f"{entity}-{entities[entity]}"
                    for _, entity, _ in _FILTERS
                    if entity in entities
                )
                for entities in bold.values()
            }
        )
        raise DatasetError(
            f"{location.url}: no preprocessed run has all of {asked} together. The runs "
            f"present are: {', '.join(combinations[:20])}"
            + (f" and {len(combinations) - 20} more." if len(combinations) > 20 else ".")
        )
    return selected


def _label_key(label: str) -> tuple[int, int, str]:
    return (0, int(label), label) if label.isdigit() else (1, 0, label)


def _show(labels: list[str] | None) -> str:
    labels = labels or []
    return repr(labels[0]) if len(labels) == 1 else repr(labels)
