"""The runs of a BIDS derivatives dataset (fMRIPrep output): what a batch masks.

A :class:`BidsRun` names one preprocessed run and the files fMRIPrep writes
beside it. Paths are local paths or fsspec URLs, as the input was given.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

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
