"""``import daskmask`` is light: nothing heavy is imported until a name that needs it is used.

Each check runs in a fresh interpreter (``sys.modules`` of the test process
already holds everything), so that what the import pulls in is what a user's
``import daskmask`` pulls in (issue 14: ``import daskmask`` <= 0.5 s).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Packages a bare ``import daskmask`` must not import: each costs 0.1-1 s and
#: 10-90 MiB (measured on the benchmark machine, ``python -X importtime``).
HEAVY = (
    "dask.array",
    "distributed",
    "matplotlib",
    "nibabel",
    "pandas",
    "rich",
    "scipy",
    "sklearn",
    "xarray",
    "zarr",
)


def _imported_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter; return the names in its ``sys.modules``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert finished.returncode == 0, finished.stderr
    return set(json.loads(finished.stdout.strip().splitlines()[-1]))


def _heavy_in(modules: set[str]) -> list[str]:
    return sorted(name for name in HEAVY if name in modules)


def test_import_daskmask_imports_nothing_heavy() -> None:
    """The package itself only defines names; each is loaded when first used."""
    modules = _imported_after("import daskmask")
    assert _heavy_in(modules) == []
    assert "daskmask.maskers" not in modules
    assert "daskmask.reading" not in modules


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("NiftiMasker", "daskmask.maskers"),
        ("MultiNiftiMasker", "daskmask.maskers"),
        ("open_nifti", "daskmask.reading"),
        ("compute_epi_mask", "daskmask.masking"),
        ("mean_img", "daskmask.masking"),
        ("signal", "daskmask.signal"),
        ("save", "daskmask.storage"),
        ("open_results", "daskmask.storage"),
    ],
)
def test_names_load_their_module_on_first_use(name: str, module: str) -> None:
    """``daskmask.<name>`` and ``from daskmask import <name>`` give the real object."""
    modules = _imported_after(
        f"import daskmask\nfrom daskmask import {name} as direct\n"
        f"assert getattr(daskmask, {name!r}) is direct\n"
        f"assert {name!r} in dir(daskmask)"
    )
    assert module in modules


def test_a_mask_function_does_not_import_the_cluster_or_the_plots() -> None:
    """Masking with NiftiMasker loads neither distributed nor matplotlib."""
    modules = _imported_after("import daskmask\ndaskmask.NiftiMasker")
    assert "distributed" not in modules
    assert "matplotlib" not in modules


def test_the_command_imports_neither_the_walkthrough_nor_the_cluster() -> None:
    """``daskmask run`` and ``bids`` do not pay for ``demo`` (its datasets) or for distributed."""
    modules = _imported_after("import daskmask.cli")
    assert "daskmask._demo" not in modules
    assert "daskmask.datasets" not in modules
    assert "daskmask.cluster" not in modules
    assert "distributed" not in modules


def test_the_command_spells_the_names_it_shares_with_modules_it_does_not_import() -> None:
    """The demo's default store and the scheduler variable are those of their modules."""
    from daskmask import _demo, cluster
    from daskmask.cli import _batch, _main

    assert _main.DEMO_OUTPUT == str(_demo.DEFAULT_OUTPUT)
    assert _batch.SCHEDULER_ENV_VAR == cluster.SCHEDULER_ENV_VAR


def test_unknown_names_raise_attribute_error() -> None:
    import daskmask

    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        daskmask.not_a_name  # noqa: B018 - the attribute access is the test


def test_import_daskmask_is_fast() -> None:
    """Under 0.5 s (issue 14), best of three: a loaded machine slows single runs."""
    script = (
        "import time\nt = time.perf_counter()\nimport daskmask\nprint(time.perf_counter() - t)"
    )
    best = min(
        float(
            subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(3)
    )
    assert best < 0.5, f"import daskmask took {best:.2f} s"
