"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
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
