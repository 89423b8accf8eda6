"""Finding the runs of an fMRIPrep derivatives dataset, locally and in S3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskmask.batch._dataset import BidsExtraMissingError, BidsRun, find_runs
from daskmask.datasets import make_fmriprep_derivatives
from daskmask.exceptions import DatasetError, StorageError

SMALL = {"shape": (6, 6, 6), "n_volumes": 50}
MNI = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Two subjects, two sessions, two tasks, runs 1 and 2, two spaces: 32 runs."""
    root = tmp_path_factory.mktemp("fmriprep")
    bold = make_fmriprep_derivatives(
        root,
        subjects=["01", "02"],
        sessions=["1", "2"],
        tasks=["nback", "rest"],
        runs=[1, 2],
        spaces=[MNI, "T1w"],
        t_r=1.5,
        **SMALL,
    )
    return root, bold


def _key(run: BidsRun) -> tuple[str, ...]:
    entities = run.entities
    return tuple(entities.get(name, "") for name in ("sub", "ses", "task", "run", "space"))


def test_finds_every_generated_run_with_its_files(dataset):
    root, bold = dataset
    runs = find_runs(root)
    assert [run.bold for run in runs] == bold
    for run in runs:
        stem = run.bold.split("_space-")[0]
        space = run.entities["space"]
        assert run.mask == f"{stem}_space-{space}_desc-brain_mask.nii.gz"
        assert run.sidecar == run.bold.replace(".nii.gz", ".json")
        assert run.confounds == f"{stem}_desc-confounds_timeseries.tsv"
        assert run.confounds_sidecar == f"{stem}_desc-confounds_timeseries.json"
        assert run.t_r == 1.5
        assert run.relative_path == str(Path(run.bold).relative_to(root))
        assert set(run.entities) == {"sub", "ses", "task", "run", "space"}
        assert run.output_path().startswith(str(Path(run.relative_path).parent))
        assert run.stem in run.bold
    assert runs[0].entities == {"sub": "01", "ses": "1", "task": "nback", "run": "1", "space": MNI}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"participant_label": "02"}, lambda key: key[0] == "02"),
        ({"participant_label": ["sub-01", "02"]}, lambda key: True),
        ({"session": "ses-2"}, lambda key: key[1] == "2"),
        ({"task": ["rest"]}, lambda key: key[2] == "rest"),
        ({"run": 2}, lambda key: key[3] == "2"),
        ({"run": ["01"]}, lambda key: key[3] == "1"),
        ({"space": "T1w"}, lambda key: key[4] == "T1w"),
        (
            {"participant_label": "01", "session": "1", "task": "nback", "run": 1, "space": MNI},
            lambda key: key == ("01", "1", "nback", "1", MNI),
        ),
    ],
)
def test_each_filter_keeps_what_it_names(dataset, filters, expected):
    root, _ = dataset
    everything = find_runs(root)
    kept = find_runs(root, **filters)
    assert kept == [run for run in everything if expected(_key(run))]
    assert kept


@pytest.mark.parametrize(
    ("filters", "words"),
    [
        ({"participant_label": "03"}, r"participant_label='03' has no sub-\* folder.*01, 02"),
        ({"session": ["1", "3"]}, r"session='3' matches no preprocessed run.*sessions.*1, 2"),
        ({"task": "motor"}, r"task='motor'.*tasks present are: nback, rest"),
        ({"run": 3}, r"run='3'.*runs present are: 1, 2"),
        ({"space": "fsLR"}, rf"space='fsLR'.*spaces present are: {MNI}, T1w"),
    ],
)
def test_a_label_that_does_not_exist_is_named_with_those_that_do(dataset, filters, words):
    root, _ = dataset
    with pytest.raises(DatasetError, match=words):
        find_runs(root, **filters)


def test_filters_that_exclude_each_other_list_the_runs(tmp_path):
    make_fmriprep_derivatives(tmp_path, subjects=["01"], sessions=["1"], tasks=["rest"], **SMALL)
    make_fmriprep_derivatives(tmp_path, subjects=["01"], sessions=["2"], tasks=["motor"], **SMALL)
    with pytest.raises(
        DatasetError,
        match=r"no preprocessed run has all of session='1', task='motor' together.*"
        r"sub-01_ses-1_task-rest_run-1_space-MNI152NLin2009cAsym, sub-01_ses-2_task-motor",
    ):
        find_runs(tmp_path, session="1", task="motor")
    # Labels are looked up among the runs of the participants asked for.
    make_fmriprep_derivatives(tmp_path, subjects=["02"], tasks=["nback"], **SMALL)
    with pytest.raises(
        DatasetError, match=r"present \(in the runs of participant_label='02'\) are: nback\."
    ):
        find_runs(tmp_path, participant_label="02", task="rest")


