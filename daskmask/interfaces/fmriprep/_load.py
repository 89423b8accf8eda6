"""``load_confounds``: fMRIPrep's confounds grouped into noise components."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from daskmask._fs import Location
from daskmask._warnings import warn_user
from daskmask.exceptions import ConfoundsError, ConfoundsNotFoundError, MissingConfoundsError
from daskmask.interfaces.fmriprep import _components
from daskmask.interfaces.fmriprep._files import (
    check_image_name,
    find_confounds_files,
    image_text,
    read_confounds_table,
    read_sidecar,
    read_tedana_tables,
)
from daskmask.interfaces.fmriprep._scrub import sample_mask_from

ConfoundStrategy = Literal[
    "motion",
    "high_pass",
    "wm_csf",
    "global_signal",
    "compcor",
    "ica_aroma",
    "tedana",
    "scrub",
    "non_steady_state",
]
ConfoundModel = Literal["basic", "power2", "derivatives", "full"]
CompcorType = Literal[
    "anat_combined",
    "anat_separated",
    "temporal",
    "temporal_anat_combined",
    "temporal_anat_separated",
]

STRATEGY_COMPONENTS: tuple[str, ...] = get_args(ConfoundStrategy)
MODELS: tuple[str, ...] = get_args(ConfoundModel)
COMPCOR_TYPES: tuple[str, ...] = get_args(CompcorType)
ICA_AROMA_TYPES = ("full", "basic")
TEDANA_TYPES = ("aggressive", "non-aggressive")

#: Columns that flag volumes rather than model noise.
_VOLUME_FLAGS = ("motion_outlier", "non_steady_state")


def _check_choice(value: Any, allowed: Sequence[Any], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, not {value!r}.")


def _check_strategy(strategy: Any) -> tuple[str, ...]:
    """Validate ``strategy``; return it without repeats, in the order given."""
    if not isinstance(strategy, (tuple, list)):
        raise ValueError(
            "strategy must be a tuple or list of component names such as ('motion', "
            f"'high_pass', 'wm_csf'), not a {type(strategy).__name__}."
        )
    if not strategy:
        warn_user(
            "strategy is empty: no confounds are selected and confounds is None "
            "(non-steady-state volumes still shape the sample mask).",
            UserWarning,
        )
    for component in strategy:
        _check_choice(component, STRATEGY_COMPONENTS, "each strategy component")
    if "non_steady_state" in strategy:
        warn_user(
            "Non-steady-state volumes are always taken out through the sample mask; "
            "'non_steady_state' in strategy changes nothing.",
            UserWarning,
        )
    if "compcor" in strategy and "high_pass" not in strategy:
        raise ValueError(
            "compcor needs 'high_pass' in strategy as well: fMRIPrep computes CompCor after "
            f"high-pass filtering with its cosine regressors. Got strategy={tuple(strategy)!r}."
        )
    return tuple(dict.fromkeys(strategy))


def _check_n_compcor(n_compcor: Any) -> None:
    if n_compcor == "all":
        return
    if isinstance(n_compcor, bool) or not isinstance(n_compcor, (int, np.integer)):
        raise ValueError(f"n_compcor must be 'all' or a number of components, not {n_compcor!r}.")
    if n_compcor < 0:
        raise ValueError(f"n_compcor must be 'all' or a number >= 0, not {n_compcor}.")


def _is_single_surface(images: Sequence[Any]) -> bool:
    return (
        len(images) == 2
        and not any(isinstance(image, (list, tuple)) for image in images)
        and all(image_text(image).endswith(".func.gii") for image in images)
    )


def _runs(img_files: Any) -> tuple[list[list[Any]], bool]:
    """Return the runs (each a list of one image or a surface pair) and whether one."""
    if isinstance(img_files, (str, os.PathLike, Location)):
        return [[img_files]], True
    if not isinstance(img_files, (list, tuple)):
        raise TypeError(
            "img_files must be a path or URL, a pair of surface files, or a list of those, "
            f"not a {type(img_files).__name__}."
        )
    if _is_single_surface(img_files):
        return [list(img_files)], True
    runs = []
    for item in img_files:
        if isinstance(item, (list, tuple)):
            runs.append(list(item))
        else:
            runs.append([item])
    return runs, False


def _flags(values: pd.DataFrame) -> list[str]:
    return [column for column in values.columns if any(flag in column for flag in _VOLUME_FLAGS)]


def prepare_output(
    regressors: pd.DataFrame, excluded: np.ndarray | None, demean: bool
) -> tuple[np.ndarray | None, pd.DataFrame]:
    """Sort, fill and demean the selected regressors; turn flagged volumes into a mask.

    Columns come out in sorted order, without repeats. The first row of
    derivatives is undefined in fMRIPrep's file; it takes the second row's
    value so that the regressors are finite. Demeaning uses the kept volumes
    only.
    """
    sample_mask = sample_mask_from(excluded)
    columns = sorted(set(regressors.columns) - set(_flags(regressors)))
    confounds = regressors.loc[:, ~regressors.columns.duplicated()][columns].copy()
    if confounds.size == 0:
        return sample_mask, confounds
    if len(confounds) > 1:
        first = confounds.iloc[0].isna().to_numpy()
        if first.any():
            confounds.iloc[0, first] = confounds.iloc[1, first]
    if demean:
        values = confounds.to_numpy(dtype=np.float64)
        kept = values if sample_mask is None else values[sample_mask]
        with warnings.catch_warnings():
            # An empty sample mask has been warned about already.
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(kept, axis=0) if len(kept) else np.full(values.shape[1], np.nan)
        confounds = pd.DataFrame(values - mean, columns=confounds.columns, index=confounds.index)
    return sample_mask, confounds


def _missing_error(source: str, missing: list[_components.Missing]) -> MissingConfoundsError:
    columns = [column for item in missing for column in item.columns]
    details = "; ".join(item.detail for item in missing)
    components = sorted({item.component for item in missing})
    return MissingConfoundsError(
        f"{source}: the confounds lack what strategy components {components} need ({details}). "
        + (f"Missing columns: {columns}. " if columns else "")
        + "Choose a strategy without these components (or other options for them), or use "
        "the confounds of an fMRIPrep release that writes them (CompCor needs >= 1.4, "
        "ICA-AROMA needs --use-aroma)."
    )


def _load_run(
    run: list[Any], strategy: tuple[str, ...], demean: bool, options: dict[str, Any]
) -> tuple[np.ndarray | None, pd.DataFrame]:
    """Load one run's confounds and sample mask."""
    use_tedana = "tedana" in strategy
    full_aroma = "ica_aroma" in strategy and options["ica_aroma"] == "full" and not use_tedana
    kind = "tedana" if use_tedana else "aroma" if full_aroma else "regular"
    check_image_name(run, kind)
    files = find_confounds_files(run[0], kind)
    source = files.table.url
    missing: list[_components.Missing] = []
    pieces: list[pd.DataFrame] = []

    if use_tedana:
        # tedana's tables carry no motion, no non-steady-state flags, no sidecar:
        # the other components do not apply (warned about by the caller).
        tables = read_tedana_tables(files)
        pieces.append(_components.tedana(tables, options["tedana"]))
        return prepare_output(pd.concat(pieces, axis=1), None, demean)

    table = read_confounds_table(files.table)
    excluded = _components.non_steady_state(table)
    sidecar: dict[str, Any] = {}
    if "compcor" in strategy:
        if files.sidecar is None:
            raise ConfoundsNotFoundError(
                f"{files.image}: CompCor needs the confounds sidecar "
                f"{files.expected_sidecar.url}, which is missing (fMRIPrep writes it from release "
                "1.4 on). Copy it beside "
                f"{source}, or use a strategy without 'compcor'."
            )
        sidecar = read_sidecar(files.sidecar)

    calls = {
        "motion": lambda: _components.motion(table, options["motion"]),
        "high_pass": lambda: _components.high_pass(table),
        "wm_csf": lambda: _components.wm_csf(table, options["wm_csf"]),
        "global_signal": lambda: _components.global_signal(table, options["global_signal"]),
        "compcor": lambda: _components.compcor(
            table, sidecar, options["compcor"], options["n_compcor"]
        ),
        "ica_aroma": lambda: _components.ica_aroma(table, options["ica_aroma"]),
    }
    for component in strategy:
        try:
            if component == "scrub":
                scrubbed = _components.scrub(
                    table,
                    options["scrub"],
                    options["fd_threshold"],
                    options["std_dvars_threshold"],
                )
                if scrubbed is not None:
                    excluded = scrubbed if excluded is None else excluded | scrubbed
            elif component in calls:
                pieces.append(calls[component]())
        except _components.Missing as error:
            missing.append(error)
    if missing:
        raise _missing_error(source, missing)
    regressors = pd.concat(pieces, axis=1) if pieces else table.iloc[:, :0]
    return prepare_output(regressors, excluded, demean)


