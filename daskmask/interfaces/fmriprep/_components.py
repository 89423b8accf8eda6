"""The noise components of a confounds strategy: one function each.

Each function takes the confounds table fMRIPrep wrote (and the options of its
component) and returns the regressors it selects, or, for the components that
remove volumes (non-steady state, scrub), a boolean mask of those volumes.
A component whose columns are not in the table raises :class:`Missing`, which
the caller gathers into one :class:`~daskmask.exceptions.MissingConfoundsError`
naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from daskmask.interfaces.fmriprep._scrub import drop_short_segments, motion_outliers

#: Columns each expansion model adds to a base signal (fMRIPrep's suffixes).
EXPANSIONS: dict[str, tuple[str, ...]] = {
    "basic": ("",),
    "derivatives": ("", "_derivative1"),
    "power2": ("", "_power2"),
    "full": ("", "_derivative1", "_power2", "_derivative1_power2"),
}
MOTION_SIGNALS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")

#: CompCor kinds per ``compcor`` option: (prefix, anatomical masks or None).
COMPCOR_KINDS: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {
    "anat_combined": (("a", ("combined",)),),
    "anat_separated": (("a", ("WM", "CSF")), ("w", None), ("c", None)),
    "temporal": (("t", None),),
    "temporal_anat_combined": (("t", None), ("a", ("combined",))),
    "temporal_anat_separated": (("t", None), ("a", ("WM", "CSF")), ("w", None), ("c", None)),
}

_ICA_NUMBER = re.compile(r"ICA_0*(\d+)$")


class Missing(Exception):
    """A component's columns (or sidecar entries) are not in the confounds.

    Parameters
    ----------
    component : str
        The strategy component asking for them.
    columns : list of str
        The columns not found (empty when the component found nothing to ask for).
    detail : str
        What is missing, in words.

    """

    def __init__(self, component: str, columns: list[str], detail: str) -> None:
        super().__init__(detail)
        self.component = component
        self.columns = columns
        self.detail = detail


def _expanded(table: pd.DataFrame, component: str, bases: tuple[str, ...], model: str):
    names = [f"{base}{suffix}" for base in bases for suffix in EXPANSIONS[model]]
    absent = [name for name in names if name not in table.columns]
    if absent:
        raise Missing(component, absent, f"{component}={model!r} needs columns {absent}")
    return table[names]


def motion(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """Return the six rigid-body parameters with the expansions of ``model``."""
    return _expanded(table, "motion", MOTION_SIGNALS, model)


def wm_csf(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """Mean CSF and white-matter signals with the expansions of ``model``."""
    return _expanded(table, "wm_csf", ("csf", "white_matter"), model)


def global_signal(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """Return the global signal with the expansions of ``model``."""
    return _expanded(table, "global_signal", ("global_signal",), model)


def high_pass(table: pd.DataFrame) -> pd.DataFrame:
    """Return fMRIPrep's discrete cosine regressors (none when the table has none)."""
    return table[[column for column in table.columns if "cosine" in column]]


def _numbered(sidecar: Mapping[str, Any], prefix: str) -> list[str]:
    """Retained components of one prefix in the sidecar, by component number."""
    pattern = re.compile(rf"{prefix}_comp_cor_(\d+)$")
    found = []
    for key, entry in sidecar.items():
        match = pattern.match(key)
        if match and not (isinstance(entry, Mapping) and entry.get("Retained") is False):
            found.append((int(match.group(1)), key))
    return [key for _, key in sorted(found)]


def _first(columns: list[str], n_compcor: int | str) -> list[str]:
    return columns if n_compcor == "all" else columns[: int(n_compcor)]


