"""The fMRIPrep-like derivatives generator: its files, their contents, local and in S3."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from daskmask.datasets import (
    FMRIPREP_VERSIONS,
    epi_tissue_maps,
    make_fmriprep_derivatives,
)
from daskmask.exceptions import StorageError

SMALL = {"shape": (12, 14, 12), "n_volumes": 50}
MNI = "MNI152NLin2009cAsym"


def _files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("derivatives")
    bold = make_fmriprep_derivatives(
        root, subjects=["01", "02"], sessions=["pre"], runs=[1, 2], spaces=[MNI, "T1w"], **SMALL
    )
    return root, bold


def test_dataset_description_says_fmriprep_derivative(dataset):
    root, _ = dataset
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    fmriprep = description["GeneratedBy"][0]
    assert fmriprep["Name"] == "fMRIPrep"
    assert fmriprep["Version"] == FMRIPREP_VERSIONS["timeseries"]
    assert description["BIDSVersion"]


def test_every_run_has_its_files_named_as_fmriprep_names_them(dataset):
    root, bold = dataset
    files = _files(root)
    expected_bold = []
    for sub in ("01", "02"):
        for run in (1, 2):
            stem = f"sub-{sub}/ses-pre/func/sub-{sub}_ses-pre_task-rest_run-{run}"
            for space in (MNI, "T1w"):
                for name in ("desc-preproc_bold.nii.gz", "desc-preproc_bold.json"):
                    assert f"{stem}_space-{space}_{name}" in files
                assert f"{stem}_space-{space}_desc-brain_mask.nii.gz" in files
                expected_bold.append(str(root / f"{stem}_space-{space}_desc-preproc_bold.nii.gz"))
            # Confounds carry no space entity.
            assert f"{stem}_desc-confounds_timeseries.tsv" in files
            assert f"{stem}_desc-confounds_timeseries.json" in files
            assert not any(
                name.startswith(f"{stem}_space-") and "confounds" in name for name in files
            )
    assert bold == expected_bold
    # The noise: anatomy (with its own brain mask), surfaces, CIFTI, figures, reports.
    assert "sub-01/anat/sub-01_desc-brain_mask.nii.gz" in files
    assert "sub-01.html" in files
    assert any(name.endswith("_bold.func.gii") for name in files)
    assert any(name.endswith("_bold.dtseries.nii") for name in files)
    assert any(name.startswith("sub-02/figures/") and name.endswith(".svg") for name in files)
    assert any(name.endswith("_boldref.nii.gz") for name in files)


def test_bold_mask_and_sidecar_agree(dataset):
    root, bold = dataset
    path = Path(bold[0])
    image = nib.load(path)
    assert image.shape == (*SMALL["shape"], SMALL["n_volumes"])
    assert image.get_data_dtype() == np.int16
    assert image.header.get_zooms()[3] == pytest.approx(2.0)
    sidecar = json.loads(Path(str(path).replace(".nii.gz", ".json")).read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(2.0)
    assert sidecar["TaskName"] == "rest"
    mask_image = nib.load(str(path).replace("desc-preproc_bold", "desc-brain_mask"))
    assert mask_image.shape == SMALL["shape"]
    np.testing.assert_array_equal(mask_image.affine, image.affine)
    mask = np.asarray(mask_image.dataobj).astype(bool)
    data = np.asarray(image.dataobj)
    # Skull-stripped: the brain mask is exactly where the series is not zero.
    np.testing.assert_array_equal(np.any(data != 0, axis=-1), mask)
    assert 0.05 < mask.mean() < 0.9
    # The same series in every space; another run differs.
    other_space = Path(bold[1])
    assert "space-T1w" in other_space.name
    np.testing.assert_array_equal(np.asarray(nib.load(other_space).dataobj), data)
    assert not np.array_equal(np.asarray(nib.load(bold[2]).dataobj), data)


def test_confounds_have_fmriprep_columns_and_one_row_per_volume(dataset):
    root, bold = dataset
    stem = bold[0].split("_space-")[0]
    table = pd.read_csv(f"{stem}_desc-confounds_timeseries.tsv", sep="\t")
    assert len(table) == SMALL["n_volumes"]
    for column in (
        "trans_x",
        "rot_z_derivative1_power2",
        "csf",
        "white_matter",
        "global_signal",
        "framewise_displacement",
        "std_dvars",
        "cosine00",
        "a_comp_cor_00",
        "t_comp_cor_00",
        "non_steady_state_outlier00",
    ):
        assert column in table.columns, column
    # fMRIPrep writes n/a in the first row of derivatives and framewise displacement.
    assert np.isnan(table["framewise_displacement"].iloc[0])
    metadata = json.loads(Path(f"{stem}_desc-confounds_timeseries.json").read_text())
    assert metadata["a_comp_cor_00"]["Method"] == "aCompCor"


def test_epi_and_background_masks_find_the_brain(tmp_path):
    """nilearn's own mask strategies recover the generated brain (the oracle)."""
    from nilearn.masking import compute_background_mask, compute_epi_mask

    stripped = make_fmriprep_derivatives(tmp_path / "a", subjects=["01"], **SMALL)[0]
    raw = make_fmriprep_derivatives(tmp_path / "b", subjects=["01"], kind="raw", **SMALL)[0]
    brain = epi_tissue_maps(SMALL["shape"], seed=0)["brain"]
    truth = nib.load(stripped.replace("desc-preproc_bold", "desc-brain_mask")).get_fdata() > 0
    np.testing.assert_array_equal(truth, brain)

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))

    assert dice(compute_background_mask(stripped).get_fdata() > 0, truth) > 0.95
    assert dice(compute_epi_mask(stripped).get_fdata() > 0, truth) > 0.8
    assert dice(compute_epi_mask(raw).get_fdata() > 0, truth) > 0.7


