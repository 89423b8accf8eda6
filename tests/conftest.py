"""Fixtures shared by several test modules."""

from __future__ import annotations

import atexit
import inspect
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from _s3 import s3_bucket, s3_server, s3_server_with_auth  # noqa: F401 - fixtures
from hypothesis import settings

from daskmask.datasets import generate_epi

# CI runs the property tests with a fixed seed, so that a submission is judged on the
# examples that were checked before it; locally they explore new examples every run.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The walkthrough runs are generated at first use into a cache folder: the tests use their
# own (one per test process, removed at exit), never the user's ~/.cache.
if "DASKMASK_DATA" not in os.environ:
    os.environ["DASKMASK_DATA"] = tempfile.mkdtemp(prefix="daskmask-test-data-")
    atexit.register(shutil.rmtree, os.environ["DASKMASK_DATA"], ignore_errors=True)

#: Fixtures that make a test heavy, by marker: `make test-quick` deselects these markers.
_FIXTURE_MARKERS = {
    "big_run": "slow",
    "isolated_cluster": "cluster",
    "s3_server_with_auth": "cluster",
}
#: Modules whose every test drives a browser or a notebook kernel, or starts clusters.
_MODULE_MARKERS = {
    "test_browser": "browser",
    "test_notebooks": "browser",
    "test_dashboard": "browser",
    "test_benchmarks": "slow",
    "test_cluster": "cluster",
    "test_isolated_cluster": "cluster",
    "test_shared_nothing": "cluster",
}
#: Code in a test (or its module's fixtures) that starts distributed processes.
_CLUSTER_CODE = ("LocalCluster(", "Client(", "isolated_cluster", "unshare")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark heavy tests so that `make test-quick` can leave them out."""
    for item in items:
        markers = {
            _FIXTURE_MARKERS[name] for name in item.fixturenames if name in _FIXTURE_MARKERS
        }
        module = item.module.__name__ if item.module else ""
        if module in _MODULE_MARKERS:
            markers.add(_MODULE_MARKERS[module])
        function = getattr(item, "function", None)
        try:
            source = inspect.getsource(function) if function else ""
        except (OSError, TypeError):
            source = ""
        fixture_sources = [
            inspect.getsource(definition.func)
            for name in item.fixturenames
            for definition in item._fixtureinfo.name2fixturedefs.get(name, ())
            if getattr(definition, "func", None) and definition.baseid
        ]
        if any(code in text for text in [source, *fixture_sources] for code in _CLUSTER_CODE):
            markers.add("cluster")
        for marker in sorted(markers):
            item.add_marker(marker)


#: The larger-than-the-allowance run of the memory tests: 64x64x40 int16 volumes.
BIG_RUN_SHAPE = (64, 64, 40)
BIG_RUN_TIMEPOINTS = 8000


@pytest.fixture(scope="session")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2.6 GB generated raw EPI run (.nii), written once per test session."""
    folder = tmp_path_factory.mktemp("big_run")
    path = generate_epi(
        folder / "big.nii", shape=BIG_RUN_SHAPE, n_timepoints=BIG_RUN_TIMEPOINTS, seed=3
    )
    yield path
    path.unlink(missing_ok=True)
