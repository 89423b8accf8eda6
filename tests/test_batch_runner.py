"""The batch runner through the real ``daskmask`` command: resume, failures, kills, concurrency.

Every batch runs the installed console script on a generated fMRIPrep-like
dataset (``daskmask.datasets.make_fmriprep_derivatives``); the pure parts
(the resume decision, the summary table) are also checked in-process.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from daskmask.batch._progress import BatchProgress
from daskmask.batch._runner import RunPlan, decide, execute, prepare, recipe
from daskmask.batch._summary import COLUMNS, RunOutcome, render
from daskmask.datasets import make_fmriprep_derivatives
from daskmask.storage import IncompleteStoreError, StoreNotFoundError, open_results
from tests._command import (
    SUMMARY_COLUMNS,
    copy_dataset,
    daskmask,
    read_summary,
    start,
    statuses,
    summary_rows,
)

SUBJECTS = ["01", "02", "03", "04"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small runs, one per subject (read only: tests that change files copy it)."""
    root = tmp_path_factory.mktemp("derivatives") / "fmriprep"
    make_fmriprep_derivatives(root, subjects=SUBJECTS, n_volumes=80, shape=(20, 24, 20))
    return root


def _bold(root: Path, subject: str) -> Path:
    return next((root / f"sub-{subject}" / "func").glob("*_desc-preproc_bold.nii.gz"))


def _stores(output: Path) -> list[Path]:
    # os.walk ignores folders that vanish while it lists them (a running batch removes its
    # .partial work folders), where Path.rglob raises FileNotFoundError.
    return sorted(
        Path(folder) / name
        for folder, names, _ in os.walk(output)
        for name in names
        if name.endswith("_desc-daskmask_timeseries.zarr")
    )


# ------------------------------------------------------------------ pure parts


def test_decide_skips_only_an_identical_recipe() -> None:
    current = {"input": "a.nii", "files": {"a.nii": {"size": 1, "version": "v1"}}, "p": 1}
    assert decide(current, dict(current))[0] == "skip"
    assert decide(current, None) == ("run", "no complete store")
    assert decide(current, dict(current), force=True) == ("run", "forced")
    changed_input = {**current, "files": {"a.nii": {"size": 1, "version": "v2"}}}
    assert decide(current, changed_input) == ("run", "the input changed")
    assert decide(current, {**current, "p": 2}) == ("run", "the parameters changed")


def test_summary_has_exactly_the_columns_in_order() -> None:
    assert list(COLUMNS) == SUMMARY_COLUMNS
    text = render(
        [
            RunOutcome("in.nii", "out.zarr", "done", 10, 5, 1.5),
            RunOutcome("bad.nii", "bad.zarr", "failed", error="ValueError: two\nlines\tand a tab"),
        ]
    )
    header, rows = read_summary(text)
    assert header == SUMMARY_COLUMNS
    assert rows[0]["n_voxels"] == "10" and rows[0]["seconds"] == "1.500"
    assert rows[1]["error"] == "ValueError: two lines and a tab"
    with pytest.raises(ValueError, match="status"):
        RunOutcome("x", "y", "pending")


