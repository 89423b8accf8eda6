"""The ``daskmask`` console script: options, usage errors, parity with nilearn, S3 in and out.

Every test runs the installed script as a subprocess. nilearn (0.14.1) is the
oracle: ``daskmask bids`` stores equal ``NiftiMasker(mask_img=<the run's brain
mask>).fit_transform(bold, confounds=..., sample_mask=...)`` with nilearn's own
``load_confounds_strategy``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from daskmask.cli import main
from daskmask.datasets import make_fmriprep_derivatives
from daskmask.storage import open_results
from tests._command import SUMMARY_COLUMNS, copy_dataset, daskmask, read_summary, summary_rows

#: The generated dataset's shape of a volume and its length (small: each test calls the script).
SHAPE = (20, 24, 20)
N_VOLUMES = 80


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs of a dataset the code was not written against (its own seed)."""
    root = tmp_path_factory.mktemp("derivatives") / "fmriprep"
    make_fmriprep_derivatives(
        root, subjects=["01", "02"], n_volumes=N_VOLUMES, shape=SHAPE, seed=11
    )
    return root


def _companion(bold: Path, suffix: str) -> Path:
    """A file fMRIPrep writes beside a bold run (the mask has the bold's entities)."""
    stem = bold.name.split("_desc-preproc_bold")[0]
    return bold.with_name(f"{stem}_{suffix}")


def _bolds(root: Path) -> list[Path]:
    return sorted(root.rglob("*_desc-preproc_bold.nii.gz"))


def _scale_tolerance(expected: np.ndarray) -> dict[str, float]:
    # float32 signals: the tolerance of the parity tests, relative to the magnitude
    return {"rtol": 1e-5, "atol": 1e-5 * max(1.0, float(np.abs(expected).max()))}


# ------------------------------------------------------------------ usage


#: Usage mistakes and the option their message must name: (arguments, option).
USAGE_MISTAKES = [
    (["run", "x.nii.gz"], "--output-dir"),
    (["run", "x.nii.gz", "--output-dir", "o", "--standardize", "maybe"], "--standardize"),
    (["run", "x.nii.gz", "--output-dir", "o", "--mask-args", "{{oops"], "--mask-args"),
    (["run", "x.nii.gz", "--output-dir", "o", "--smoothing-fwhm", "1", "2"], "--smoothing-fwhm"),
    (["run", "x.nii.gz", "--output-dir", "o", "--target-shape", "9", "9", "9"], "--target-shape"),
    (["run", "x.nii.gz", "--output-dir", "o", "--runs-in-flight", "0"], "--runs-in-flight"),
    (["run", "x.nii.gz", "--output-dir", "o", "--low-pass", "fast"], "--low-pass"),
    (["run", "a.nii.gz", "b.nii.gz", "--output-dir", "o", "--confounds", "c.tsv"], "--confounds"),
    (["bids", "{dataset}", "o", "--mask", "/nowhere/mask.nii.gz"], "--mask"),
    (["bids", "{dataset}", "o", "--participant-label", "09"], "--participant-label"),
    (["bids", "{dataset}", "{tmp}/o", "--scheduler", "threads", "--jobs", "2"], "--jobs"),
    (["bids", "{dataset}", "o", "--config", "{config}"], "--config"),
    (["bids", "{dataset}", "o", "--confounds-args", "[1]"], "--confounds-args"),
    (["frobnicate"], "COMMAND"),
]  # fmt: skip

#: The mistakes also checked through the console script (each call costs an interpreter).
THROUGH_THE_SCRIPT = {"--mask-args", "--participant-label", "--jobs"}


def _fill(args: list[str], dataset: Path, tmp_path: Path) -> list[str]:
    config = tmp_path / "masker.json"
    config.write_text(json.dumps({"mask_strategy": "epi"}))  # bids chooses the mask with --mask
    return [a.format(dataset=dataset, tmp=tmp_path, config=config) for a in args]


