"""fMRIPrep confounds: daskmask against nilearn 0.14.1 on real and generated files."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nilearn.interfaces import fmriprep as nilearn_fmriprep
from nilearn.interfaces.fmriprep.load_confounds_scrub import optimize_scrub

import daskmask.interfaces.fmriprep as fmriprep
from daskmask._fs import locate
from daskmask.datasets._fmriprep_confounds import (
    make_fmriprep_confounds,
    write_fmriprep_confounds,
)
from daskmask.exceptions import (
    ConfoundsError,
    ConfoundsNotFoundError,
    MissingConfoundsError,
    UnsupportedFmriprepError,
)
from daskmask.interfaces.fmriprep._scrub import drop_short_segments

NILEARN_DATA = Path(nilearn_fmriprep.__file__).parent / "data"
RUN = "sub-01_task-rest"
BOLD = f"{RUN}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
AROMA = f"{RUN}_space-MNI152NLin6Asym_desc-smoothAROMAnonaggr_bold.nii.gz"

#: The confounds shipped with nilearn: (TSV, JSON, layout its name says).
SHIPPED = {
    "v21": (
        "test-v21_desc-confounds_timeseries",
        "test-v21_desc-confounds_timeseries",
        "timeseries",
    ),
    "v14": ("test_desc-confounds_regressors", "test_desc-confounds_regressors", "regressors"),
    "v14-no-nss": (
        "no_nonsteady_desc-confounds_regressors",
        "test_desc-confounds_regressors",
        "regressors",
    ),
}
#: Generated runs: (layout, n_volumes, seed, n_non_steady).
GENERATED = {
    "gen-timeseries": ("timeseries", 150, 1, 3),
    "gen-regressors": ("regressors", 90, 2, 1),
    "gen-no-nss": ("timeseries", 60, 3, 0),
}


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def assert_same(ours, theirs) -> None:
    """Same confounds (columns, order, values) and same sample mask."""
    (confounds, sample_mask), (expected, expected_mask) = ours, theirs
    if expected is None:
        assert confounds is None
    else:
        assert list(confounds.columns) == list(expected.columns)
        assert confounds.shape == expected.shape
        pd.testing.assert_frame_equal(
            confounds, expected, check_dtype=False, check_exact=False, rtol=1e-10, atol=1e-10
        )
    if expected_mask is None:
        assert sample_mask is None
    else:
        np.testing.assert_array_equal(sample_mask, expected_mask)


def _shipped_run(folder: Path, key: str) -> Path:
    tsv, sidecar, layout = SHIPPED[key]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(NILEARN_DATA / f"{tsv}.tsv", folder / f"{RUN}_desc-confounds_{layout}.tsv")
    shutil.copy(NILEARN_DATA / f"{sidecar}.json", folder / f"{RUN}_desc-confounds_{layout}.json")
    return folder


def _generated_run(folder: Path, key: str) -> Path:
    layout, n_volumes, seed, n_non_steady = GENERATED[key]
    table, sidecar = make_fmriprep_confounds(
        n_volumes, seed=seed, n_non_steady=n_non_steady, layout=layout, n_aroma=4
    )
    write_fmriprep_confounds(folder / BOLD, table, sidecar, layout)
    return folder


@pytest.fixture(scope="module", params=[*SHIPPED, *GENERATED])
def run_folder(request, tmp_path_factory) -> Path:
    """One fMRIPrep func folder: nilearn's shipped confounds or generated ones."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param in SHIPPED:
        return _shipped_run(folder, request.param)
    return _generated_run(folder, request.param)


PRESET_CASES = [
    ("simple", {}),
    ("simple", {"motion": "basic", "wm_csf": "full", "global_signal": "full"}),
    ("simple", {"demean": False}),
    ("scrubbing", {}),
    ("scrubbing", {"fd_threshold": 0.2, "std_dvars_threshold": 1.2, "scrub": 0}),
    ("scrubbing", {"global_signal": "basic", "demean": False}),
    ("compcor", {}),
    ("compcor", {"compcor": "temporal_anat_separated", "n_compcor": 2}),
    ("compcor", {"compcor": "anat_separated", "global_signal": "derivatives"}),
    ("ica_aroma", {}),
    ("ica_aroma", {"global_signal": "power2", "demean": False}),
]