def load_confounds(
    img_files: str | os.PathLike[str] | Location | Sequence[Any],
    strategy: tuple[ConfoundStrategy, ...] | list[ConfoundStrategy] = (
        "motion",
        "high_pass",
        "wm_csf",
    ),
    motion: ConfoundModel = "full",
    scrub: int = 5,
    fd_threshold: float = 0.5,
    std_dvars_threshold: float = 1.5,
    wm_csf: ConfoundModel = "basic",
    global_signal: ConfoundModel = "basic",
    compcor: CompcorType = "anat_combined",
    n_compcor: str | int = "all",
    ica_aroma: Literal["full", "basic"] = "full",
    tedana: Literal["aggressive", "non-aggressive"] = "aggressive",
    demean: bool = True,
) -> tuple[Any, Any]:
    """Select fMRIPrep's confounds by noise component, for one run or many.

    The confounds TSV (and its JSON sidecar) are found beside each image, as
    fMRIPrep writes them, locally or in object storage. The parameters and
    defaults are those of nilearn 0.14.1's ``load_confounds``, and so are the
    results (see Notes for the few deliberate differences).

    Parameters
    ----------
    img_files : str, path-like, Location, or list of those
        The preprocessed run(s) from an fMRIPrep derivatives folder or URL:
        ``*_desc-preproc_bold.nii.gz`` (or ``.nii``), ``*_bold.dtseries.nii``,
        a ``[hemi-L, hemi-R]`` pair of ``*_bold.func.gii`` files, the
        ``*_desc-smoothAROMAnonaggr_bold`` output for ``ica_aroma="full"``, or
        tedana's ``*_desc-optcom_bold.nii.gz`` for ``"tedana"``. A
        :class:`daskmask._fs.Location` carries storage options with its URL;
        plain URLs take them from the dask config ``daskmask.storage-options``
        or the environment.
    strategy : tuple or list of str, default=("motion", "high_pass", "wm_csf")
        Noise components: "motion", "high_pass" (cosine regressors),
        "wm_csf", "global_signal", "compcor" (needs "high_pass"),
        "ica_aroma", "tedana" (alone: other components are ignored), "scrub".
        Non-steady-state volumes are always left out through the sample mask.
    motion, wm_csf, global_signal : {"basic", "power2", "derivatives", "full"}
        Expansions of the six motion parameters, of the mean CSF and white
        matter signals, and of the global signal: the signals alone, with
        their squares, with their temporal derivatives, or with both and the
        squared derivatives. Defaults: "full", "basic", "basic".
    scrub : int, default=5
        With "scrub": after removing the volumes above a threshold, also
        remove every remaining segment shorter than this many volumes; 0 keeps
        them.
    fd_threshold : float, default=0.5
        Framewise displacement (mm) above which a volume is removed ("scrub").
    std_dvars_threshold : float, default=1.5
        Standardised DVARS above which a volume is removed ("scrub").
    compcor : str, default="anat_combined"
        "anat_combined", "anat_separated" (white matter and CSF masks),
        "temporal", "temporal_anat_combined" or "temporal_anat_separated".
        Needs the JSON sidecar (fMRIPrep >= 1.4).
    n_compcor : "all" or int, default="all"
        Components kept per CompCor kind and mask ("all": those fMRIPrep
        retained, 50 % of the variance).
    ica_aroma : {"full", "basic"}, default="full"
        "full": the image is fMRIPrep's non-aggressively denoised
        ``desc-smoothAROMAnonaggr_bold`` and no AROMA regressor is added;
        "basic": add the ``aroma_motion_XX`` noise components.
    tedana : {"aggressive", "non-aggressive"}, default="aggressive"
        With "tedana": the rejected components of tedana's mixing matrix, or
        the rejected and accepted ones.
    demean : bool, default=True
        Subtract each regressor's mean over the kept volumes.

    Returns
    -------
    confounds : pandas.DataFrame, list of pandas.DataFrame, or None
        One table per run (a list when ``img_files`` is a list), one column
        per regressor, columns in sorted order; None for an empty strategy.
    sample_mask : numpy.ndarray, None, or list of those
        Indices of the volumes to keep (non-steady-state and scrubbed volumes
        left out), or None when no volume is flagged.

    Raises
    ------
    daskmask.exceptions.ConfoundsNotFoundError
        No confounds TSV beside an image, or no JSON sidecar for CompCor.
    daskmask.exceptions.MissingConfoundsError
        The table lacks the columns the strategy needs.
    daskmask.exceptions.UnsupportedFmriprepError
        The file comes from fMRIPrep older than 1.2.
    daskmask.exceptions.ConfoundsError
        An image that is not the fMRIPrep output the strategy needs, several
        matching confounds files, or an unreadable file.
    ValueError
        An unknown strategy component or option.

    See Also
    --------
    load_confounds_strategy : the literature's preset strategies.
    check_confounds_length : check a table against the run's length.

    Notes
    -----
    Differences from nilearn 0.14.1, each a fix:

    - A list of one run returns lists of one (nilearn returns the bare
      table, unlike any other list).
    - Uncompressed ``*_desc-preproc_bold.nii`` images are accepted (nilearn
      refuses them as "unsupported input", though BIDS allows them).
    - Missing columns are always a :class:`MissingConfoundsError` naming them;
      nilearn raises a bare ``KeyError`` when only some of the wm_csf,
      global_signal or CompCor columns are missing, or when scrubbing lacks
      ``framewise_displacement`` / ``std_dvars``.
    - A missing sidecar with any CompCor option is a
      :class:`ConfoundsNotFoundError` naming it (nilearn reports temporal
      CompCor as a missing keyword). The sidecar is found by replacing the
      ``.tsv`` extension only (nilearn replaces every "tsv" in the path).
    - A headerless file is refused whatever its first value (nilearn lets one
      starting with 0 through).
    - With nothing but full ICA-AROMA regressors (or an empty selection), the
      table has one row per volume and no column; nilearn returns a table of
      no rows when the run has no non-steady-state volume, which its own
      ``signal.clean`` refuses as of the wrong length.
    - A component named twice in ``strategy`` is used once (nilearn
      duplicates its columns).

    Like nilearn, the minimum-segment rule of scrubbing looks at the segments
    between motion outliers only; a short segment between the last
    non-steady-state volume and the first outlier is kept when the outlier
    lies at or after volume ``scrub``.

    """
    strategy = _check_strategy(strategy)
    if "motion" in strategy:
        _check_choice(motion, MODELS, "motion")
    if "wm_csf" in strategy:
        _check_choice(wm_csf, MODELS, "wm_csf")
    if "global_signal" in strategy:
        _check_choice(global_signal, MODELS, "global_signal")
    if "compcor" in strategy:
        _check_choice(compcor, COMPCOR_TYPES, "compcor")
        _check_n_compcor(n_compcor)
    if "ica_aroma" in strategy:
        _check_choice(ica_aroma, ICA_AROMA_TYPES, "ica_aroma")
    if "tedana" in strategy:
        _check_choice(tedana, TEDANA_TYPES, "tedana")
        if len(strategy) > 1:
            warn_user(
                "The tedana strategy reads tedana's *_desc-ICA_mixing.tsv and "
                "*_desc-tedana_metrics.tsv only; the other components "
                f"{[item for item in strategy if item != 'tedana']} are not applied.",
                UserWarning,
            )
    options = {
        "motion": motion,
        "scrub": scrub,
        "fd_threshold": fd_threshold,
        "std_dvars_threshold": std_dvars_threshold,
        "wm_csf": wm_csf,
        "global_signal": global_signal,
        "compcor": compcor,
        "n_compcor": n_compcor,
        "ica_aroma": ica_aroma,
        "tedana": tedana,
    }
    runs, single = _runs(img_files)
    confounds_out: list[pd.DataFrame] = []
    masks_out: list[np.ndarray | None] = []
    for run in runs:
        sample_mask, confounds = _load_run(run, strategy, demean, options)
        confounds_out.append(confounds)
        masks_out.append(sample_mask)
    if single:
        return (None if not strategy else confounds_out[0]), masks_out[0]
    return (None if not strategy else confounds_out), masks_out


