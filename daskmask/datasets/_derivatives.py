"""A small, deterministic fMRIPrep-like derivatives dataset, in a folder or an object store.

The tree has what a batch needs (per run: the preprocessed BOLD series, its brain mask,
its JSON sidecar, the confounds table and its JSON) and, around it, files fMRIPrep also
writes (anatomical outputs, surfaces, CIFTI, reference volumes, figures, HTML reports,
logs) so that a discovery that only looks at names has something to get wrong.
"""

from __future__ import annotations

import gzip
import io
import json
import numbers
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from daskmask._fs import locate, storage_errors
from daskmask.datasets._fmriprep_confounds import (
    make_fmriprep_confounds,
    write_fmriprep_confounds,
)
from daskmask.datasets._generator import (
    _check_dtype,
    _check_positive_float,
    _check_positive_int,
    _check_seed,
    _check_shape,
    default_affine,
    epi_tissue_maps,
    generate_epi,
)

ConfoundsLayout = Literal["timeseries", "regressors"]

#: fMRIPrep release written in ``GeneratedBy`` for each confounds layout: the
#: ``desc-confounds_regressors`` name was used from 1.2 to 20.1, ``timeseries`` since 20.2.
FMRIPREP_VERSIONS: dict[str, str] = {"timeseries": "23.2.1", "regressors": "20.1.1"}

_VOXEL_SIZE = (3.0, 3.0, 3.0)
# Seeds of the runs are spaced so that two datasets with neighbouring seeds share no run.
_SEED_STRIDE = 10_000


@dataclass(frozen=True)
class _Run:
    """The entities of one acquisition (a space is added per written BOLD file)."""

    sub: str
    ses: str | None
    task: str
    run: str | None

    def prefix(self) -> str:
        parts = [f"sub-{self.sub}"]
        if self.ses is not None:
            parts.append(f"ses-{self.ses}")
        parts.append(f"task-{self.task}")
        if self.run is not None:
            parts.append(f"run-{self.run}")
        return "_".join(parts)

    def folder(self) -> str:
        if self.ses is None:
            return f"sub-{self.sub}/func"
        return f"sub-{self.sub}/ses-{self.ses}/func"


