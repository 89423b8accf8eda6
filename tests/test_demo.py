"""``daskmask demo``: every walkthrough setting on the walkthrough runs, failures as results."""

from __future__ import annotations

import re
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from distributed import Client

from daskmask import _demo
from daskmask.cli._main import main
from daskmask.cluster import SCHEDULER_ENV_VAR
from daskmask.datasets import generate_epi, load_walkthrough_runs
from daskmask.datasets._walkthrough import DATA_ENV_VAR
from daskmask.exceptions import BoundingBoxError
from daskmask.storage import open_results

COVERAGE = r"The mask includes (\d+) voxels \((\d+\.\d) %\) of the image\."


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    load_walkthrough_runs(folder)
    return folder


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> Path:
    monkeypatch.setenv(DATA_ENV_VAR, str(data_dir))
    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    return data_dir


def coverage(stdout: str, label: str) -> tuple[int, float]:
    found = re.search(rf"^{re.escape(label)}: {COVERAGE}$", stdout, re.MULTILINE)
    assert found, f"no line for {label!r} in:\n{stdout}"
    return int(found.group(1)), float(found.group(2))


def test_demo_shows_every_setting_on_the_walkthrough_runs(environment, tmp_path, capsys) -> None:
    status = main(["demo", "--output", str(tmp_path / "demo.zarr")])
    stdout = capsys.readouterr().out
    assert status == 0, stdout
    lines = stdout.splitlines()
    # A 33 MiB input: dask's threads, no cluster to start (the measured rule).
    assert lines[0].startswith("Scheduler: dask's threads in this process"), lines[0]
    assert re.search(r"input \d+\.\d MiB", lines[0])
    runs = load_walkthrough_runs(environment)
    assert f"Masked run (occipital cortex): {runs.occipital} (50x59x48x150, int16)" in stdout
    assert f"Raw run: {runs.raw} (50x59x48x150, int16)" in stdout
    shares = {label: coverage(stdout, label)[1] for label, _ in _demo.WALKTHROUGH_SETTINGS}
    # Like the walkthrough: a few percent for background on the run masked to the occipital
    # cortex, a larger share for epi on the raw run, the opening visibly smaller, the templates
    # inside the run, 8 mm coarse.
    assert 2 < shares["background (default)"] < 6
    assert 10 < shares["epi"] < 40
    assert shares["epi, opening=10"] < 0.8 * shares["epi"]
    assert shares["whole-brain-template"] > 10
    assert coverage(stdout, "gm-template")[0] > 500 and coverage(stdout, "wm-template")[0] > 500
    eight_mm = coverage(stdout, "epi, target_affine=np.eye(3) * 8")[0]
    assert eight_mm < coverage(stdout, "epi")[0] / 4
    trended = re.search(r"^Trended: mean (\d+\.\d\d), std (\d+\.\d\d)$", stdout, re.MULTILINE)
    detrended = re.search(r"^Detrended: mean 0\.00, std (\d+\.\d\d)$", stdout, re.MULTILINE)
    assert trended and detrended, stdout
    assert 300 < float(trended.group(1)) < 2000
    assert 1 < float(detrended.group(1)) < 0.2 * float(trended.group(2))
    assert open_results(tmp_path / "demo.zarr").signals.shape == (150, coverage(stdout, "epi")[0])
    assert "failed" not in stdout


def test_a_failing_setting_is_reported_and_the_others_run(environment, tmp_path, capsys) -> None:
    # A small run far from MNI space: the templates miss it and opening=10 empties its mask.
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = 5000.0
    run = generate_epi(tmp_path / "far.nii.gz", shape=(20, 22, 12), n_timepoints=8, affine=affine)
    status = main(["demo", str(run), "--output", str(tmp_path / "demo.zarr")])
    captured = capsys.readouterr()
    stdout = captured.out
    assert status == 1
    # The empty mask's warning is part of the setting's result, not a stray stderr line.
    assert "    warning: MaskWarning: Computed an empty mask." in stdout
    assert "Warning" not in captured.err
    assert f"Input: {run} (20x22x12x8, int16)" in stdout
    for label in ("epi, opening=10", "whole-brain-template", "gm-template", "wm-template"):
        failure = re.search(
            rf"^{re.escape(label)}: failed: (\w+): (.+)\n(?:    warning: .+\n)*    hint: (.+)$",
            stdout,
            re.MULTILINE,
        )
        assert failure, f"{label} not reported as failed in:\n{stdout}"
        error, hint = failure.group(1), failure.group(3)
        assert error in ("ValueError", "BoundingBoxError"), failure.group(0)
        assert ("template" in hint) if label.endswith("template") else ("opening" in hint)
    # The other settings and the extraction still ran.
    coverage(stdout, "epi")
    coverage(stdout, "background (default)")
    assert re.search(r"^Detrended: mean 0\.00, std \d+\.\d\d$", stdout, re.MULTILINE)
    assert stdout.rstrip().endswith("4 of 9 steps failed (see above).")


def _current_client():
    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


def test_an_unusable_scheduler_is_an_error_without_traceback(environment, capsys) -> None:
    before = _current_client()
    status = main(["demo", "--scheduler", "tcp://nowhere"])
    captured = capsys.readouterr()
    assert status == 1
    assert "ClusterConfigError" in captured.err and "'threads', 'local'" in captured.err
    # The failed connection leaves no default client behind: this process computes on.
    assert _current_client() is before
    assert da.ones(4, chunks=2).sum().compute() == 4


@pytest.mark.parametrize(
    ("option", "environment_value", "size", "expected"),
    [
        ("tcp://host:8786", None, 10, "tcp://host:8786"),  # explicit wins
        ("local", None, 10, "local"),
        (None, "tcp://host:8786", 10, None),  # connect() reads $DASKMASK_SCHEDULER
        (None, None, 34 * 2**20, "threads"),  # the walkthrough runs
        (None, None, _demo.THREADS_BELOW_BYTES, None),  # large: the embedded LocalCluster
        (None, None, None, None),  # a URL: size unknown
    ],
)
def test_scheduler_rule(monkeypatch, option, environment_value, size, expected) -> None:
    monkeypatch.delenv(SCHEDULER_ENV_VAR, raising=False)
    if environment_value:
        monkeypatch.setenv(SCHEDULER_ENV_VAR, environment_value)
    assert _demo.choose_scheduler(option, size) == expected


def test_failure_hints_name_the_fix() -> None:
    empty = ValueError("The mask is invalid as it is empty: it masks all data.")
    assert "target_affine" in _demo.failure_hint({}, BoundingBoxError("no data"))
    assert "MNI space" in _demo.failure_hint({"mask_strategy": "gm-template"}, empty)
    assert "lower opening" in _demo.failure_hint(
        {"mask_strategy": "epi", "mask_args": {"opening": 10}}, empty
    )
    assert "mask_strategy='epi'" in _demo.failure_hint({}, empty)
    assert "detrended" in _demo.failure_hint({"mask_strategy": "epi"}, empty)
