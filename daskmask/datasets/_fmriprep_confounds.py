"""Realistic fMRIPrep-like confounds: the ``desc-confounds`` TSV table and its JSON sidecar.

The table has the columns fMRIPrep writes, in fMRIPrep's order: mean signals of the
global, CSF and white-matter masks with their expansions, DVARS, framewise
displacement, the CompCor components, discrete cosine regressors, non-steady-state
indicators, the six rigid-body motion parameters with their expansions, optional
ICA-AROMA noise components and the motion-outlier indicators fMRIPrep derives from
its own thresholds (FD > 0.5 mm or standardised DVARS > 1.5).

Two layouts exist:

``"timeseries"``
    fMRIPrep 20.2 and later (``*_desc-confounds_timeseries.tsv``): anatomical CompCor
    has one prefix per mask, ``c_comp_cor_XX`` (CSF), ``w_comp_cor_XX`` (white
    matter) and ``a_comp_cor_XX`` (the combined mask), plus ``rmsd``, ``csf_wm`` and
    ``tcompcor`` columns.
``"regressors"``
    fMRIPrep 1.4 to 20.1 (``*_desc-confounds_regressors.tsv``): every anatomical
    component is an ``a_comp_cor_XX``, the masks interleaved in one numbering; only
    the sidecar's ``Mask`` field tells them apart.

Everything is a deterministic function of the arguments (``seed`` included).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from daskmask._fs import Location, locate

Layout = Literal["timeseries", "regressors"]

#: fMRIPrep's high-pass cut-off of the cosine regressors (seconds).
_HIGH_PASS_PERIOD_S = 128.0
#: fMRIPrep's thresholds for its own ``motion_outlierXX`` columns.
_FMRIPREP_FD_THRESHOLD = 0.5
_FMRIPREP_DVARS_THRESHOLD = 1.5
#: Radius (mm) of the sphere that turns rotations into displacements (Power et al. 2012).
_HEAD_RADIUS_MM = 50.0
#: Components of each CompCor kind when the caller gives no count.
_DEFAULT_COMPCOR = {"a": 6, "w": 5, "c": 4, "t": 3}
#: Components fMRIPrep computes but does not retain (the sidecar's ``dropped_N``).
_DROPPED_PER_KIND = 3
#: Image suffixes a BOLD path may end with; what precedes ``_bold`` names the run.
_IMAGE_SUFFIX = re.compile(r"_bold\.(nii\.gz|nii|func\.gii|dtseries\.nii)$")
#: Entities of the image that fMRIPrep's confounds file does not carry.
_IMAGE_ONLY_ENTITIES = frozenset({"space", "res", "den", "desc", "hemi", "cohort"})

_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def _expansions(name: str, series: np.ndarray, order: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Return a signal with fMRIPrep's derivative and power expansions, in ``order``.

    The derivative of the first volume is undefined (NaN, written ``n/a``).
    """
    derivative = np.concatenate([[np.nan], np.diff(series)])
    values = {
        "": series,
        "_derivative1": derivative,
        "_power2": series**2,
        "_derivative1_power2": derivative**2,
    }
    return {f"{name}{suffix}": values[suffix] for suffix in order}


def _cosine_basis(n_volumes: int, t_r: float) -> np.ndarray:
    """Discrete cosine regressors (DCT-II) below fMRIPrep's 128 s high-pass cut-off."""
    n_cosines = int(np.floor(2 * n_volumes * t_r / _HIGH_PASS_PERIOD_S))
    if n_cosines == 0:
        return np.zeros((n_volumes, 0))
    time = np.arange(n_volumes)
    return np.stack(
        [
            np.sqrt(2.0 / n_volumes) * np.cos(np.pi * (2 * time + 1) * order / (2 * n_volumes))
            for order in range(1, n_cosines + 1)
        ],
        axis=1,
    ).reshape(n_volumes, n_cosines)