def _labels(values: Iterable[Any] | None, name: str, *, allow_none: bool) -> list[str | None]:
    """Check a list of BIDS labels (alphanumeric), or ``None`` for "no such entity"."""
    if values is None or (allow_none and isinstance(values, Sequence) and len(values) == 0):
        if not allow_none:
            raise ValueError(f"{name} must list at least one label, got {values!r}.")
        return [None]
    if isinstance(values, (str, bytes, numbers.Integral)):
        values = [values]
    labels: list[str | None] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
            raise TypeError(f"{name} must hold strings or ints, got {value!r}.")
        text = str(value)
        if not text or not text.isalnum() or not text.isascii():
            raise ValueError(
                f"{name} holds {text!r}: a BIDS label is made of letters and digits only "
                "(no '-', '_' or spaces)."
            )
        labels.append(text)
    if not labels:
        raise ValueError(f"{name} must list at least one label, got {values!r}.")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{name} lists a label twice: {labels}.")
    return labels


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, compress: bool) -> bytes:
    """Serialise a 3D image; gzip with mtime 0 so that the bytes are reproducible."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units(xyz="mm")
    raw = image.to_bytes()
    if not compress:
        return raw
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=6) as out:
        out.write(raw)
    return buffer.getvalue()


def _write(folder: Path, relative: str, content: bytes | str) -> None:
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    target.write_bytes(content)


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def _noise_files(run: _Run, spaces: Sequence[str], ext: str) -> dict[str, str]:
    """Per-run files fMRIPrep writes besides the ones a batch uses, as placeholders."""
    stem = f"{run.folder()}/{run.prefix()}"
    files = {
        f"{stem}_AROMAnoiseICs.csv": "1,4,7\n",
        f"{stem}_desc-MELODIC_mixing.tsv": "0.1\t0.2\n0.3\t0.4\n",
        f"{stem}_from-scanner_to-T1w_mode-image_xfm.txt": "#Insight Transform File V1.0\n",
        f"{stem}_hemi-L_space-fsaverage5_bold.func.gii": "<GIFTI></GIFTI>\n",
        f"{stem}_hemi-R_space-fsaverage5_bold.func.gii": "<GIFTI></GIFTI>\n",
        f"{stem}_space-fsLR_den-91k_bold.dtseries.nii": "not a NIfTI: a CIFTI placeholder\n",
        f"{stem}_space-fsLR_den-91k_bold.dtseries.json": _json({"RepetitionTime": 1.0}),
    }
    for space in spaces:
        files[f"{stem}_space-{space}_desc-aparcaseg_dseg{ext}"] = "placeholder\n"
    figures = f"sub-{run.sub}/figures/{run.prefix()}"
    files[f"{figures}_desc-carpetplot_bold.svg"] = "<svg xmlns='http://www.w3.org/2000/svg'/>\n"
    files[f"{figures}_desc-rois_bold.svg"] = "<svg xmlns='http://www.w3.org/2000/svg'/>\n"
    return files


def _stage(
    folder: Path,
    acquisitions: list[_Run],
    *,
    spaces: Sequence[str],
    shape: tuple[int, int, int],
    n_volumes: int,
    t_r: float,
    dtype: np.dtype,
    compress: bool,
    seed: int,
    layout: str,
    kind: str,
    noise: bool,
    confounds_options: Mapping[str, Any],
) -> list[str]:
    """Write the whole tree under the local ``folder``; return the BOLD files' relative paths."""
    ext = ".nii.gz" if compress else ".nii"
    affine = default_affine(shape, _VOXEL_SIZE)
    version = FMRIPREP_VERSIONS[layout]
    description = {
        "Name": "daskmask synthetic fMRIPrep derivatives",
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "fMRIPrep",
                "Version": version,
                "CodeURL": f"https://github.com/nipreps/fmriprep/archive/{version}.tar.gz",
            },
            {"Name": "daskmask.datasets.make_fmriprep_derivatives"},
        ],
        "HowToAcknowledge": "Synthetic data: nothing to acknowledge.",
    }
    _write(folder, "dataset_description.json", _json(description))
    bold_files: list[str] = []
    for index, run in enumerate(acquisitions):
        run_seed = seed * _SEED_STRIDE + index
        stem = f"{run.folder()}/{run.prefix()}"
        (folder / run.folder()).mkdir(parents=True, exist_ok=True)
        brain = epi_tissue_maps(shape, voxel_size=_VOXEL_SIZE, seed=run_seed)["brain"]
        mask_bytes = _nifti_bytes(brain.astype(np.uint8), affine, compress)
        bold_template: Path | None = None
        for space in spaces:
            bold = f"{stem}_space-{space}_desc-preproc_bold{ext}"
            target = folder / bold
            if bold_template is None:
                # The same series in every space: resampling is not what is being tested.
                generate_epi(
                    target,
                    shape,
                    n_volumes,
                    kind=kind,  # type: ignore[arg-type]
                    dtype=dtype,
                    voxel_size=_VOXEL_SIZE,
                    t_r=t_r,
                    seed=run_seed,
                )
                bold_template = target
            else:
                shutil.copyfile(bold_template, target)
            bold_files.append(bold)
            _write(folder, f"{stem}_space-{space}_desc-brain_mask{ext}", mask_bytes)
            sidecar = {
                "RepetitionTime": t_r,
                "SkullStripped": kind == "skull-stripped",
                "TaskName": run.task,
                "StartTime": 0.0,
                "SliceTimingCorrected": False,
            }
            _write(folder, f"{stem}_space-{space}_desc-preproc_bold.json", _json(sidecar))
            _write(folder, f"{stem}_space-{space}_boldref{ext}", mask_bytes)
        table, metadata = make_fmriprep_confounds(
            n_volumes, seed=run_seed, layout=layout, t_r=t_r, **confounds_options
        )
        write_fmriprep_confounds(folder / stem, table, metadata, layout)
        if noise:
            for relative, content in _noise_files(run, spaces, ext).items():
                _write(folder, relative, content)
    if noise:
        for sub in sorted({run.sub for run in acquisitions}):
            tissue = epi_tissue_maps(shape, voxel_size=_VOXEL_SIZE, seed=seed)
            anat = f"sub-{sub}/anat/sub-{sub}"
            # An anatomical brain mask: same desc and suffix as the runs' masks, other folder.
            _write(
                folder,
                f"{anat}_desc-brain_mask{ext}",
                _nifti_bytes(tissue["brain"].astype(np.uint8), affine, compress),
            )
            _write(
                folder,
                f"{anat}_desc-preproc_T1w{ext}",
                _nifti_bytes(tissue["wm"] + 0.6 * tissue["gm"], affine, compress),
            )
            for space in spaces:
                _write(folder, f"{anat}_space-{space}_desc-preproc_T1w{ext}", "placeholder\n")
            _write(folder, f"{anat}_desc-preproc_T1w.json", _json({"SkullStripped": False}))
            _write(folder, f"sub-{sub}.html", f"<html><body>sub-{sub}</body></html>\n")
        _write(folder, "desc-aparcaseg_dseg.tsv", "index\tname\n0\tUnknown\n")
        _write(folder, "logs/CITATION.md", "Results included in this manuscript come from...\n")
        _write(folder, ".bidsignore", "*.html\nlogs/\nfigures/\n")
    return bold_files