def test_a_run_without_mask_or_confounds_is_kept_with_none(tmp_path):
    bold = make_fmriprep_derivatives(tmp_path, subjects=["01", "02"], **SMALL)
    Path(bold[0].replace("desc-preproc_bold", "desc-brain_mask")).unlink()
    stem = bold[1].split("_space-")[0]
    Path(f"{stem}_desc-confounds_timeseries.tsv").unlink()
    Path(f"{stem}_desc-confounds_timeseries.json").unlink()
    Path(bold[1].replace(".nii.gz", ".json")).unlink()
    first, second = find_runs(tmp_path)
    assert first.mask is None and first.confounds is not None and first.t_r == 2.0
    assert second.mask is not None
    assert (second.confounds, second.confounds_sidecar, second.sidecar, second.t_r) == (
        None,
        None,
        None,
        None,
    )


def test_an_unreadable_sidecar_warns_and_leaves_t_r_unset(tmp_path):
    bold = make_fmriprep_derivatives(tmp_path, subjects=["01", "02"], **SMALL)
    Path(bold[0].replace(".nii.gz", ".json")).write_text("{not json")
    Path(bold[1].replace(".nii.gz", ".json")).write_text(json.dumps({"TaskName": "rest"}))
    with pytest.warns(UserWarning, match=r"sub-01.*RepetitionTime"):
        first, second = find_runs(tmp_path)
    assert first.t_r is None and first.sidecar is not None
    assert second.t_r is None


def test_older_regressors_layout_and_uncompressed_images(tmp_path):
    bold = make_fmriprep_derivatives(
        tmp_path, subjects=["01"], layout="regressors", compress=False, runs=None, **SMALL
    )
    (run,) = find_runs(tmp_path)
    assert run.bold == bold[0] and run.bold.endswith("_bold.nii")
    assert run.confounds.endswith("sub-01_task-rest_desc-confounds_regressors.tsv")
    assert run.mask.endswith("_desc-brain_mask.nii")
    assert "run" not in run.entities


def test_runs_are_ordered_as_numbers(tmp_path):
    make_fmriprep_derivatives(tmp_path, subjects=["01"], runs=[10, 9, 2], noise=False, **SMALL)
    assert [run.entities["run"] for run in find_runs(tmp_path)] == ["2", "9", "10"]


def test_not_a_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        find_runs(tmp_path / "missing")
    (tmp_path / "file.nii.gz").write_bytes(b"x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        find_runs(tmp_path / "file.nii.gz")


def test_not_a_bids_dataset_points_at_fmriprep_output(tmp_path):
    with pytest.raises(DatasetError, match="no dataset_description.json"):
        find_runs(tmp_path)
    make_fmriprep_derivatives(tmp_path / "derivatives" / "fmriprep", subjects=["01"], **SMALL)
    with pytest.raises(DatasetError, match=r"derivatives/fmriprep: pass that instead"):
        find_runs(tmp_path)


def test_a_raw_dataset_is_not_derivatives(tmp_path):
    (tmp_path / "dataset_description.json").write_text(
        json.dumps({"Name": "raw", "BIDSVersion": "1.8.0", "DatasetType": "raw"})
    )
    (tmp_path / "derivatives").mkdir()
    with pytest.raises(DatasetError, match=r"raw BIDS dataset \(DatasetType 'raw'\).*derivatives"):
        find_runs(tmp_path)
    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "x"}))
    with pytest.raises(DatasetError, match="no DatasetType, no GeneratedBy"):
        find_runs(tmp_path)
    (tmp_path / "dataset_description.json").write_text("[1, 2")
    with pytest.raises(DatasetError, match="not valid JSON"):
        find_runs(tmp_path)


def test_old_fmriprep_description_without_dataset_type_is_accepted(tmp_path):
    make_fmriprep_derivatives(tmp_path, subjects=["01"], noise=False, **SMALL)
    (tmp_path / "dataset_description.json").write_text(
        json.dumps({"Name": "fMRIPrep outputs", "PipelineDescription": {"Name": "fMRIPrep"}})
    )
    assert len(find_runs(tmp_path)) == 1


def test_derivatives_without_runs(tmp_path):
    make_fmriprep_derivatives(tmp_path, subjects=["01"], **SMALL)
    for path in tmp_path.rglob("*_desc-preproc_bold.nii.gz"):
        path.unlink()
    with pytest.raises(DatasetError, match="holds no preprocessed BOLD run"):
        find_runs(tmp_path)


def test_missing_bids2table_names_the_extra(tmp_path, monkeypatch):
    make_fmriprep_derivatives(tmp_path, subjects=["01"], noise=False, **SMALL)
    # A None entry makes the import system refuse the module, as if it were not installed.
    monkeypatch.setitem(sys.modules, "bids2table", None)
    with pytest.raises(BidsExtraMissingError, match=r'pip install "daskmask\[bids\]"') as error:
        find_runs(tmp_path)
    assert isinstance(error.value, ImportError) and isinstance(error.value, DatasetError)