def _components(rng: np.random.Generator, n_volumes: int, count: int) -> np.ndarray:
    """Orthonormal, zero-mean time courses, smooth like CompCor's leading components."""
    if count == 0:
        return np.zeros((n_volumes, 0))
    raw = rng.standard_normal((n_volumes, count))
    # A short moving average gives the temporal autocorrelation of real noise components.
    kernel = np.ones(3) / 3
    raw = np.stack([np.convolve(column, kernel, mode="same") for column in raw.T], axis=1)
    raw -= raw.mean(axis=0)
    basis, _ = np.linalg.qr(raw)
    return basis[:, :count]


def _variance_entries(
    rng: np.random.Generator, count: int, n_dropped: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decreasing variance explained: the retained part sums to just over 50 %.

    fMRIPrep keeps the components that explain 50 % of the variance; the
    dropped ones carry the cumulative fraction on towards 1.
    """
    total = count + n_dropped
    weights = np.sort(rng.uniform(0.5, 1.5, total) / np.arange(1, total + 1) ** 0.7)[::-1]
    retained = weights[:count].sum()
    scale = 0.52 / retained if count else 1.0
    explained = weights * scale
    if n_dropped:
        rest = explained[count:]
        explained[count:] = rest / rest.sum() * 0.48
    cumulative = np.cumsum(explained)
    singular = np.sqrt(explained) * 250.0
    return explained, cumulative, singular


def _compcor_counts(n_compcor: int | Mapping[str, int] | None) -> dict[str, int]:
    if n_compcor is None:
        return dict(_DEFAULT_COMPCOR)
    if isinstance(n_compcor, Mapping):
        unknown = set(n_compcor) - set(_DEFAULT_COMPCOR)
        if unknown:
            raise ValueError(
                f"n_compcor has unknown kinds {sorted(unknown)}; use 'a' (combined), 'w' "
                "(white matter), 'c' (CSF) and 't' (temporal)."
            )
        return {kind: int(n_compcor.get(kind, 0)) for kind in _DEFAULT_COMPCOR}
    return dict.fromkeys(_DEFAULT_COMPCOR, int(n_compcor))


def make_fmriprep_confounds(
    n_volumes: int,
    *,
    seed: int = 0,
    n_non_steady: int = 2,
    layout: Layout = "timeseries",
    n_compcor: int | Mapping[str, int] | None = None,
    n_aroma: int = 0,
    t_r: float = 2.0,
    n_motion_spikes: int | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Make an fMRIPrep-like confounds table and its JSON sidecar.

    Parameters
    ----------
    n_volumes : int
        Number of volumes of the run (rows of the table); at least 3.
    seed : int, default=0
        Seed of the random generator: the same arguments give the same table.
    n_non_steady : int, default=2
        Leading volumes flagged as non-steady-state (one
        ``non_steady_state_outlierXX`` column each); their global, CSF and
        white-matter signals are raised as in a real run.
    layout : {"timeseries", "regressors"}, default="timeseries"
        fMRIPrep >= 20.2 (separate ``c_``/``w_``/``a_comp_cor`` prefixes) or
        fMRIPrep 1.4 to 20.1 (every anatomical component an ``a_comp_cor``,
        masks told apart by the sidecar only).
    n_compcor : int or mapping, optional
        Retained components of each CompCor kind: an int for every kind, or a
        mapping with keys ``"a"`` (combined mask), ``"w"`` (white matter),
        ``"c"`` (CSF) and ``"t"`` (temporal). Default: a 6, w 5, c 4, t 3.
    n_aroma : int, default=0
        ICA-AROMA noise components (``aroma_motion_XX`` columns, numbered with
        gaps as fMRIPrep does); 0 for a run processed without ``--use-aroma``.
    t_r : float, default=2.0
        Repetition time in seconds (sets the number of cosine regressors).
    n_motion_spikes : int, optional
        Volumes with a sudden head movement (framewise displacement and DVARS
        spikes, so scrubbing has work to do). Default: one per 25 volumes.

    Returns
    -------
    table : pandas.DataFrame
        The confounds, NaN where fMRIPrep writes ``n/a`` (the first row of
        derivatives, DVARS and framewise displacement).
    sidecar : dict
        The JSON sidecar: one entry per CompCor component (``Method``,
        ``Mask`` for anatomical ones, ``Retained``, ``SingularValue``,
        ``VarianceExplained``, ``CumulativeVarianceExplained``), the
        ``dropped_N`` components that were not retained, and the mean-signal
        columns.

    Raises
    ------
    ValueError
        For an unknown layout, fewer than 3 volumes, or more non-steady-state
        volumes than the run has.

    """
    if layout not in ("timeseries", "regressors"):
        raise ValueError(f"layout must be 'timeseries' or 'regressors', not {layout!r}.")
    if n_volumes < 3:
        raise ValueError(f"n_volumes must be at least 3, not {n_volumes}.")
    if not 0 <= n_non_steady < n_volumes:
        raise ValueError(f"n_non_steady must be in [0, {n_volumes}), not {n_non_steady}.")
    rng = np.random.default_rng(seed)
    # A demeaned run of n volumes has rank n - 1: CompCor cannot retain more components.
    counts = {
        kind: min(count, n_volumes - 1) for kind, count in _compcor_counts(n_compcor).items()
    }
    if n_motion_spikes is None:
        n_motion_spikes = max(1, n_volumes // 25)

    # Head motion: slow drifts (random walks) plus a few sudden jumps.
    steps = rng.standard_normal((n_volumes, 6)) * np.array([0.02] * 3 + [0.0004] * 3)
    candidates = np.arange(max(n_non_steady, 1), n_volumes)
    spikes = np.sort(
        rng.choice(candidates, size=min(n_motion_spikes, candidates.size), replace=False)
    )
    jumps = rng.choice([-1.0, 1.0], size=(spikes.size, 6)) * rng.uniform(
        0.3, 0.9, (spikes.size, 6)
    )
    steps[spikes] += jumps * np.array([1.0] * 3 + [0.01] * 3)
    steps[0] = 0.0
    motion = np.cumsum(steps, axis=0)
    displacement = np.abs(np.diff(motion, axis=0))
    framewise = np.concatenate(
        [[np.nan], displacement[:, :3].sum(axis=1) + _HEAD_RADIUS_MM * displacement[:, 3:].sum(1)]
    )

    # Tissue signals: baseline, drift, noise, motion-related jumps, non-steady rise.
    time = np.arange(n_volumes)
    steady = np.ones(n_volumes)
    steady[:n_non_steady] = 1.0 + 0.3 * 0.5 ** np.arange(n_non_steady)
    spike_effect = np.zeros(n_volumes)
    spike_effect[spikes] = rng.uniform(0.01, 0.03, spikes.size)

    def tissue(baseline: float, noise: float) -> np.ndarray:
        drift = 1.0 + 0.01 * np.sin(2 * np.pi * time / max(n_volumes, 2) + rng.uniform(0, 6))
        return (
            baseline * steady * drift * (1 + spike_effect + noise * rng.standard_normal(n_volumes))
        )

    global_signal = tissue(rng.uniform(550, 650), 0.002)
    csf = tissue(rng.uniform(750, 900), 0.006)
    white_matter = tissue(rng.uniform(520, 600), 0.002)
    dvars_raw = (
        np.abs(np.diff(global_signal)) * 0.5
        + rng.uniform(15, 20)
        + rng.gamma(6.0, 0.5, n_volumes - 1)
    )
    std_dvars = dvars_raw / np.median(dvars_raw)
    std_dvars[spikes - 1] += rng.uniform(0.6, 1.5, spikes.size)
    dvars_raw = std_dvars * np.median(dvars_raw)

    table: dict[str, np.ndarray] = {}
    gs_order = ("", "_derivative1", "_derivative1_power2", "_power2")
    if layout == "timeseries":
        table.update(_expansions("global_signal", global_signal, gs_order))
        table.update(_expansions("csf", csf, gs_order))
        table.update(_expansions("white_matter", white_matter, gs_order))
        table["csf_wm"] = (csf + white_matter) / 2
        table["tcompcor"] = tissue(rng.uniform(600, 700), 0.004)
    else:
        table.update(
            _expansions("csf", csf, ("", "_derivative1", "_power2", "_derivative1_power2"))
        )
        table.update(_expansions("white_matter", white_matter, gs_order))
        table.update(
            _expansions(
                "global_signal",
                global_signal,
                ("", "_derivative1", "_power2", "_derivative1_power2"),
            )
        )
    table["std_dvars"] = np.concatenate([[np.nan], std_dvars])
    table["dvars"] = np.concatenate([[np.nan], dvars_raw])
    table["framewise_displacement"] = framewise
    if layout == "timeseries":
        rms = np.sqrt((displacement[:, :3] ** 2).sum(axis=1))
        table["rmsd"] = np.concatenate([[np.nan], rms])

    sidecar: dict[str, Any] = {}
    dropped = 0

    def add_components(
        kind: str, mask: str | None, count: int, names: list[str]
    ) -> dict[str, np.ndarray]:
        nonlocal dropped
        values = _components(rng, n_volumes, count)
        explained, cumulative, singular = _variance_entries(rng, count, _DROPPED_PER_KIND)
        method = "tCompCor" if kind == "t" else "aCompCor"
        for index in range(count + _DROPPED_PER_KIND):
            entry: dict[str, Any] = {
                "CumulativeVarianceExplained": round(float(cumulative[index]), 10),
                "Method": method,
                "Retained": index < count,
                "SingularValue": round(float(singular[index]), 10),
                "VarianceExplained": round(float(explained[index]), 10),
            }
            if mask is not None:
                entry["Mask"] = mask
            if index < count:
                sidecar[names[index]] = entry
            else:
                sidecar[f"dropped_{dropped}"] = entry
                dropped += 1
        return {names[index]: values[:, index] for index in range(count)}

    if layout == "timeseries":
        table.update(
            add_components(
                "t", None, counts["t"], [f"t_comp_cor_{i:02d}" for i in range(counts["t"])]
            )
        )
        for kind, mask in (("c", "CSF"), ("w", "WM"), ("a", "combined")):
            names = [f"{kind}_comp_cor_{i:02d}" for i in range(counts[kind])]
            table.update(add_components(kind, mask, counts[kind], names))
    else:
        table.update(
            add_components(
                "t", None, counts["t"], [f"t_comp_cor_{i:02d}" for i in range(counts["t"])]
            )
        )
        # One numbering for all masks, interleaved: only the sidecar tells them apart.
        masks = ["combined"] * counts["a"] + ["CSF"] * counts["c"] + ["WM"] * counts["w"]
        order = rng.permutation(len(masks))
        numbers = {mask: [] for mask in ("combined", "CSF", "WM")}
        for number, position in enumerate(order):
            numbers[masks[position]].append(number)
        anatomical: dict[str, np.ndarray] = {}
        for mask in ("combined", "CSF", "WM"):
            names = [f"a_comp_cor_{number:02d}" for number in numbers[mask]]
            anatomical.update(add_components("a", mask, len(names), names))
        table.update(dict(sorted(anatomical.items(), key=lambda item: int(item[0][11:]))))

    cosines = _cosine_basis(n_volumes, t_r)
    for index in range(cosines.shape[1]):
        table[f"cosine{index:02d}"] = cosines[:, index]
    for index in range(n_non_steady):
        indicator = np.zeros(n_volumes, dtype=np.int64)
        indicator[index] = 1
        table[f"non_steady_state_outlier{index:02d}"] = indicator

    for column, name in enumerate(_MOTION):
        table.update(
            _expansions(
                name, motion[:, column], ("", "_derivative1", "_power2", "_derivative1_power2")
            )
        )

    if n_aroma:
        numbers = np.sort(rng.choice(np.arange(1, 3 * n_aroma + 2), n_aroma, replace=False))
        sources = _components(rng, n_volumes, n_aroma) * np.sqrt(n_volumes)
        for column, number in enumerate(numbers):
            table[f"aroma_motion_{number:02d}"] = sources[:, column]

    outliers = np.flatnonzero(
        (np.nan_to_num(framewise) > _FMRIPREP_FD_THRESHOLD)
        | (np.nan_to_num(table["std_dvars"]) > _FMRIPREP_DVARS_THRESHOLD)
    )
    for index, volume in enumerate(outliers):
        indicator = np.zeros(n_volumes, dtype=np.int64)
        indicator[volume] = 1
        table[f"motion_outlier{index:02d}"] = indicator

    if layout == "timeseries":
        for name in ("global_signal", "csf", "white_matter", "csf_wm", "tcompcor"):
            sidecar[name] = {"Method": "Mean"}
    sidecar = dict(sorted(sidecar.items()))
    return pd.DataFrame(table), sidecar


def confounds_stem(path_stem_or_bold_path: str | os.PathLike[str] | Location) -> Location:
    """Return where a run's confounds live, without the ``_desc-confounds_*`` ending.

    A BOLD image path (``..._space-X_desc-preproc_bold.nii.gz``, ``.nii``,
    ``.func.gii``, ``.dtseries.nii``) loses ``_bold.<ext>`` and the entities
    fMRIPrep's confounds file does not carry (space, res, den, desc, hemi,
    cohort); any other path is taken as the stem itself.
    """
    location = locate(path_stem_or_bold_path)
    name = location.name
    match = _IMAGE_SUFFIX.search(name)
    if match is None:
        return location
    parts = [
        part
        for part in name[: match.start()].split("_")
        if part.split("-", 1)[0] not in _IMAGE_ONLY_ENTITIES
    ]
    return location.parent.join("_".join(parts))


def write_fmriprep_confounds(
    path_stem_or_bold_path: str | os.PathLike[str] | Location,
    table: pd.DataFrame,
    sidecar: Mapping[str, Any],
    layout: Layout = "timeseries",
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """Write a confounds table and its sidecar the way fMRIPrep names them.

    Parameters
    ----------
    path_stem_or_bold_path : str, path-like or Location
        The run's BOLD image (the confounds go beside it, named after its
        entities) or a stem such as ``.../func/sub-01_task-rest`` (local path
        or URL).
    table : pandas.DataFrame
        The confounds (NaN is written ``n/a``, as fMRIPrep does).
    sidecar : mapping
        The JSON sidecar.
    layout : {"timeseries", "regressors"}, default="timeseries"
        File name ending: ``_desc-confounds_timeseries`` (fMRIPrep >= 20.2) or
        ``_desc-confounds_regressors`` (older releases).
    storage_options : mapping, optional
        File-system options for a URL.

    Returns
    -------
    tuple of str
        The TSV's and the JSON's path or URL.

    """
    if layout not in ("timeseries", "regressors"):
        raise ValueError(f"layout must be 'timeseries' or 'regressors', not {layout!r}.")
    stem = confounds_stem(locate(path_stem_or_bold_path, storage_options))
    tsv = stem.parent.join(f"{stem.name}_desc-confounds_{layout}.tsv")
    sidecar_location = stem.parent.join(f"{stem.name}_desc-confounds_{layout}.json")
    if stem.is_local:
        os.makedirs(stem.parent.path, exist_ok=True)
    text = io.StringIO()
    table.to_csv(text, sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    with tsv.open("wb") as handle:
        handle.write(text.getvalue().encode("utf-8"))
    with sidecar_location.open("wb") as handle:
        handle.write(json.dumps(dict(sidecar), indent=2, sort_keys=True).encode("utf-8"))
    return tsv.url, sidecar_location.url