@pytest.mark.parametrize(("preset", "options"), PRESET_CASES)
def test_presets_equal_nilearn(run_folder, preset, options):
    image = str(run_folder / (AROMA if preset == "ica_aroma" else BOLD))
    # nilearn's v21 file moves so much that the scrubbing preset flags every volume (warned).
    ours = _quiet(fmriprep.load_confounds_strategy, image, preset, **options)
    assert_same(ours, _quiet(nilearn_fmriprep.load_confounds_strategy, image, preset, **options))


@pytest.mark.parametrize(
    "compcor",
    [
        "anat_combined",
        "anat_separated",
        "temporal",
        "temporal_anat_combined",
        "temporal_anat_separated",
    ],
)
@pytest.mark.parametrize("n_compcor", ["all", 1, 3])
def test_compcor_equals_nilearn(run_folder, compcor, n_compcor):
    image = str(run_folder / BOLD)
    options = {"strategy": ("high_pass", "compcor"), "compcor": compcor, "n_compcor": n_compcor}
    ours = fmriprep.load_confounds(image, **options)
    assert_same(ours, nilearn_fmriprep.load_confounds(image, **options))
    columns = [column for column in ours[0].columns if "comp_cor" in column]
    assert columns, "CompCor selected nothing"


@pytest.mark.parametrize("model", ["basic", "power2", "derivatives", "full"])
def test_expansions_equal_nilearn(run_folder, model):
    image = str(run_folder / BOLD)
    options = {
        "strategy": ("motion", "wm_csf", "global_signal", "high_pass"),
        "motion": model,
        "wm_csf": model,
        "global_signal": model,
    }
    ours = fmriprep.load_confounds(image, **options)
    assert_same(ours, nilearn_fmriprep.load_confounds(image, **options))
    expected_columns = {"basic": 9, "power2": 18, "derivatives": 18, "full": 36}[model]
    assert sum("cosine" not in column for column in ours[0].columns) == expected_columns


@pytest.mark.parametrize(
    ("image_name", "strategy"),
    [
        (BOLD, ()),
        (BOLD, ("non_steady_state", "high_pass")),
        (AROMA, ("ica_aroma",)),
        (AROMA, ("high_pass", "ica_aroma", "non_steady_state")),
    ],
)
def test_aroma_and_edge_strategies_equal_nilearn(run_folder, image_name, strategy):
    image = str(run_folder / image_name)
    ours = _quiet(fmriprep.load_confounds, image, strategy)
    theirs = _quiet(nilearn_fmriprep.load_confounds, image, strategy)
    if theirs[0] is not None and theirs[0].shape == (0, 0):
        # nilearn's bug: full AROMA on a run without non-steady-state volumes gives
        # a table of 0 rows, which its own signal.clean refuses; daskmask keeps one
        # row per volume and no column.
        assert ours[0].shape == (len(ours[0].index), 0) and len(ours[0].index) > 0
        assert ours[1] is None and theirs[1] is None
        return
    assert_same(ours, theirs)


def test_aroma_basic_equals_nilearn(tmp_path):
    for key in ("v14", "gen-regressors"):
        folder = tmp_path / key
        (_shipped_run if key in SHIPPED else _generated_run)(folder, key)
        image = str(folder / BOLD)
        options = {"strategy": ("ica_aroma", "motion"), "ica_aroma": "basic"}
        ours = fmriprep.load_confounds(image, **options)
        assert_same(ours, nilearn_fmriprep.load_confounds(image, **options))
        assert any(column.startswith("aroma_motion") for column in ours[0].columns)


_GENERATED_SCRUB = {}


def _scrub_folder(tmp_path_factory) -> Path:
    if "folder" not in _GENERATED_SCRUB:
        folder = tmp_path_factory.mktemp("scrub")
        table, sidecar = make_fmriprep_confounds(80, seed=11, n_non_steady=2, n_motion_spikes=6)
        write_fmriprep_confounds(folder / BOLD, table, sidecar)
        _GENERATED_SCRUB["folder"] = folder
    return _GENERATED_SCRUB["folder"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fd_threshold=st.floats(0.0, 1.5, allow_nan=False),
    std_dvars_threshold=st.floats(0.5, 3.5, allow_nan=False),
    scrub=st.integers(0, 12),
    demean=st.booleans(),
)
def test_scrub_thresholds_equal_nilearn(
    tmp_path_factory, fd_threshold, std_dvars_threshold, scrub, demean
):
    image = str(_scrub_folder(tmp_path_factory) / BOLD)
    options = {
        "strategy": ("motion", "scrub", "high_pass"),
        "fd_threshold": fd_threshold,
        "std_dvars_threshold": std_dvars_threshold,
        "scrub": scrub,
        "demean": demean,
    }
    ours = _quiet(fmriprep.load_confounds, image, **options)
    assert_same(ours, _quiet(nilearn_fmriprep.load_confounds, image, **options))


