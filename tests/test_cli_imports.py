"""What the command and the functional API import: never scikit-learn nor scipy.stats.

``import daskmask.cli``, a whole ``daskmask bids`` batch, and the functions
(open_nifti, compute_epi_mask, save, open_results) run without scikit-learn:
importing it costs about 0.5 s per process, most of it ``scipy.stats``
(through ``sklearn.utils.fixes``), which the many-runs target (issue 11, wall
<= 0.3x nilearn's) cannot afford. Each check runs in a fresh interpreter,
whose ``sys.modules`` holds only what the code imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import daskmask as dm
from daskmask.datasets import generate_epi, make_fmriprep_derivatives

#: Packages none of these paths needs.
UNNEEDED = ("sklearn", "scipy.stats", "scipy.interpolate", "matplotlib")
#: Drawn only on a terminal (the checks run with standard output a pipe).
OFF_A_TERMINAL = ("rich",)


def _run_fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return the JSON object it prints last."""
    script = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps({{'result': result, 'modules': sorted(sys.modules)}}))"
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _unneeded_in(modules: list[str]) -> list[str]:
    return sorted(name for name in UNNEEDED + OFF_A_TERMINAL if name in modules)


def test_importing_the_command_imports_no_scikit_learn():
    seen = _run_fresh("import daskmask.cli\nresult = None")
    assert _unneeded_in(seen["modules"]) == []
    assert "daskmask.cli" in seen["modules"]


@pytest.mark.parametrize("mask", ["epi", "fmriprep"])
def test_a_batch_imports_no_scikit_learn(tmp_path, mask):
    root = tmp_path / "derivatives"
    make_fmriprep_derivatives(root, subjects=("01", "02"), n_volumes=30)
    out = tmp_path / "out"
    arguments = [
        "bids", str(root), str(out), "--mask", mask, "--detrend", "--standardize",
        "zscore_sample", "--confounds-strategy", "scrubbing",
    ]  # fmt: skip
    seen = _run_fresh(f"from daskmask.cli import main\nresult = main({arguments!r})")
    assert seen["result"] == 0
    assert len(list(out.rglob("*_timeseries.zarr"))) == 2
    assert _unneeded_in(seen["modules"]) == []
    # the check is real: the run went through the masker core and the cleaning
    assert {"daskmask.maskers._core", "daskmask.signal._clean"} <= set(seen["modules"])


def test_the_functional_api_imports_no_scikit_learn(tmp_path):
    path = generate_epi(tmp_path / "run.nii.gz", shape=(20, 24, 20), n_timepoints=10, seed=1)
    store, copy = tmp_path / "signals.zarr", tmp_path / "copy.zarr"
    dm.save(dm.NiftiMasker().fit_transform(path), store)  # here, with the estimator
    seen = _run_fresh(
        "import numpy as np\n"
        "import daskmask as dm\n"
        f"run = dm.open_nifti({str(path)!r})\n"
        "masks = [dm.compute_epi_mask(run), dm.compute_background_mask(run)]\n"
        f"signals = dm.open_results({str(store)!r}).signals\n"
        f"dm.save(signals, {str(copy)!r})\n"
        f"again = dm.open_results({str(copy)!r}).signals\n"
        "result = [int(np.asarray(masks[0].dataobj).sum()), list(again.shape),\n"
        "    bool((again.to_numpy() == signals.to_numpy()).all())]"
    )
    n_voxels, shape, same = seen["result"]
    assert n_voxels > 0 and shape[0] == 10 and same
    assert _unneeded_in(seen["modules"]) == []