def check_confounds_length(
    confounds: pd.DataFrame | np.ndarray | None,
    n_volumes: int,
    source: str,
    *,
    sample_mask: np.ndarray | None = None,
) -> None:
    """Check that confounds (and a sample mask) fit a run of ``n_volumes`` volumes.

    ``load_confounds`` never opens the image, so a confounds file copied from
    another run (or a truncated run) goes unnoticed until the regression.
    Call this once the run's length is known.

    Parameters
    ----------
    confounds : pandas.DataFrame, numpy.ndarray or None
        One row per volume; None passes.
    n_volumes : int
        Volumes of the run.
    source : str
        The confounds file or run, named in the error.
    sample_mask : numpy.ndarray, optional
        Indices of kept volumes; each must be a volume of the run.

    Raises
    ------
    daskmask.exceptions.ConfoundsError
        Naming ``source``, both lengths and the fix.

    """
    if confounds is not None:
        rows = int(np.shape(confounds)[0])
        if rows != n_volumes:
            raise ConfoundsError(
                f"{source}: the confounds have {rows} rows but the run has {n_volumes} volumes. "
                "Use the confounds file fMRIPrep wrote for this very run (one row per volume), "
                "or check that the image is complete."
            )
    if sample_mask is not None:
        indices = np.asarray(sample_mask)
        if indices.dtype == bool:
            if indices.size != n_volumes:
                raise ConfoundsError(
                    f"{source}: the boolean sample mask has {indices.size} entries but the run "
                    f"has {n_volumes} volumes. Build it from this run's confounds."
                )
        elif indices.size and (indices.min() < -n_volumes or indices.max() >= n_volumes):
            raise ConfoundsError(
                f"{source}: the sample mask keeps volumes up to {int(indices.max())} but the run "
                f"has {n_volumes} volumes. Build it from this run's confounds."
            )