@given(
    flags=st.lists(st.booleans(), min_size=1, max_size=60),
    min_length=st.integers(0, 8),
)
def test_short_segments_equal_nilearn_rule(flags, min_length):
    flagged = np.array(flags)
    ours = np.flatnonzero(drop_short_segments(flagged, min_length))
    if min_length > 0 and flagged.any():
        expected = optimize_scrub(np.flatnonzero(flagged), flagged.size, min_length)
    else:
        expected = np.flatnonzero(flagged)
    np.testing.assert_array_equal(ours, expected)
    # Every kept segment is at least min_length long.
    kept = np.concatenate([[0], (~drop_short_segments(flagged, min_length)).astype(int), [0]])
    edges = np.diff(kept)
    lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    if flagged.any():
        assert (lengths >= min_length).all()


def test_scrubbing_flags_the_thresholded_volumes(tmp_path):
    table, sidecar = make_fmriprep_confounds(100, seed=4, n_non_steady=2)
    write_fmriprep_confounds(tmp_path / BOLD, table, sidecar)
    confounds, sample_mask = fmriprep.load_confounds(
        str(tmp_path / BOLD),
        ("motion", "scrub"),
        scrub=0,
        fd_threshold=0.5,
        std_dvars_threshold=1.5,
    )
    removed = set(range(100)) - set(sample_mask.tolist())
    outliers = set(np.flatnonzero((table.framewise_displacement > 0.5) | (table.std_dvars > 1.5)))
    # fMRIPrep's own motion_outlierXX columns use the same thresholds.
    fmriprep_outliers = {
        int(np.flatnonzero(table[column])[0])
        for column in table
        if column.startswith("motion_outlier")
    }
    assert outliers == fmriprep_outliers and outliers
    assert removed == outliers | {0, 1}
    np.testing.assert_allclose(confounds.iloc[sample_mask].mean(), 0, atol=1e-9)


IMAGE_NAMES = {
    "native": f"{RUN}_desc-preproc_bold.nii.gz",
    "res": f"{RUN}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz",
    "part": f"{RUN}_part-mag_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
    "cifti": f"{RUN}_space-fsLR_den-91k_bold.dtseries.nii",
}


@pytest.mark.parametrize("kind", [*IMAGE_NAMES, "gifti"])
def test_image_names_equal_nilearn(tmp_path, kind):
    folder = _generated_run(tmp_path, "gen-regressors")
    if kind == "gifti":
        image = [
            str(folder / f"{RUN}_hemi-{side}_space-fsaverage5_bold.func.gii") for side in "LR"
        ]
    else:
        image = str(folder / IMAGE_NAMES[kind])
    ours = fmriprep.load_confounds_strategy(image, "scrubbing")
    assert_same(ours, nilearn_fmriprep.load_confounds_strategy(image, "scrubbing"))
    # A list of runs gives lists, run by run.
    confounds, masks = fmriprep.load_confounds_strategy([image, image], "scrubbing")
    assert isinstance(confounds, list) and len(confounds) == 2 and len(masks) == 2
    assert_same((confounds[1], masks[1]), ours)


def test_list_of_runs_in_several_folders(tmp_path):
    folders = [_generated_run(tmp_path / key, key) for key in GENERATED]
    images = [str(folder / BOLD) for folder in folders]
    ours = fmriprep.load_confounds_strategy(images, "compcor", n_compcor=2)
    theirs = nilearn_fmriprep.load_confounds_strategy(images, "compcor", n_compcor=2)
    assert len(ours[0]) == len(theirs[0]) == 3
    for index in range(3):
        assert_same((ours[0][index], ours[1][index]), (theirs[0][index], theirs[1][index]))