def compcor_columns(sidecar: Mapping[str, Any], method: str, n_compcor: int | str) -> list[str]:
    """Return the CompCor columns the sidecar names for ``method``, ``n_compcor`` per mask.

    Anatomical components of the ``a_comp_cor`` prefix are split by the
    sidecar's ``Mask`` field (``combined``, ``WM``, ``CSF``): fMRIPrep < 20.2
    numbers all masks in one series, so only the sidecar tells them apart.
    """
    columns: list[str] = []
    for prefix, masks in COMPCOR_KINDS[method]:
        numbered = _numbered(sidecar, prefix)
        if masks is None:
            columns += _first(numbered, n_compcor)
            continue
        for mask in masks:
            of_mask = [
                key
                for key in numbered
                if isinstance(sidecar[key], Mapping) and sidecar[key].get("Mask") == mask
            ]
            columns += _first(of_mask, n_compcor)
    return columns


def compcor(
    table: pd.DataFrame, sidecar: Mapping[str, Any], method: str, n_compcor: int | str
) -> pd.DataFrame:
    """Return the CompCor components the sidecar retains for ``method``."""
    columns = compcor_columns(sidecar, method, n_compcor)
    if not columns:
        raise Missing(
            "compcor",
            [],
            f"the sidecar lists no CompCor component for compcor={method!r} "
            f"(n_compcor={n_compcor!r})",
        )
    absent = [column for column in columns if column not in table.columns]
    if absent:
        raise Missing("compcor", absent, f"compcor={method!r}: the sidecar names columns {absent}")
    return table[columns]


def ica_aroma(table: pd.DataFrame, mode: str) -> pd.DataFrame:
    """ICA-AROMA noise components ("basic"); none for "full" (already regressed)."""
    if mode == "full":
        return table.iloc[:, :0]
    columns = [column for column in table.columns if "aroma" in column]
    if not columns:
        raise Missing(
            "ica_aroma",
            [],
            "ica_aroma='basic' needs the aroma_motion_XX columns (fMRIPrep run with --use-aroma)",
        )
    return table[columns]


def _ica_key(name: str) -> str:
    # tedana 24 writes ICA_04 in one table and ICA_4 in the other: compare numbers.
    match = _ICA_NUMBER.match(str(name))
    return f"ICA_{int(match.group(1))}" if match else str(name)


def tedana(tables: Mapping[str, pd.DataFrame], mode: str) -> pd.DataFrame:
    """Return tedana's rejected components ("aggressive") or accepted and rejected ones.

    Columns are named ``<classification>_<mixing column>``.
    """
    wanted = ("rejected",) if mode == "aggressive" else ("accepted", "rejected")
    metrics = tables["metrics"]
    mixing = tables["mixing"]
    classification = {
        _ica_key(component): label
        for component, label in zip(metrics["Component"], metrics["classification"], strict=True)
        if label in wanted
    }
    by_key = {_ica_key(column): column for column in mixing.columns}
    keys = sorted(key for key in by_key if key in classification)
    return pd.DataFrame(
        {f"{classification[key]}_{by_key[key]}": mixing[by_key[key]] for key in keys},
        index=mixing.index,
    )


def non_steady_state(table: pd.DataFrame) -> np.ndarray | None:
    """Volumes fMRIPrep flagged as non-steady-state; None when it flagged none.

    fMRIPrep writes one ``non_steady_state_outlierXX`` indicator column per
    flagged volume and no column at all when there is none.
    """
    columns = [column for column in table.columns if "non_steady_state" in column]
    if not columns:
        return None
    values = np.nan_to_num(table[columns].to_numpy(dtype=float))
    return (values != 0).any(axis=1)


def scrub(
    table: pd.DataFrame, min_segment: int, fd_threshold: float, std_dvars_threshold: float
) -> np.ndarray | None:
    """Volumes removed by scrubbing; None when no volume exceeds a threshold."""
    absent = [
        column for column in ("framewise_displacement", "std_dvars") if column not in table.columns
    ]
    if absent:
        raise Missing("scrub", absent, f"scrub needs columns {absent}")
    outliers = motion_outliers(
        table["framewise_displacement"].to_numpy(dtype=float),
        table["std_dvars"].to_numpy(dtype=float),
        fd_threshold,
        std_dvars_threshold,
    )
    if not outliers.any():
        return None
    return drop_short_segments(outliers, min_segment)