class _InFlight(BatchProgress):
    """A progress display that also counts the runs in hand at the same time."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self.now = 0
        self.most = 0

    def started(self, label: str) -> None:
        super().started(label)
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def finished(self, label: str, outcome: RunOutcome) -> None:
        with self._lock:
            self.now -= outcome.status != "skipped"
        super().finished(label, outcome)


def test_progress_is_drawn_on_a_terminal_only() -> None:
    """On a terminal (a pseudo-terminal here) rich draws the bars; elsewhere, plain lines."""
    import io
    import pty

    leader, follower = pty.openpty()
    outcome = RunOutcome("in.nii.gz", "out.zarr", "done")
    with os.fdopen(follower, "w") as terminal:
        with BatchProgress(1, stream=terminal) as progress:
            assert progress.enabled
            progress.started("sub-01")
            progress.note("dashboard: http://localhost:8787")
            progress.finished("sub-01", outcome)
        terminal.flush()
    # One read returns what the line discipline has buffered so far, not all that was
    # written: read until the closed terminal reports its end (EIO on Linux).
    pieces = []
    while True:
        try:
            piece = os.read(leader, 1 << 16)
        except OSError:
            break
        if not piece:
            break
        pieces.append(piece)
    os.close(leader)
    drawn = b"".join(pieces).decode(errors="replace")
    assert "dashboard: http://localhost:8787" in drawn and "runs (1 done)" in drawn
    plain = io.StringIO()
    with BatchProgress(1, stream=plain) as progress:
        assert not progress.enabled
        progress.started("sub-01")
        progress.note("dashboard: http://localhost:8787")
        progress.finished("sub-01", outcome)
    assert plain.getvalue() == "dashboard: http://localhost:8787\n"


def test_runs_in_flight_are_bounded(dataset: Path, tmp_path: Path) -> None:
    """However many runs, at most ``runs_in_flight`` are masked at the same time."""
    import dask

    plans = [
        RunPlan(
            input=str(_bold(dataset, subject)),
            output=str(tmp_path / f"sub-{subject}.zarr"),
            params={"mask_strategy": "epi", "detrend": True},
            label=subject,
        )
        for subject in SUBJECTS
    ]
    prepared = prepare(plans)
    assert [item.action for item in prepared] == ["run"] * 4
    progress = _InFlight(len(plans))
    with dask.config.set(scheduler="threads"), progress:
        outcomes = execute(prepared, str(tmp_path), runs_in_flight=2, progress=progress)
    assert [o.status for o in outcomes] == ["done"] * 4
    assert progress.most == 2
    # a second look finds them all complete with the same recipe
    assert [item.action for item in prepare(plans)] == ["skip"] * 4
    # every choice is in the recipe: the confounds strategy and the mask choice too
    first = recipe(plans[0])
    assert first["masker_params"]["mask_strategy"] == "epi"
    assert recipe(replace(plans[0], confounds_strategy="simple")) != first
    assert recipe(replace(plans[0], mask="fmriprep")) != first
    assert decide(recipe(replace(plans[0], confounds_args={"motion": "full"})), first)[0] == "run"


# ------------------------------------------------------------------ the command


def test_resume_skips_redoes_changed_retries_failed_and_force(
    dataset: Path, tmp_path: Path
) -> None:
    root = copy_dataset(dataset, tmp_path / "fmriprep")
    output = tmp_path / "out"
    confounds = next((root / "sub-02" / "func").glob("*_desc-confounds_timeseries.tsv"))
    good_confounds = confounds.read_text()
    # sub-02 fails the first time: its confounds table lost its last 5 rows
    confounds.write_text("\n".join(good_confounds.splitlines()[:-5]) + "\n")
    common = ("--scheduler", "threads", "--detrend")

    first = daskmask("bids", root, output, *common)
    assert first.returncode == 1, first.stderr
    assert statuses(output) == {"sub-01": "done", "sub-02": "failed", "sub-03": "done",
                                "sub-04": "done"}  # fmt: skip
    created = {p: open_results(p).created for p in _stores(output)}

    confounds.write_text(good_confounds)  # fixed: the failed run is tried again
    second = daskmask("bids", root, output, *common)
    assert second.returncode == 0, second.stderr
    assert statuses(output) == {"sub-01": "skipped", "sub-02": "done", "sub-03": "skipped",
                                "sub-04": "skipped"}  # fmt: skip
    rows = summary_rows(output)
    skipped = next(row for row in rows.values() if row["status"] == "skipped")
    assert int(skipped["n_voxels"]) > 0 and int(skipped["n_timepoints"]) > 0
    for store, when in created.items():  # skipped stores are not rewritten
        assert open_results(store).created == when

    # a changed input is redone, the others skipped
    bold = _bold(root, "03")
    image = nib.load(bold)
    data = np.asarray(image.dataobj).copy()
    data[..., 0] += 1
    nib.save(nib.Nifti1Image(data, image.affine, image.header), bold)
    third = daskmask("bids", root, output, *common)
    assert third.returncode == 0, third.stderr
    assert statuses(output)["sub-03"] == "done"
    assert sorted(statuses(output).values()).count("skipped") == 3

    # a changed parameter redoes every run
    fourth = daskmask("bids", root, output, *common, "--standardize", "zscore_sample")
    assert fourth.returncode == 0, fourth.stderr
    assert set(statuses(output).values()) == {"done"}
    assert all(
        open_results(p).masker_params["standardize"] == "zscore_sample" for p in _stores(output)
    )
    # --force redoes all, even what is complete and unchanged
    forced = daskmask("bids", root, output, *common, "--standardize", "zscore_sample", "--force")
    assert forced.returncode == 0, forced.stderr
    assert set(statuses(output).values()) == {"done"}
    assert "4 done" in forced.stdout


def test_failures_are_kept_apart(dataset: Path, tmp_path: Path) -> None:
    """A corrupt file, confounds of the wrong length and an empty mask: the others finish."""
    root = copy_dataset(dataset, tmp_path / "fmriprep")
    output = tmp_path / "out"
    corrupt = _bold(root, "02")
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    confounds = next((root / "sub-03" / "func").glob("*_desc-confounds_timeseries.tsv"))
    confounds.write_text("\n".join(confounds.read_text().splitlines()[:-7]) + "\n")
    mask = next((root / "sub-04" / "func").glob("*_desc-brain_mask.nii.gz"))
    image = nib.load(mask)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), mask)

    finished = daskmask("bids", root, output, "--scheduler", "threads")
    assert finished.returncode == 1
    assert "Traceback" not in finished.stderr
    rows = {name.split("_")[0]: row for name, row in summary_rows(output).items()}
    assert rows["sub-01"]["status"] == "done" and rows["sub-01"]["error"] == ""
    assert open_results(rows["sub-01"]["output"]).signals.shape[1] > 0
    for subject in ("sub-02", "sub-03", "sub-04"):
        assert rows[subject]["status"] == "failed"
        assert rows[subject]["n_voxels"] == "" and rows[subject]["error"]
        with pytest.raises(StoreNotFoundError):
            open_results(rows[subject]["output"])
        assert f"failed: {rows[subject]['input']}" in finished.stderr
    assert str(corrupt) in rows["sub-02"]["error"]
    assert "length" in rows["sub-03"]["error"].lower()
    assert "empty" in rows["sub-04"]["error"].lower()


def _wait_for_first_store(process, output: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not _stores(output):
        if process.poll() is not None:
            pytest.fail(f"the batch ended before a store appeared: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no store appeared")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def slow_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six longer runs, so that a batch is still busy when the test stops it."""
    root = tmp_path_factory.mktemp("slow") / "fmriprep"
    make_fmriprep_derivatives(
        root, subjects=[f"{n:02d}" for n in range(1, 7)], n_volumes=300, shape=(32, 38, 32)
    )
    return root


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT", "SIGTERM"])
def test_a_stopped_batch_finishes_on_the_next_call(
    slow_dataset: Path, tmp_path: Path, how: str
) -> None:
    output = tmp_path / "out"
    args = ("bids", slow_dataset, output, "--scheduler", "threads", "--detrend",
            "--runs-in-flight", "1", "--confounds-strategy", "none")  # fmt: skip
    process = start(*args)
    _wait_for_first_store(process, output)
    os.kill(process.pid, getattr(signal, how))
    _, stderr = process.communicate(timeout=60)
    if how == "SIGKILL":
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 128 + getattr(signal, how), stderr
        assert "Traceback" not in stderr and f"stopped by {how}" in stderr
        rows = summary_rows(output)
        assert len(rows) == 6  # one row per selected run, unfinished ones failed
        assert {row["status"] for row in rows.values()} <= {"done", "failed"}
        assert any("interrupted" in row["error"] for row in rows.values())

    # nothing of the stopped call opens as complete unless it is complete
    kept = _stores(output)
    assert 1 <= len(kept) < 6
    for store in kept:
        assert open_results(store).signals.shape == (300, open_results(store).signals.shape[1])
    for leftover in output.rglob(".*partial-*"):
        store = leftover / "store"
        if store.exists():
            with pytest.raises((IncompleteStoreError, StoreNotFoundError)):
                open_results(store)

    again = daskmask(*args)
    assert again.returncode == 0, again.stderr
    final = statuses(output)
    assert len(final) == 6
    assert list(final.values()).count("skipped") == len(kept)
    assert list(final.values()).count("done") == 6 - len(kept)
    for store in _stores(output):
        open_results(store).signals.compute()
    assert not list(output.rglob(".*partial-*"))


@pytest.mark.cluster
def test_a_batch_on_a_local_cluster(dataset: Path, tmp_path: Path) -> None:
    """``--scheduler local`` starts a LocalCluster, masks the runs on it and stops it."""
    threads = daskmask("bids", dataset, tmp_path / "threads", "--participant-label", "01", "02",
                       "--detrend", "--scheduler", "threads")  # fmt: skip
    assert threads.returncode == 0, threads.stderr
    finished = daskmask("bids", dataset, tmp_path / "local", "--participant-label", "01", "02",
                        "--detrend", "--scheduler", "local", timeout=180)  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert set(statuses(tmp_path / "local").values()) == {"done"}
    assert "Dask dashboard: http" in finished.stdout  # a plain line in a log
    assert "Dask dashboard" not in threads.stdout  # no cluster, no dashboard
    for store in _stores(tmp_path / "local"):
        twin = tmp_path / "threads" / store.relative_to(tmp_path / "local")
        np.testing.assert_allclose(
            open_results(store).signals.values, open_results(twin).signals.values, rtol=1e-6
        )
        provenance = open_results(store).provenance
        assert provenance["input"] == provenance["paths"][0]
        assert json.dumps(provenance["batch"])  # the recipe is stored