def test_list_of_one_run_gives_lists(tmp_path):
    # nilearn returns a bare table for a list of one; daskmask keeps lists for lists.
    image = str(_generated_run(tmp_path, "gen-timeseries") / BOLD)
    confounds, masks = fmriprep.load_confounds([image])
    single = fmriprep.load_confounds(image)
    assert isinstance(confounds, list) and isinstance(masks, list)
    assert_same((confounds[0], masks[0]), single)
    assert_same(single, nilearn_fmriprep.load_confounds([image]))


def test_uncompressed_nifti_is_accepted(tmp_path):
    folder = _generated_run(tmp_path, "gen-timeseries")
    gz = fmriprep.load_confounds_strategy(str(folder / BOLD), "simple")
    plain = fmriprep.load_confounds_strategy(str(folder / BOLD[: -len(".gz")]), "simple")
    assert_same(plain, gz)


def test_tedana_equals_nilearn(tmp_path):
    shutil.copy(NILEARN_DATA / "test_desc-ICA_mixing.tsv", tmp_path / f"{RUN}_desc-ICA_mixing.tsv")
    shutil.copy(
        NILEARN_DATA / "test_desc-tedana_metrics.tsv", tmp_path / f"{RUN}_desc-tedana_metrics.tsv"
    )
    image = str(tmp_path / f"{RUN}_space-MNI152NLin2009cAsym_desc-optcom_bold.nii.gz")
    for mode in ("aggressive", "non-aggressive"):
        for strategy in (("tedana",), ("tedana", "motion")):
            ours = _quiet(fmriprep.load_confounds, image, strategy, tedana=mode)
            theirs = _quiet(nilearn_fmriprep.load_confounds, image, strategy, tedana=mode)
            assert_same(ours, theirs)
            assert all(column.startswith(("rejected_", "accepted_")) for column in ours[0])
    with pytest.warns(UserWarning, match="tedana"):
        fmriprep.load_confounds(image, ("tedana", "motion"))


def test_signatures_match_nilearn():
    import inspect

    for name in ("load_confounds", "load_confounds_strategy"):
        ours = inspect.signature(getattr(fmriprep, name)).parameters
        theirs = inspect.signature(getattr(nilearn_fmriprep, name)).parameters
        assert list(ours) == list(theirs)
        assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda image: fmriprep.load_confounds(image, "motion"), "tuple or list"),
        (lambda image: fmriprep.load_confounds(image, ("motion", "typo")), "typo"),
        (lambda image: fmriprep.load_confounds(image, ("compcor",)), "high_pass"),
        (lambda image: fmriprep.load_confounds(image, ("motion",), motion="cubic"), "cubic"),
        (
            lambda image: fmriprep.load_confounds(image, ("high_pass", "compcor"), compcor="x"),
            "compcor",
        ),
        (
            lambda image: fmriprep.load_confounds(image, ("high_pass", "compcor"), n_compcor="5"),
            "n_compcor",
        ),
        (lambda image: fmriprep.load_confounds(image, ("ica_aroma",), ica_aroma="x"), "ica_aroma"),
        (lambda image: fmriprep.load_confounds_strategy(image, "fancy"), "denoise_strategy"),
    ],
)
def test_bad_options_raise_value_error(tmp_path, call, match):
    image = str(_generated_run(tmp_path, "gen-no-nss") / BOLD)
    with pytest.raises(ValueError, match=match):
        call(image)


def test_preset_warns_about_unused_options(tmp_path):
    image = str(_generated_run(tmp_path, "gen-no-nss") / BOLD)
    with pytest.warns(UserWarning, match="n_compcor"):
        ours = fmriprep.load_confounds_strategy(image, "simple", n_compcor=3)
    assert_same(
        ours, _quiet(nilearn_fmriprep.load_confounds_strategy, image, "simple", n_compcor=3)
    )


def test_empty_strategy_and_all_scrubbed_warn(tmp_path):
    image = str(_generated_run(tmp_path, "gen-timeseries") / BOLD)
    with pytest.warns(UserWarning, match="empty"):
        confounds, mask = fmriprep.load_confounds(image, ())
    assert confounds is None and mask.tolist() == list(range(3, 150))
    with pytest.warns(RuntimeWarning, match="All volumes"):
        _, mask = fmriprep.load_confounds(image, ("scrub",), fd_threshold=-1.0)
    assert mask.size == 0


# -- typed errors --------------------------------------------------------------