def test_same_arguments_same_bytes_and_seed_changes_them(tmp_path):
    arguments = {"subjects": ["01"], "runs": [1], **SMALL}
    make_fmriprep_derivatives(tmp_path / "a", **arguments)
    make_fmriprep_derivatives(tmp_path / "b", **arguments)
    make_fmriprep_derivatives(tmp_path / "c", seed=1, **arguments)
    names = _files(tmp_path / "a")
    assert names == _files(tmp_path / "b") == _files(tmp_path / "c")
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    bold = next(name for name in names if name.endswith("desc-preproc_bold.nii.gz"))
    assert (tmp_path / "a" / bold).read_bytes() != (tmp_path / "c" / bold).read_bytes()


def test_gzip_members_have_no_timestamp(tmp_path):
    bold = make_fmriprep_derivatives(tmp_path, subjects=["01"], **SMALL)[0]
    mask = bold.replace("desc-preproc_bold", "desc-brain_mask")
    for path in (bold, mask):
        header = Path(path).read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b"
        assert header[4:8] == b"\x00\x00\x00\x00"  # mtime 0: reproducible bytes
        with gzip.open(path) as stream:
            assert len(stream.read(348)) == 348


def test_regressors_layout_uncompressed_no_run_no_session(tmp_path):
    bold = make_fmriprep_derivatives(
        tmp_path,
        subjects=[3],
        tasks=["nback", "rest"],
        runs=None,
        layout="regressors",
        compress=False,
        noise=False,
        dtype="float32",
        t_r=1.5,
        **SMALL,
    )
    assert [Path(path).name for path in bold] == [
        f"sub-3_task-nback_space-{MNI}_desc-preproc_bold.nii",
        f"sub-3_task-rest_space-{MNI}_desc-preproc_bold.nii",
    ]
    files = _files(tmp_path)
    assert "sub-3/func/sub-3_task-rest_desc-confounds_regressors.tsv" in files
    assert not any(name.endswith(".html") or "/anat/" in name for name in files)
    description = json.loads((tmp_path / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Version"] == FMRIPREP_VERSIONS["regressors"]
    image = nib.load(bold[0])
    assert image.get_data_dtype() == np.float32
    assert image.header.get_zooms()[3] == pytest.approx(1.5)
    sidecar = json.loads(Path(bold[0].replace(".nii", ".json")).read_text())
    assert sidecar["RepetitionTime"] == 1.5


def test_runs_sorted_as_numbers(tmp_path):
    bold = make_fmriprep_derivatives(tmp_path, subjects=["01"], runs=[10, 2], noise=False, **SMALL)
    assert ["run-2_" in bold[0], "run-10_" in bold[1]] == [True, True]


def test_confounds_options_reach_the_confounds_generator(tmp_path):
    bold = make_fmriprep_derivatives(
        tmp_path, subjects=["01"], noise=False, confounds_options={"n_aroma": 3}, **SMALL
    )[0]
    table = pd.read_csv(bold.split("_space-")[0] + "_desc-confounds_timeseries.tsv", sep="\t")
    assert sum(column.startswith("aroma_motion_") for column in table.columns) == 3


@pytest.mark.parametrize(
    ("arguments", "error", "words"),
    [
        ({"subjects": []}, ValueError, "at least one"),
        ({"subjects": ["0-1"]}, ValueError, "letters and digits"),
        ({"subjects": ["01", "01"]}, ValueError, "twice"),
        ({"tasks": ["rest_state"]}, ValueError, "letters and digits"),
        ({"spaces": [1.5]}, TypeError, "strings or ints"),
        ({"n_volumes": 2}, ValueError, "at least 3"),
        ({"layout": "confounds"}, ValueError, "timeseries"),
        ({"kind": "stripped"}, ValueError, "skull-stripped"),
        ({"dtype": "float64"}, ValueError, "int16"),
        ({"confounds_options": {"seed": 3}}, ValueError, "own arguments"),
        ({"shape": (4, 4)}, ValueError, "3 elements"),
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, arguments, error, words):
    target = tmp_path / "never"
    with pytest.raises(error, match=words):
        make_fmriprep_derivatives(target, **arguments)
    assert not target.exists()


def test_writes_to_s3_the_same_tree(tmp_path, s3_server, s3_bucket):
    arguments = {"subjects": ["01"], "sessions": [1, 2], "runs": [1], **SMALL}
    local = make_fmriprep_derivatives(tmp_path, **arguments)
    url = f"s3://{s3_bucket}/study/derivatives/fmriprep"
    remote = make_fmriprep_derivatives(url, storage_options=s3_server.storage_options, **arguments)
    assert [path.replace(str(tmp_path), url) for path in local] == remote
    fs = s3_server.filesystem()
    prefix = f"{s3_bucket}/study/derivatives/fmriprep/"
    objects = {path[len(prefix) :] for path in fs.find(prefix)}
    assert objects == _files(tmp_path)
    for name in sorted(objects)[:40]:
        assert fs.cat_file(prefix + name) == (tmp_path / name).read_bytes(), name


def test_s3_missing_bucket_is_a_storage_error(s3_server):
    with pytest.raises(StorageError, match="no-such-bucket"):
        make_fmriprep_derivatives(
            "s3://no-such-bucket-dm/derivatives",
            subjects=["01"],
            noise=False,
            storage_options=s3_server.storage_options,
            **SMALL,
        )


def test_local_folder_is_created_and_other_files_kept(tmp_path):
    root = tmp_path / "deep" / "derivatives"
    root.mkdir(parents=True)
    (root / "keep.txt").write_text("mine")
    make_fmriprep_derivatives(os.fspath(root), subjects=["01"], noise=False, **SMALL)
    assert (root / "keep.txt").read_text() == "mine"
    assert (root / "dataset_description.json").is_file()
