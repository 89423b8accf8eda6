"""The embedded LocalCluster serves the Dask dashboard while daskmask computes.

A real LocalCluster (worker processes) is started with :func:`daskmask.connect`;
daskmask extractions (EPI mask, smoothing, detrending) run on it as futures,
kept queued so that the dashboard's bokeh pages and its JSON counts are fetched
over HTTP while they are being computed.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

import daskmask as dm

#: Bokeh pages of the scheduler's dashboard fetched during the computation.
BOKEH_PAGES = ("/status", "/individual-task-stream", "/individual-progress")


def fetch(url: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """GET ``url``; return the HTTP status, the content type and the decoded body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read().decode("utf-8", errors="replace")
        return response.status, response.headers.get("Content-Type", ""), body


def page_url(dashboard_link: str, path: str) -> str:
    """Return the URL of ``path`` on the server of ``dashboard_link``."""
    parts = urlsplit(dashboard_link)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated raw EPI run, 64x64x32 voxels x 120 volumes (int16, uncompressed)."""
    folder = tmp_path_factory.mktemp("dashboard")
    return dm.datasets.generate_epi(
        folder / "run.nii", shape=(64, 64, 32), n_timepoints=120, seed=4
    )


def test_dashboard_answers_while_daskmask_computes(run_path: Path) -> None:
    client = dm.connect(n_workers=2, dashboard_address="127.0.0.1:0")
    try:
        link = client.dashboard_link
        assert urlsplit(link).path == "/status", link
        assert urlsplit(link).port not in (None, 0), link

        run = dm.open_nifti(run_path, chunks=4)
        masker = dm.NiftiMasker(mask_strategy="epi", detrend=True).fit(run)
        assert masker.n_elements_ > 1000
        smoothings = itertools.cycle((4.0, 6.0, 8.0, 10.0))
        futures = []

        def keep_busy() -> None:
            """Queue extractions (about a second each) until three are pending."""
            while sum(f.status == "pending" for f in futures) < 3:
                masker.set_params(smoothing_fwhm=next(smoothings))
                futures.append(client.compute(masker.transform(run)))

        # Wait, through the dashboard's own JSON route, until workers process tasks.
        keep_busy()
        deadline = time.monotonic() + 60
        while True:
            status, content_type, body = fetch(page_url(link, "/json/counts.json"))
            assert status == 200 and "json" in content_type, (status, content_type)
            counts = json.loads(body)
            if counts["processing"] > 0:
                break
            assert time.monotonic() < deadline, f"the computation never started: {body}"
            time.sleep(0.05)
        assert counts["workers"] == 2 and counts["tasks"] > 0, counts

        for path in BOKEH_PAGES:
            keep_busy()
            status, content_type, body = fetch(page_url(link, path))
            running = [f.status for f in futures]
            assert status == 200, (path, status)
            assert content_type.startswith("text/html"), (path, content_type)
            assert "<html" in body.lower(), path
            assert "bokeh" in body.lower(), f"{path} is not a bokeh page"
            assert "pending" in running, (
                f"the daskmask computations ended before {path} answered: {running}"
            )
        # The dashboard's server still sees workers processing daskmask's tasks.
        counts = json.loads(fetch(page_url(link, "/json/counts.json"))[2])
        assert counts["tasks"] > 0 and counts["processing"] > 0, counts

        results = client.gather(futures)
        n_time = run.sizes["time"]
        for result in results:
            assert result.shape == (n_time, masker.n_elements_)
            assert np.isfinite(result.values).all()
        # Detrended signals of every voxel have (near) zero mean.
        values = results[0].values
        assert np.abs(values.mean(axis=0)).max() < 1e-2 * values.std()
    finally:
        client.close()

    # Closing the client stops the embedded cluster and its dashboard.
    with pytest.raises(OSError):
        fetch(page_url(link, "/status"), timeout=5)