def test_missing_tsv(tmp_path):
    image = tmp_path / BOLD
    with pytest.raises(ConfoundsNotFoundError, match="desc-confounds_timeseries.tsv") as info:
        fmriprep.load_confounds(str(image))
    assert str(image) in str(info.value) and "beside" in str(info.value)


def test_missing_sidecar_for_compcor(tmp_path):
    folder = _generated_run(tmp_path, "gen-timeseries")
    sidecar = folder / f"{RUN}_desc-confounds_timeseries.json"
    sidecar.unlink()
    image = str(folder / BOLD)
    # Strategies without CompCor do not need it (fMRIPrep < 1.4 wrote none).
    assert_same(
        fmriprep.load_confounds_strategy(image, "simple"),
        nilearn_fmriprep.load_confounds_strategy(image, "simple"),
    )
    for compcor in ("anat_combined", "temporal"):
        with pytest.raises(ConfoundsNotFoundError, match=str(sidecar)):
            fmriprep.load_confounds(image, ("high_pass", "compcor"), compcor=compcor)


@pytest.mark.parametrize(
    ("dropped", "strategy", "options"),
    [
        (["trans_x_power2"], ("motion",), {}),
        (["white_matter"], ("wm_csf",), {}),  # nilearn: a bare KeyError
        (["global_signal_derivative1"], ("global_signal",), {"global_signal": "full"}),
        (["framewise_displacement"], ("scrub",), {}),  # nilearn: a bare KeyError
        (["a_comp_cor_01"], ("high_pass", "compcor"), {}),  # nilearn: a bare KeyError
        ("aroma_motion", ("ica_aroma",), {"ica_aroma": "basic"}),
    ],
)
def test_missing_columns(tmp_path, dropped, strategy, options):
    table, sidecar = make_fmriprep_confounds(40, seed=7, n_aroma=3)
    if isinstance(dropped, str):  # every column of that family
        dropped = [column for column in table if column.startswith(dropped)]
    tsv, _ = write_fmriprep_confounds(tmp_path / BOLD, table.drop(columns=dropped), sidecar)
    with pytest.raises(MissingConfoundsError) as info:
        fmriprep.load_confounds(str(tmp_path / BOLD), strategy, **options)
    message = str(info.value)
    assert tsv in message and strategy[-1] in message
    if "ica_aroma" not in strategy:  # the columns are named (nilearn names only the component)
        assert dropped[0] in message


def test_missing_columns_of_several_components_in_one_error(tmp_path):
    table, sidecar = make_fmriprep_confounds(40, seed=7)
    write_fmriprep_confounds(tmp_path / BOLD, table.drop(columns=["rot_z", "csf"]), sidecar)
    with pytest.raises(MissingConfoundsError, match=r"rot_z.*csf|csf.*rot_z"):
        fmriprep.load_confounds_strategy(str(tmp_path / BOLD), "simple")


def test_camel_case_header_is_too_old(tmp_path):
    old = pd.DataFrame(
        {"CSF": [1.0, 2.0], "WhiteMatter": [1.0, 2.0], "GlobalSignal": [1.0, 2.0], "X": [0.0, 0.1]}
    )
    path = tmp_path / f"{RUN}_desc-confounds_regressors.tsv"
    old.to_csv(path, sep="\t", index=False)
    with pytest.raises(UnsupportedFmriprepError, match="1.2") as info:
        fmriprep.load_confounds(str(tmp_path / BOLD))
    assert str(path) in str(info.value) and "WhiteMatter" in str(info.value)
    with pytest.raises(ValueError):  # nilearn refuses it too
        nilearn_fmriprep.load_confounds(str(tmp_path / BOLD))


@pytest.mark.parametrize("first_value", [0.0, 1.5])
def test_headerless_file_is_too_old(tmp_path, first_value):
    path = tmp_path / f"{RUN}_desc-confounds_regressors.tsv"
    rows = np.arange(12, dtype=float).reshape(4, 3) + first_value
    path.write_text("\n".join("\t".join(str(value) for value in row) for row in rows) + "\n")
    with pytest.raises(UnsupportedFmriprepError, match="no header") as info:
        fmriprep.load_confounds(str(tmp_path / BOLD))
    assert str(path) in str(info.value)


