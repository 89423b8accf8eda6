"""The walkthrough notebook runs end to end in a Jupyter kernel (nbclient).

The notebook is executed twice, on the bundled real sample (``RUN = None``) and
on a generated raw EPI run passed with ``DASKMASK_NOTEBOOK_RUN``, in a kernel of
this interpreter (a kernel spec written to a temporary folder, so that no other
Python installation's ``python3`` kernel is picked). Any error in a cell fails
the test; the outputs are then checked: the dashboard link, the figures, the
reports, the signal statistics and the Zarr store.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

import daskmask as dm

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
KERNEL_NAME = "daskmask-walkthrough"
RUN_VARIABLE = "DASKMASK_NOTEBOOK_RUN"
#: Reports shown by the notebook (generate_report cells).
N_REPORTS = 5


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A folder holding one kernel spec that runs this interpreter's ipykernel."""
    folder = tmp_path_factory.mktemp("kernels")
    spec = folder / KERNEL_NAME
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "daskmask tests",
                "language": "python",
            }
        )
    )
    return [str(folder)]


def execute(path: Path, workdir: Path, kernel_dirs: list[str], run: Path | None) -> Any:
    """Execute the notebook in ``workdir``; return the executed notebook."""
    notebook = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != RUN_VARIABLE}
    if run is not None:
        env[RUN_VARIABLE] = str(run)
    env.pop("DASKMASK_SCHEDULER", None)  # the notebook starts its own LocalCluster
    manager = KernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs)
    )
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=600,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=env)
    return notebook


def outputs_of(notebook: Any) -> tuple[str, list[str], list[str]]:
    """Return the notebook's stdout, its HTML outputs and the MIME types of its figures."""
    stdout, html, figures = [], [], []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", output
            if output["output_type"] == "stream" and output["name"] == "stdout":
                stdout.append(output["text"])
            data = output.get("data", {})
            if "text/html" in data:
                html.append(data["text/html"])
            figures += [m for m in data if m in ("image/png", "image/svg+xml")]
    return "".join(stdout), html, figures


def check_common(notebook: Any, workdir: Path) -> str:
    """Checks shared by both inputs; return the notebook's stdout."""
    stdout, html, figures = outputs_of(notebook)
    assert re.search(r"Dask dashboard: http://[\w.\-]+:\d+/status", stdout), stdout
    # plot_epi twice, plot_roi three times and plot_signals once: every one displayed.
    assert len(figures) >= 6, figures
    reports = [h for h in html if "The mask includes" in h]
    assert len(reports) >= N_REPORTS, f"{len(reports)} reports displayed"
    assert all("<img" in r and "data:image/" in r for r in reports)
    assert not any(re.search(r"""(src|href)=["']https?://""", r) for r in reports)
    assert any("hover" in r.lower() for r in reports), "no report of the resampled mask"
    assert re.search(r"Trended: mean \d+\.\d\d, std \d+\.\d\d", stdout), stdout
    assert re.search(r"Detrended: mean -?0\.00, std \d+\.\d\d", stdout), stdout
    results = dm.open_results(workdir / "walkthrough-results.zarr")
    assert results.signals.ndim == 2 and results.signals.shape[1] > 1000
    assert (workdir / "skull-stripped-run.nii.gz").is_file()
    return stdout


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert len(code) > 10
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert "RUN = None" in code[0].source


def test_walkthrough_on_bundled_sample(kernel_dirs: list[str], tmp_path: Path) -> None:
    notebook = execute(NOTEBOOK, tmp_path, kernel_dirs, run=None)
    stdout = check_common(notebook, tmp_path)
    assert f"Run: {dm.datasets.load_sample()}" in stdout
    # Two volumes: the detrended signals are exactly zero.
    assert "Detrended: mean 0.00, std 0.00" in stdout
    assert dm.open_results(tmp_path / "walkthrough-results.zarr").signals.shape[0] == 2


def test_walkthrough_on_generated_run(kernel_dirs: list[str], tmp_path: Path) -> None:
    run = dm.datasets.generate_epi(
        tmp_path / "raw-run.nii.gz", shape=(64, 64, 32), n_timepoints=24, kind="raw", seed=11
    )
    notebook = execute(NOTEBOOK, tmp_path, kernel_dirs, run=run)
    stdout = check_common(notebook, tmp_path)
    assert f"Run: {run}" in stdout
    std = float(re.search(r"Detrended: mean -?0\.00, std (\d+\.\d\d)", stdout).group(1))
    assert std > 0, "a generated run has fluctuations left after detrending"
    assert dm.open_results(tmp_path / "walkthrough-results.zarr").signals.shape[0] == 24