def make_fmriprep_derivatives(
    root: str | os.PathLike[str],
    *,
    subjects: Sequence[str | int] = ("01", "02"),
    sessions: Sequence[str | int] | None = None,
    tasks: Sequence[str] = ("rest",),
    runs: Sequence[str | int] | None = (1,),
    spaces: Sequence[str] = ("MNI152NLin2009cAsym",),
    shape: Sequence[int] = (20, 24, 20),
    n_volumes: int = 50,
    t_r: float = 2.0,
    dtype: str = "int16",
    compress: bool = True,
    seed: int = 0,
    layout: ConfoundsLayout = "timeseries",
    kind: Literal["skull-stripped", "raw"] = "skull-stripped",
    noise: bool = True,
    confounds_options: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write a small fMRIPrep-like derivatives dataset to a folder or a URL.

    For every combination of subject, session, task and run (an *acquisition*) and every
    space, the dataset holds what fMRIPrep writes::

        dataset_description.json          DatasetType "derivative", GeneratedBy fMRIPrep
        sub-01/[ses-1/]func/
          sub-01[_ses-1]_task-rest[_run-1]_space-S_desc-preproc_bold.nii.gz
          sub-01[_ses-1]_task-rest[_run-1]_space-S_desc-preproc_bold.json  (RepetitionTime)
          sub-01[_ses-1]_task-rest[_run-1]_space-S_desc-brain_mask.nii.gz
          sub-01[_ses-1]_task-rest[_run-1]_desc-confounds_timeseries.tsv   (no space)
          sub-01[_ses-1]_task-rest[_run-1]_desc-confounds_timeseries.json

    The BOLD series is :func:`~daskmask.datasets.generate_epi`'s synthetic head (a
    different seed per acquisition, the same series in every space), the brain mask is
    that head's exact brain support, and the confounds have fMRIPrep's columns (motion,
    CSF/white-matter/global signals, CompCor, cosines, framewise displacement, DVARS,
    non-steady-state outliers) with as many rows as volumes. Unless ``noise=False``,
    files a discovery must skip are written too: anatomical outputs (including an
    ``anat/..._desc-brain_mask``), surface and CIFTI series, ``boldref`` volumes,
    segmentations, ICA-AROMA files, transforms, figures, per-subject HTML reports,
    ``logs/`` and a ``.bidsignore``. The same arguments give the same files.

    Parameters
    ----------
    root : str or os.PathLike
        Local folder (created if needed) or fsspec URL (``s3://bucket/derivatives/fmriprep``).
        Existing files with the same names are replaced; others are left alone.
    subjects : sequence of str or int
        Participant labels, without ``sub-``.
    sessions : sequence of str or int, optional
        Session labels; ``None`` (default) writes no session level.
    tasks : sequence of str
        Task labels.
    runs : sequence of str or int, optional
        Run indices as written in the names (``1`` -> ``run-1``, ``"01"`` -> ``run-01``);
        ``None`` or ``()`` writes no run entity.
    spaces : sequence of str
        Output spaces of the BOLD series and masks (``MNI152NLin2009cAsym``, ``T1w``...).
    shape : sequence of 3 int
        Spatial shape of the series (3 mm voxels).
    n_volumes : int
        Volumes per run, and rows of each confounds table (at least 3).
    t_r : float
        Repetition time, in the NIfTI header and the sidecar's ``RepetitionTime``.
    dtype : {"int16", "float32"}
        Data type of the BOLD series.
    compress : bool
        ``.nii.gz`` (default) or ``.nii`` images.
    seed : int
        Non-negative seed of the whole dataset.
    layout : {"timeseries", "regressors"}
        Confounds file name: ``desc-confounds_timeseries`` (fMRIPrep 20.2 and later, the
        default) or ``desc-confounds_regressors`` (fMRIPrep 1.2 to 20.1); the
        ``GeneratedBy`` version follows (:data:`FMRIPREP_VERSIONS`).
    kind : {"skull-stripped", "raw"}
        ``"skull-stripped"``: exact zeros outside the brain (the ``background`` mask
        strategy finds the brain); ``"raw"``: the head on a noisy background (the ``epi``
        strategy's case).
    noise : bool
        Also write the files a discovery must ignore (default ``True``).
    confounds_options : mapping, optional
        More arguments of :func:`~daskmask.datasets.make_fmriprep_confounds`
        (``n_non_steady``, ``n_compcor``, ``n_aroma``, ``n_motion_spikes``); the seed,
        layout, ``t_r`` and number of volumes come from this function's arguments.
    storage_options : mapping, optional
        File-system options for a URL (credentials, ``endpoint_url``), merged over the dask
        config ``daskmask.storage-options``.

    Returns
    -------
    list of str
        The ``desc-preproc_bold`` files written, local paths or URLs, sorted by subject,
        session, task, run and space.

    Raises
    ------
    ValueError
        An empty list of subjects, tasks or spaces, a label that is not alphanumeric, a
        repeated label, or an argument out of range.
    TypeError
        An argument of the wrong type.
    daskmask.exceptions.StorageError
        The URL cannot be written (missing bucket, credentials, unreachable endpoint).

    Examples
    --------
    >>> import tempfile
    >>> from daskmask.datasets import make_fmriprep_derivatives
    >>> folder = tempfile.mkdtemp()
    >>> bold = make_fmriprep_derivatives(folder, subjects=["01"])
    >>> [path.rsplit("/", 1)[-1] for path in bold]
    ['sub-01_task-rest_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz']

    """
    subject_labels = _labels(subjects, "subjects", allow_none=False)
    session_labels = _labels(sessions, "sessions", allow_none=True)
    task_labels = _labels(tasks, "tasks", allow_none=False)
    run_labels = _labels(runs, "runs", allow_none=True)
    space_labels = _labels(spaces, "spaces", allow_none=False)
    grid_shape = _check_shape(shape)
    n_volumes = _check_positive_int(n_volumes, "n_volumes")
    if n_volumes < 3:
        raise ValueError(
            f"n_volumes must be at least 3 (a confounds table has derivatives and "
            f"non-steady-state volumes), got {n_volumes}."
        )
    fixed = sorted(set(confounds_options or {}) & {"n_volumes", "seed", "layout", "t_r"})
    if fixed:
        raise ValueError(
            f"confounds_options may not set {fixed}: pass them as this function's own "
            "arguments, so that the images and the confounds agree."
        )
    t_r = _check_positive_float(t_r, "t_r")
    resolved_dtype = _check_dtype(dtype)
    seed = _check_seed(seed)
    if layout not in FMRIPREP_VERSIONS:
        raise ValueError(
            f"layout must be one of {tuple(FMRIPREP_VERSIONS)} (the confounds file name "
            f"desc-confounds_<layout>.tsv), got {layout!r}."
        )
    if kind not in ("skull-stripped", "raw"):
        raise ValueError(f"kind must be 'skull-stripped' or 'raw', got {kind!r}.")
    acquisitions = sorted(
        (
            _Run(str(sub), ses, str(task), run)
            for sub in subject_labels
            for ses in session_labels
            for task in task_labels
            for run in run_labels
        ),
        key=lambda run: (run.sub, run.ses or "", run.task, _run_key(run.run)),
    )
    options = dict(
        spaces=sorted(str(space) for space in space_labels),
        shape=grid_shape,
        n_volumes=n_volumes,
        t_r=t_r,
        dtype=resolved_dtype,
        compress=bool(compress),
        seed=seed,
        layout=layout,
        kind=kind,
        noise=bool(noise),
        confounds_options=dict(confounds_options or {}),
    )
    location = locate(root, storage_options)
    if location.is_local:
        folder = Path(location.path)
        folder.mkdir(parents=True, exist_ok=True)
        relative = _stage(folder, acquisitions, **options)
        return [str(folder / path) for path in relative]
    # Object stores have no rename into place: the tree is built in a local scratch
    # folder, then sent in one recursive put (many objects in parallel, through s3fs).
    with tempfile.TemporaryDirectory(prefix="daskmask-derivatives-") as scratch:
        relative = _stage(Path(scratch), acquisitions, **options)
        with storage_errors(location.url):
            files = sorted(path for path in Path(scratch).rglob("*") if path.is_file())
            base = location.path.rstrip("/")
            location.fs.put(
                [str(path) for path in files],
                [f"{base}/{path.relative_to(scratch).as_posix()}" for path in files],
            )
    return [location.join(*path.split("/")).url for path in relative]


def _run_key(run: str | None) -> tuple[int, str]:
    # run-2 before run-10: runs are indices.
    if run is None:
        return (-1, "")
    return (int(run), run) if run.isdigit() else (1 << 30, run)
