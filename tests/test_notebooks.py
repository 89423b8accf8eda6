"""The walkthrough notebook runs end to end in a Jupyter kernel (nbclient).

The notebook is executed twice, on the walkthrough's runs (``RUN = None``,
generated into a temporary ``DASKMASK_DATA``) and on nibabel's real two-volume
sample passed with ``DASKMASK_NOTEBOOK_RUN``, in a kernel of this interpreter (a
kernel spec written to a temporary folder, so that no other Python
installation's ``python3`` kernel is picked). Any error in a cell fails the
test; the outputs are then checked: the clickable dashboard link, the progress
bar, the figures (saved next to the test's files for a look), the reports, the
signal statistics and the Zarr store.
"""

from __future__ import annotations

import base64
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
DATA_VARIABLE = "DASKMASK_DATA"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the walkthrough runs, generated once for the module."""
    folder = tmp_path_factory.mktemp("data")
    dm.datasets.load_walkthrough_runs(folder)
    return folder


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


def execute(
    path: Path, workdir: Path, kernel_dirs: list[str], run: Path | None, data_dir: Path
) -> Any:
    """Execute the notebook in ``workdir``; return the executed notebook."""
    notebook = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != RUN_VARIABLE}
    env[DATA_VARIABLE] = str(data_dir)
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


def outputs_of(notebook: Any, save_to: Path | None = None) -> tuple[str, list[str], list[str]]:
    """Return the notebook's stdout, its HTML outputs and the MIME types of its figures.

    With ``save_to``, every figure is also written there (``figure-NN.png``/``.svg``), to be
    looked at.
    """
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
            for mime in ("image/png", "image/svg+xml"):
                if mime in data and save_to is not None:
                    name = save_to / f"figure-{len(figures):02d}.{mime[6:9]}"
                    content = data[mime]
                    if mime == "image/png":
                        name.write_bytes(base64.b64decode(content))
                    else:
                        name.write_text(content if isinstance(content, str) else "".join(content))
            figures += [m for m in data if m in ("image/png", "image/svg+xml")]
    return "".join(stdout), html, figures


def check_common(notebook: Any, workdir: Path) -> str:
    """Checks shared by both inputs; return the notebook's stdout."""
    stdout, html, figures = outputs_of(notebook, save_to=workdir)
    # The dashboard link is clickable (an HTML anchor opening a new tab).
    assert any(
        re.search(r'<a href="http://[\w.\-]+:\d+/status" target="_blank">', h) for h in html
    ), html[:3]
    # distributed's text progress bar (no ipywidgets here) under the extraction cell.
    assert re.search(r"\[#+\] \| 100% Completed", stdout), stdout
    # plot_epi, plot_roi five times and plot_signals: every one displayed.
    assert len(figures) >= 7, figures
    reports = [h for h in html if "The mask includes" in h]
    assert len(reports) >= N_REPORTS, f"{len(reports)} reports displayed"
    assert all("<img" in r and "data:image/" in r for r in reports)
    assert not any(re.search(r"""(src|href)=["']https?://""", r) for r in reports)
    assert any("hover" in r.lower() for r in reports), "no report of the resampled mask"
    assert re.search(r"Trended: mean \d+\.\d\d, std \d+\.\d\d", stdout), stdout
    assert re.search(r"Detrended: mean -?0\.00, std \d+\.\d\d", stdout), stdout
    results = dm.open_results(workdir / "walkthrough-results.zarr")
    assert results.signals.ndim == 2 and results.signals.shape[1] > 1000
    return stdout


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert len(code) > 10
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert "RUN = None" in code[0].source


def test_walkthrough_on_the_walkthrough_runs(
    kernel_dirs: list[str], data_dir: Path, tmp_path: Path
) -> None:
    notebook = execute(NOTEBOOK, tmp_path, kernel_dirs, run=None, data_dir=data_dir)
    stdout = check_common(notebook, tmp_path)
    runs = dm.datasets.load_walkthrough_runs(data_dir)
    assert f"Raw run: {runs.raw}" in stdout
    assert f"Masked run: {runs.occipital}" in stdout
    # The background mask of the run masked to the occipital cortex: a few percent, as in
    # the walkthrough.
    share = re.search(
        r"^The mask includes \d+ voxels \((\d+\.\d) %\) of the image\.$", stdout, re.M
    )
    assert share and 2 < float(share.group(1)) < 6, stdout
    # Like the walkthrough: a mean in the hundreds, then 0.00 and a std that drops.
    trended = re.search(r"Trended: mean (\d+\.\d\d), std (\d+\.\d\d)", stdout)
    detrended = re.search(r"Detrended: mean 0\.00, std (\d+\.\d\d)", stdout)
    assert trended and detrended, stdout
    assert 300 < float(trended.group(1)) < 2000
    assert 1 < float(detrended.group(1)) < 0.2 * float(trended.group(2))
    for strategy in ("whole-brain-template", "gm-template", "wm-template"):
        assert int(re.search(rf"{strategy}: (\d+) voxels", stdout).group(1)) > 500
    assert dm.open_results(tmp_path / "walkthrough-results.zarr").signals.shape[0] == 150


def test_walkthrough_on_nibabels_real_sample(
    kernel_dirs: list[str], data_dir: Path, tmp_path: Path
) -> None:
    run = dm.datasets.load_sample()
    notebook = execute(NOTEBOOK, tmp_path, kernel_dirs, run=run, data_dir=data_dir)
    stdout = check_common(notebook, tmp_path)
    assert f"Raw run: {run}" in stdout
    # Two volumes: the detrended signals are exactly zero.
    assert "Detrended: mean 0.00, std 0.00" in stdout
    assert dm.open_results(tmp_path / "walkthrough-results.zarr").signals.shape[0] == 2
