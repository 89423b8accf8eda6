"""fit never holds the 4D array: its peak memory stays far below the file size.

A generated .nii several times larger than the memory the test allows is
fitted in a fresh Python process; the child's peak resident memory
(``VmHWM``) must stay under that allowance. Page cache is not counted in
RSS, so only what daskmask itself allocates is measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

#: Peak resident memory allowed to the fitting process (imports included).
MEMORY_ALLOWANCE = 450 * 2**20

FIT_SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import dask
    import daskmask as dm

    dask.config.set({"array.chunk-size": "24MiB", "scheduler": "threads", "num_workers": 2})
    masker = dm.NiftiMasker(mask_strategy=sys.argv[2]).fit(sys.argv[1])
    # VmHWM is this process's own peak RSS; ru_maxrss would carry pytest's
    # peak over from before exec.
    status = open("/proc/self/status").read()
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
    print(json.dumps({"peak": peak, "n_elements": masker.n_elements_}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["epi", "background"])
def test_fit_peak_memory_is_bounded_by_chunks_not_file(big_run, strategy):
    path = big_run
    file_size = path.stat().st_size
    assert file_size > 3 * MEMORY_ALLOWANCE

    result = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT, str(path), strategy],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n_elements"] > 0
    assert report["peak"] < MEMORY_ALLOWANCE, (
        f"peak RSS {report['peak'] / 2**20:.0f} MiB for a {file_size / 2**20:.0f} MiB file"
    )


TRANSFORM_SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import dask
    import daskmask as dm

    dask.config.set({"array.chunk-size": "16MiB", "scheduler": "threads", "num_workers": 2})
    masker = dm.NiftiMasker(mask_strategy="epi", detrend=True, standardize="zscore_sample")
    signals = masker.fit_transform(sys.argv[1])
    dm.save(signals, sys.argv[2])
    status = open("/proc/self/status").read()
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
    print(json.dumps({"peak": peak, "shape": list(signals.shape)}))
    """
)

#: Peak allowed to fit_transform + save with 16 MiB blocks (imports included).
TRANSFORM_ALLOWANCE = 650 * 2**20


@pytest.mark.slow
def test_transform_to_zarr_peak_memory_is_bounded_by_blocks(big_run, tmp_path):
    file_size = big_run.stat().st_size
    assert file_size > 3 * TRANSFORM_ALLOWANCE
    store = tmp_path / "signals.zarr"
    result = subprocess.run(
        [sys.executable, "-c", TRANSFORM_SCRIPT, str(big_run), str(store)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    n_time, n_voxels = report["shape"]
    assert n_time * n_voxels * 4 > 2 * TRANSFORM_ALLOWANCE  # the signals alone exceed it
    assert report["peak"] < TRANSFORM_ALLOWANCE, (
        f"peak RSS {report['peak'] / 2**20:.0f} MiB for a {file_size / 2**20:.0f} MiB file"
    )
    import daskmask as dm

    results = dm.open_results(store)
    assert results.signals.shape == (n_time, n_voxels)
    block = results.signals[:, :50].to_numpy()
    np.testing.assert_allclose(block.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(block.std(axis=0, ddof=1), 1, rtol=1e-3)