@pytest.mark.parametrize(("args", "option"), USAGE_MISTAKES)
def test_bad_usage_exits_2_naming_the_option(
    dataset: Path, tmp_path: Path, args: list[str], option: str, capsys, monkeypatch
) -> None:
    """Every mistake, through ``main`` (what the script calls): exit 2, the option named."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(_fill(args, dataset, tmp_path))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert option in error.strip().splitlines()[-1]  # the error line names it
    assert "usage: daskmask" in error
    if option == "--config":
        assert "--mask" in error.strip().splitlines()[-1]  # and the fix


@pytest.mark.parametrize(
    ("args", "option"), [m for m in USAGE_MISTAKES if m[1] in THROUGH_THE_SCRIPT]
)
def test_the_script_exits_2_without_a_traceback(
    dataset: Path, tmp_path: Path, args: list[str], option: str
) -> None:
    finished = daskmask(*_fill(args, dataset, tmp_path))
    assert finished.returncode == 2, finished
    assert option in finished.stderr.strip().splitlines()[-1]
    assert "Traceback" not in finished.stderr


def test_default_scheduler_rule(monkeypatch) -> None:
    """Threads whatever the runs (measured faster and smaller on one machine); the option,
    then the variable, choose a cluster."""
    from daskmask.batch._runner import Prepared, RunPlan
    from daskmask.cli._batch import choose_scheduler

    def item(size: int, action: str = "run") -> Prepared:
        plan = RunPlan(input=f"in-{size}.nii", output="out.zarr", params={})
        files = {plan.input: {"size": size, "version": "v"}}
        return Prepared(plan, {"files": files}, action, "")

    monkeypatch.delenv("DASKMASK_SCHEDULER", raising=False)
    assert choose_scheduler(None, [item(10)]) == "threads"
    assert choose_scheduler(None, [item(10), item(20, "skip")]) == "threads"
    assert choose_scheduler(None, [item(2**31)]) == "threads"
    assert choose_scheduler(None, [item(10), item(20)]) == "threads"
    assert choose_scheduler("tcp://h:8786", [item(10)]) == "tcp://h:8786"
    monkeypatch.setenv("DASKMASK_SCHEDULER", "tcp://env:8786")
    assert choose_scheduler(None, [item(10)]) == "tcp://env:8786"
    assert choose_scheduler("threads", [item(10), item(20)]) == "threads"


def test_the_program_ends_as_python_would(dataset: Path, tmp_path: Path) -> None:
    """Run as the program (no argv), the command skips the interpreter's teardown but still
    waits for its threads, runs the atexit handlers, flushes its output and keeps its status."""
    import subprocess
    import sys

    def program(*args: str, summary: Path) -> subprocess.CompletedProcess:
        code = (
            "import atexit, os, sys, threading, time\n"
            "atexit.register(lambda: print('atexit handler ran', flush=False))\n"
            # a thread still running when the command is done: the program waits for it
            "def late():\n"
            f"    while not os.path.exists({str(summary)!r}): time.sleep(0.05)\n"
            "    time.sleep(1.0)\n"
            "    print('thread finished')\n"
            "threading.Thread(target=late, daemon=False).start()\n"
            "from daskmask.cli import main\n"
            f"sys.argv = ['daskmask', *{list(args)!r}]\n"
            "sys.exit(main())\n"
        )
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )

    output = tmp_path / "out"
    summary = output / "daskmask_summary.tsv"
    done = program("bids", str(dataset), str(output), "--participant-label", "01", summary=summary)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-2:] == ["thread finished", "atexit handler ran"]
    assert "1 runs: 1 done" in done.stdout
    assert summary_rows(output)
    # no scratch of the run is left behind in the output folder
    assert not [p for p in output.rglob("*") if p.name.startswith("daskmask-")]
    failed = program(
        "bids", str(dataset), str(tmp_path / "out2"), "--participant-label", "99", summary=summary
    )
    assert failed.returncode != 0
    assert "atexit handler ran" in failed.stdout


# ------------------------------------------------------------------ parity


@pytest.mark.parametrize("strategy", ["simple", "scrubbing"])
def test_bids_stores_equal_nilearn(dataset: Path, tmp_path: Path, strategy: str) -> None:
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiMasker as NilearnMasker

    output = tmp_path / "out"
    finished = daskmask(
        "bids", dataset, output, "--confounds-strategy", strategy, "--detrend",
        "--standardize", "zscore_sample", "--scheduler", "threads",
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    rows = summary_rows(output)
    assert len(rows) == 2
    for bold in _bolds(dataset):
        row = rows[bold.name]
        assert row["status"] == "done" and row["error"] == ""
        # one store per run, named from its entities, in the input's folder structure
        relative = bold.relative_to(dataset).parent
        stem = bold.name.split("_desc-preproc_bold")[0]
        store = output / relative / f"{stem}_desc-daskmask_timeseries.zarr"
        assert Path(row["output"]) == store
        results = open_results(store)
        assert results.provenance["input"] == str(bold)  # which run it holds

        confounds, sample_mask = load_confounds_strategy(str(bold), denoise_strategy=strategy)
        sidecar_t_r = json.loads(bold.with_suffix("").with_suffix(".json").read_text())[
            "RepetitionTime"
        ]
        expected = NilearnMasker(
            mask_img=str(_companion(bold, "desc-brain_mask.nii.gz")),
            detrend=True,
            standardize="zscore_sample",
            t_r=sidecar_t_r,
        ).fit_transform(str(bold), confounds=confounds, sample_mask=sample_mask)
        ours = results.signals.values
        assert ours.shape == expected.shape
        assert (int(row["n_timepoints"]), int(row["n_voxels"])) == expected.shape
        np.testing.assert_allclose(ours, expected, **_scale_tolerance(expected))
        assert results.masker_params["t_r"] == sidecar_t_r


def test_run_stores_equal_nilearn(dataset: Path, tmp_path: Path) -> None:
    """``daskmask run`` on files with their own confounds tables and a computed mask."""
    from nilearn.maskers import NiftiMasker as NilearnMasker

    bolds = _bolds(dataset)
    tables = []
    for index in range(len(bolds)):
        table = tmp_path / f"confounds-{index}.tsv"
        values = np.random.default_rng(index).normal(size=(N_VOLUMES, 3))
        np.savetxt(table, values, delimiter="\t", header="a\tb\tc", comments="")
        tables.append(table)
    output = tmp_path / "out"
    finished = daskmask(
        "run", *bolds, "--output-dir", output, "--confounds", *tables,
        "--mask-strategy", "epi", "--high-pass", "0.01", "--scheduler", "threads",
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    common = dataset  # the images' common folder: sub-01/func, sub-02/func below it
    for bold, table in zip(bolds, tables, strict=True):
        stem = bold.name[: -len(".nii.gz")]
        store = output / bold.relative_to(common).parent / f"{stem}.zarr"
        expected = NilearnMasker(
            mask_strategy="epi", high_pass=0.01, t_r=2.0, standardize=None
        ).fit_transform(str(bold), confounds=str(table))
        ours = open_results(store).signals.values
        np.testing.assert_allclose(ours, expected, **_scale_tolerance(expected))


# ------------------------------------------------------------------ options


def test_config_file_then_options_and_t_r_defaults(dataset: Path, tmp_path: Path) -> None:
    root = copy_dataset(dataset, tmp_path / "fmriprep")
    first, second = _bolds(root)
    sidecar = first.with_suffix("").with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "RepetitionTime": 1.5}))
    config = tmp_path / "masker.json"
    config.write_text(
        json.dumps({"detrend": True, "standardize": "zscore_sample", "low_pass": 0.1})
    )
    output = tmp_path / "out"
    finished = daskmask("bids", root, output, "--config", config, "--no-detrend",
                        "--confounds-strategy", "none", "--mask", "epi",
                        "--scheduler", "threads")  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    params = {
        Path(row["input"]).name: open_results(row["output"]).masker_params
        for row in summary_rows(output).values()
    }
    assert params[first.name]["t_r"] == 1.5  # the sidecar's RepetitionTime
    assert params[second.name]["t_r"] == 2.0
    for values in params.values():
        assert values["detrend"] is False  # the command line wins over the file
        assert values["standardize"] == "zscore_sample" and values["low_pass"] == 0.1
        assert values["mask_strategy"] == "epi" and values["mask_img"] is None  # per run

    one_mask = _companion(first, "desc-brain_mask.nii.gz")
    explicit = daskmask("bids", root, output, "--config", config, "--t-r", "3",
                        "--confounds-strategy", "none", "--mask", one_mask,
                        "--scheduler", "threads")  # fmt: skip
    assert explicit.returncode == 0, explicit.stderr
    masks = []
    for row in summary_rows(output).values():
        assert row["status"] == "done"  # another t_r is another recipe
        results = open_results(row["output"])
        assert results.masker_params["t_r"] == 3.0
        assert results.masker_params["mask_img"] == str(one_mask)  # one mask for every run
        masks.append(np.asarray(results.mask_img.dataobj))
    np.testing.assert_array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(masks[0] > 0, np.asarray(nib.load(one_mask).dataobj) > 0)

    # no sidecar: the header's repetition time
    image = nib.load(second)
    header = image.header.copy()
    header.set_zooms((*header.get_zooms()[:3], 2.5))
    header.set_xyzt_units("mm", "sec")
    lone = tmp_path / "lone" / "run.nii.gz"
    lone.parent.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine, header), lone)
    alone = daskmask("run", lone, "--output-dir", tmp_path / "lone-out", "--scheduler", "threads")
    assert alone.returncode == 0, alone.stderr
    assert open_results(tmp_path / "lone-out" / "run.zarr").masker_params["t_r"] == 2.5


def test_demo_keeps_its_job(tmp_path: Path) -> None:
    finished = daskmask("demo", "--scheduler", "threads", "--output", tmp_path / "demo.zarr")
    assert finished.returncode == 0, finished.stderr
    assert "epi: The mask includes" in finished.stdout
    assert open_results(tmp_path / "demo.zarr").signals.shape[0] == 150  # the walkthrough run


# ------------------------------------------------------------------ object storage


def test_bids_from_and_to_s3(s3_server, dataset: Path, tmp_path: Path) -> None:
    """Input and output in the S3 server: stores equal to nilearn's, a summary, a resume."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiMasker as NilearnMasker

    bucket = s3_server.new_bucket()
    source = f"s3://{bucket}/fmriprep"
    make_fmriprep_derivatives(
        source, subjects=["01", "02"], n_volumes=N_VOLUMES, shape=SHAPE, seed=11,
        storage_options=s3_server.storage_options,
    )  # fmt: skip
    output = f"s3://{bucket}/results"
    args = ("bids", source, output, "--detrend", "--scheduler", "threads")
    finished = daskmask(*args)
    assert finished.returncode == 0, finished.stderr
    fs = s3_server.filesystem()
    header, rows = read_summary(fs.cat(f"{bucket}/results/daskmask_summary.tsv").decode())
    assert header == SUMMARY_COLUMNS
    assert [row["status"] for row in rows] == ["done", "done"]
    for row in rows:
        assert row["input"].startswith(source) and row["output"].startswith(output)
        results = open_results(row["output"])
        assert results.provenance["input"] == row["input"]
        # the generator wrote the same run locally (same seed): nilearn on the local copy
        bold = dataset / row["input"][len(source) + 1 :]
        confounds, sample_mask = load_confounds_strategy(str(bold), denoise_strategy="simple")
        expected = NilearnMasker(
            mask_img=str(_companion(bold, "desc-brain_mask.nii.gz")), detrend=True, t_r=2.0
        ).fit_transform(str(bold), confounds=confounds, sample_mask=sample_mask)
        np.testing.assert_allclose(results.signals.values, expected, **_scale_tolerance(expected))

    again = daskmask(*args)
    assert again.returncode == 0, again.stderr
    _, rows = read_summary(fs.cat(f"{bucket}/results/daskmask_summary.tsv").decode())
    assert [row["status"] for row in rows] == ["skipped", "skipped"]