def test_both_layouts_beside_one_image(tmp_path):
    folder = _generated_run(tmp_path, "gen-timeseries")
    shutil.copy(
        folder / f"{RUN}_desc-confounds_timeseries.tsv",
        folder / f"{RUN}_desc-confounds_regressors.tsv",
    )
    with pytest.raises(ConfoundsError, match="more than one"):
        fmriprep.load_confounds(str(folder / BOLD))


def test_confounds_of_another_run_are_not_taken(tmp_path):
    _generated_run(tmp_path, "gen-timeseries")
    with pytest.raises(ConfoundsNotFoundError):
        fmriprep.load_confounds(str(tmp_path / BOLD.replace("sub-01", "sub-02")))


@pytest.mark.parametrize(
    ("name", "strategy", "match"),
    [
        ("sub-01_task-rest_bold.nii.gz", ("motion",), "not an fMRIPrep"),
        (BOLD, ("ica_aroma",), "smoothAROMAnonaggr"),
        (AROMA, ("motion",), "not an fMRIPrep"),
        (BOLD, ("tedana",), "optcom"),
    ],
)
def test_wrong_image_for_strategy(tmp_path, name, strategy, match):
    _generated_run(tmp_path, "gen-timeseries")
    with pytest.raises(ConfoundsError, match=match) as info:
        fmriprep.load_confounds(str(tmp_path / name), strategy)
    assert name in str(info.value)
    with pytest.raises(ValueError):  # nilearn refuses these names too
        nilearn_fmriprep.load_confounds(str(tmp_path / name), strategy)


def test_corrupt_files(tmp_path):
    folder = _generated_run(tmp_path, "gen-timeseries")
    (folder / f"{RUN}_desc-confounds_timeseries.json").write_text("{not json")
    with pytest.raises(ConfoundsError, match="not valid JSON"):
        fmriprep.load_confounds_strategy(str(folder / BOLD), "compcor")
    (folder / f"{RUN}_desc-confounds_timeseries.tsv").write_bytes(b"")
    with pytest.raises(ConfoundsError, match="empty"):
        fmriprep.load_confounds(str(folder / BOLD))


def test_check_confounds_length(tmp_path):
    image = str(_generated_run(tmp_path, "gen-timeseries") / BOLD)
    confounds, sample_mask = fmriprep.load_confounds_strategy(image, "scrubbing")
    fmriprep.check_confounds_length(confounds, 150, image, sample_mask=sample_mask)
    fmriprep.check_confounds_length(None, 150, image)
    with pytest.raises(ConfoundsError, match=r"150 rows but the run has 140 volumes") as info:
        fmriprep.check_confounds_length(confounds, 140, image)
    assert image in str(info.value)
    with pytest.raises(ConfoundsError, match="sample mask"):
        fmriprep.check_confounds_length(None, 100, image, sample_mask=sample_mask)
    with pytest.raises(ConfoundsError, match="boolean sample mask"):
        fmriprep.check_confounds_length(None, 100, image, sample_mask=np.ones(150, bool))


# -- the generator ---------------------------------------------------------------


@pytest.mark.parametrize("layout", ["timeseries", "regressors"])
def test_generator_is_deterministic_and_fmriprep_like(tmp_path, layout):
    table, sidecar = make_fmriprep_confounds(64, seed=3, layout=layout, n_compcor={"a": 2, "c": 3})
    again, sidecar_again = make_fmriprep_confounds(
        64, seed=3, layout=layout, n_compcor={"a": 2, "c": 3}
    )
    pd.testing.assert_frame_equal(table, again)
    assert sidecar == sidecar_again
    other, _ = make_fmriprep_confounds(64, seed=4, layout=layout, n_compcor={"a": 2, "c": 3})
    assert not np.allclose(table["trans_x"], other["trans_x"])
    # The first row of every derivative is n/a, as fMRIPrep writes it.
    derivatives = [column for column in table if "derivative1" in column]
    assert len(derivatives) == 3 * 6 if layout == "timeseries" else len(derivatives) == 2 * 9
    assert (
        table[derivatives].iloc[0].isna().all() and table[derivatives].iloc[1:].notna().all().all()
    )
    assert np.isnan(table["framewise_displacement"][0])
    # The sidecar names every retained component of the table and nothing else.
    retained = sorted(key for key, entry in sidecar.items() if entry.get("Retained"))
    assert retained == sorted(column for column in table if "comp_cor" in column)
    masks = {entry.get("Mask") for key, entry in sidecar.items() if key.startswith("a_comp_cor")}
    assert masks == ({"combined"} if layout == "timeseries" else {"combined", "CSF"})
    # Written with fMRIPrep's names and n/a, read back identical.
    tsv, json_path = write_fmriprep_confounds(tmp_path / BOLD, table, sidecar, layout)
    assert Path(tsv).name == f"{RUN}_desc-confounds_{layout}.tsv"
    assert Path(tsv).read_text().split("\n")[1].count("n/a") > 10
    pd.testing.assert_frame_equal(pd.read_csv(tsv, sep="\t"), table, check_exact=False, rtol=1e-12)
    assert json.loads(Path(json_path).read_text()) == sidecar