def test_bad_filter_type(dataset):
    root, _ = dataset
    with pytest.raises(TypeError, match="str or an int"):
        find_runs(root, run=[1.5])


# -- S3 -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_dataset(s3_server, tmp_path_factory):
    """The same tree locally and in a bucket."""
    bucket = s3_server.new_bucket()
    arguments = {
        "subjects": ["01", "02", "10"],
        "sessions": ["a"],
        "tasks": ["rest"],
        "runs": [1, 2],
        **SMALL,
    }
    local = tmp_path_factory.mktemp("local-twin")
    make_fmriprep_derivatives(local, **arguments)
    url = f"s3://{bucket}/derivatives/fmriprep"
    make_fmriprep_derivatives(url, storage_options=s3_server.storage_options, **arguments)
    return local, url


def test_s3_finds_the_same_runs_as_the_local_twin(s3_server, s3_dataset):
    local, url = s3_dataset
    remote = find_runs(url, storage_options=s3_server.storage_options)
    here = find_runs(local)
    assert len(remote) == 6
    assert [run.relative_path for run in remote] == [run.relative_path for run in here]
    for run, twin in zip(remote, here, strict=True):
        assert run.bold == f"{url}/{run.relative_path}"
        for field in ("mask", "confounds", "confounds_sidecar", "sidecar"):
            assert getattr(run, field) == getattr(twin, field).replace(str(local), url)
        assert run.t_r == twin.t_r == 2.0
    fs = s3_server.filesystem()
    assert fs.exists(remote[0].mask.removeprefix("s3://"))


def test_s3_filters_and_errors(s3_server, s3_dataset):
    _, url = s3_dataset
    options = s3_server.storage_options
    # A few participants: only their prefixes are listed.
    kept = find_runs(url, participant_label=["10"], run=2, storage_options=options)
    assert [run.stem for run in kept] == [f"sub-10_ses-a_task-rest_run-2_space-{MNI}"]
    with pytest.raises(DatasetError, match=r"participant_label='3'.*01, 02, 10"):
        find_runs(url, participant_label="3", storage_options=options)
    with pytest.raises(DatasetError, match=r"s3://.*/derivatives/nothing does not exist"):
        find_runs(url.replace("fmriprep", "nothing"), storage_options=options)
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        find_runs(f"{url}/dataset_description.json", storage_options=options)


def test_s3_missing_bucket_or_endpoint_is_a_storage_error(s3_server):
    with pytest.raises((StorageError, DatasetError), match="s3://no-such-bucket-dm"):
        find_runs("s3://no-such-bucket-dm/fmriprep", storage_options=s3_server.storage_options)
    dead = {**s3_server.storage_options, "endpoint_url": "http://127.0.0.1:9"}
    dead["config_kwargs"] = {"connect_timeout": 1, "retries": {"max_attempts": 1}}
    with pytest.raises(StorageError, match="did not answer"):
        find_runs("s3://any/fmriprep", storage_options=dead)


# -- every combination of entities --------------------------------------------------------

_labels = st.lists(
    st.sampled_from(["01", "02", "3", "10", "ab"]), min_size=1, max_size=3, unique=True
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    subjects=_labels,
    sessions=st.none() | _labels,
    tasks=st.lists(
        st.sampled_from(["rest", "nback", "motor"]), min_size=1, max_size=2, unique=True
    ),
    runs=st.none() | st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True),
    spaces=st.lists(st.sampled_from([MNI, "T1w"]), min_size=1, max_size=2, unique=True),
    data=st.data(),
)
def test_discovery_returns_exactly_the_generated_runs(
    tmp_path_factory, subjects, sessions, tasks, runs, spaces, data
):
    root = tmp_path_factory.mktemp("combinations")
    bold = make_fmriprep_derivatives(
        root, subjects=subjects, sessions=sessions, tasks=tasks, runs=runs, spaces=spaces, **SMALL
    )
    found = find_runs(root)
    assert [run.bold for run in found] == bold
    assert all(run.mask and run.confounds and run.sidecar and run.t_r == 2.0 for run in found)
    # A filter on any subset of the labels keeps exactly the matching runs.
    keep_subjects = data.draw(st.lists(st.sampled_from(subjects), min_size=1, unique=True))
    keep_tasks = data.draw(st.lists(st.sampled_from(tasks), min_size=1, unique=True))
    keep_runs = (
        None
        if runs is None
        else data.draw(st.lists(st.sampled_from(runs), min_size=1, unique=True))
    )
    kept = find_runs(root, participant_label=keep_subjects, task=keep_tasks, run=keep_runs)
    assert kept == [
        run
        for run in found
        if run.entities["sub"] in keep_subjects
        and run.entities["task"] in keep_tasks
        and (keep_runs is None or int(run.entities["run"]) in keep_runs)
    ]
