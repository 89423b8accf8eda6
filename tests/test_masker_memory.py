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

import pytest

from daskmask.datasets import generate_epi

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
def test_fit_peak_memory_is_bounded_by_chunks_not_file(tmp_path_factory, strategy):
    folder = tmp_path_factory.getbasetemp() / "big_run"
    folder.mkdir(exist_ok=True)
    path = folder / "big.nii"
    if not path.exists():
        # 64 x 64 x 40 int16 volumes, 5000 of them: 1.6 GB.
        generate_epi(path, shape=(64, 64, 40), n_timepoints=5000, seed=3)
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