@pytest.mark.parametrize("n_volumes", [3, 5, 6, 31])
def test_generator_makes_short_runs_with_at_most_rank_components(n_volumes):
    table, sidecar = make_fmriprep_confounds(n_volumes, seed=1, n_non_steady=1)
    assert len(table) == n_volumes
    compcor = [name for name in table.columns if "comp_cor" in name]
    assert compcor, "short runs still get CompCor components"
    for prefix in ("a_", "w_", "c_", "t_"):
        retained = [name for name in compcor if name.startswith(prefix)]
        assert len(retained) <= n_volumes - 1
    # every component the sidecar says was retained is a column of the table
    assert {name for name, entry in sidecar.items() if entry.get("Retained")} <= set(table.columns)


def test_generator_writes_beside_a_stem(tmp_path):
    table, sidecar = make_fmriprep_confounds(10, seed=0)
    tsv, _ = write_fmriprep_confounds(
        tmp_path / "func" / "sub-02_ses-1_task-x_run-2", table, sidecar
    )
    assert tsv == str(
        tmp_path / "func" / "sub-02_ses-1_task-x_run-2_desc-confounds_timeseries.tsv"
    )
    with pytest.raises(ValueError, match="layout"):
        make_fmriprep_confounds(10, layout="v1")


# -- object storage ------------------------------------------------------------------


def test_s3_equals_local(s3_server, s3_bucket, tmp_path):
    table, sidecar = make_fmriprep_confounds(70, seed=9, n_non_steady=2)
    local = tmp_path / BOLD
    write_fmriprep_confounds(local, table, sidecar)
    prefix = f"s3://{s3_bucket}/derivatives/sub-01/func"
    write_fmriprep_confounds(f"{prefix}/{BOLD}", table, sidecar)
    for preset in ("simple", "scrubbing", "compcor"):
        assert_same(
            fmriprep.load_confounds_strategy(f"{prefix}/{BOLD}", preset),
            fmriprep.load_confounds_strategy(str(local), preset),
        )
    # A Location carries its own storage options.
    location = locate(f"{prefix}/{BOLD}", s3_server.storage_options)
    assert_same(fmriprep.load_confounds(location), fmriprep.load_confounds(str(local)))
    confounds, masks = fmriprep.load_confounds([f"{prefix}/{BOLD}", str(local)])
    assert_same((confounds[0], masks[0]), (confounds[1], masks[1]))


def test_s3_missing_files(s3_server, s3_bucket):
    table, sidecar = make_fmriprep_confounds(30, seed=9)
    prefix = f"s3://{s3_bucket}/sub-01/func"
    with pytest.raises(ConfoundsNotFoundError, match=f"{prefix}/{BOLD}"):
        fmriprep.load_confounds(f"{prefix}/{BOLD}")
    with pytest.raises(ConfoundsNotFoundError):
        fmriprep.load_confounds(f"s3://{s3_bucket}-absent/{BOLD}")
    _, json_url = write_fmriprep_confounds(f"{prefix}/{BOLD}", table, sidecar)
    s3_server.filesystem().rm(json_url)
    with pytest.raises(ConfoundsNotFoundError, match=json_url):
        fmriprep.load_confounds_strategy(f"{prefix}/{BOLD}", "compcor")
    # Files written after a failed look are seen (no stale listing).
    write_fmriprep_confounds(f"{prefix}/{BOLD}", table, sidecar)
    confounds, _ = fmriprep.load_confounds_strategy(f"{prefix}/{BOLD}", "compcor")
    assert confounds.shape[0] == 30
