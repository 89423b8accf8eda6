"""The walkthrough runs: raw, skull-stripped and occipital EPI from the MNI templates, cached.

Every walkthrough setting must show what it is for on these runs; nilearn 0.14.1's mask
functions are the oracle (they are what the walkthrough shows).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from daskmask.datasets import WalkthroughRuns, load_walkthrough_runs, walkthrough_tissue_maps
from daskmask.datasets._walkthrough import (
    DATA_ENV_VAR,
    GENERATOR_VERSION,
    GRID_SHAPE,
    N_VOLUMES,
    data_home,
    grid_affine,
)
from daskmask.exceptions import StorageError

GENERATE = (
    "import sys; from daskmask.datasets import load_walkthrough_runs; "
    "print(load_walkthrough_runs(sys.argv[1]).raw)"
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> WalkthroughRuns:
    return load_walkthrough_runs(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def maps() -> dict[str, np.ndarray]:
    return walkthrough_tissue_maps()


@pytest.fixture(scope="module")
def raw_data(runs: WalkthroughRuns) -> np.ndarray:
    return np.asanyarray(nib.load(runs.raw).dataobj)


@pytest.fixture(scope="module")
def masked_data(runs: WalkthroughRuns) -> np.ndarray:
    return np.asanyarray(nib.load(runs.masked).dataobj)


@pytest.fixture(scope="module")
def occipital_data(runs: WalkthroughRuns) -> np.ndarray:
    return np.asanyarray(nib.load(runs.occipital).dataobj)


def _nilearn_mask(function: str, img: Path, **kwargs) -> np.ndarray:
    from nilearn import masking

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asanyarray(getattr(masking, function)(str(img), **kwargs).dataobj) > 0


# -- what the files are -------------------------------------------------------------------


def test_runs_are_4d_mni_epi_of_150_volumes(runs: WalkthroughRuns) -> None:
    raw, masked, occipital = runs  # unpacks
    assert raw.parent.name == f"walkthrough-v{GENERATOR_VERSION}"
    assert masked.parent == occipital.parent == raw.parent
    for path in (raw, masked, occipital):
        image = nib.load(path)
        assert image.shape == (*GRID_SHAPE, N_VOLUMES) == (50, 59, 48, 150)
        assert image.get_data_dtype() == np.int16
        np.testing.assert_array_equal(image.affine, grid_affine())
        assert image.header.get_zooms() == (4.0, 4.0, 4.0, 2.0)
    # Only the generator ships: the files live in the cache, small enough to generate often.
    assert sum(p.stat().st_size for p in runs) < 60 * 2**20


def test_raw_run_has_epi_contrast_on_a_rayleigh_background(raw_data, maps) -> None:
    mean = raw_data.mean(axis=-1)
    pure = {tissue: maps[tissue] > 0.8 for tissue in ("scalp", "skull", "csf", "gm", "wm")}
    assert all(selection.sum() > 5 for selection in pure.values())
    level = {tissue: mean[selection].mean() for tissue, selection in pure.items()}
    air = mean[~maps["head"]]
    # T2*: CSF brightest, white matter darker than grey; the scalp bright, the skull dark.
    assert level["csf"] > level["gm"] > level["wm"] > level["skull"]
    assert level["scalp"] > 4 * level["skull"] > 4 * air.mean()
    # Magnitude noise in the air: never exactly zero, positive skew like a Rayleigh law.
    far_air = raw_data[:3, :3, -3:, :].ravel()
    assert np.count_nonzero(far_air == 0) < 0.01 * far_air.size
    assert 8 < far_air.mean() < 30
    assert np.mean(far_air) > np.median(far_air)


def test_masked_run_is_the_brain_on_an_exact_zero_background(masked_data, maps) -> None:
    support = np.all(masked_data != 0, axis=-1)
    np.testing.assert_array_equal(support, maps["brain"])
    assert not np.any(masked_data[~maps["brain"]])
    assert 0.15 < maps["brain"].mean() < 0.3  # a whole brain in an MNI field of view


def test_occipital_run_is_the_skull_stripped_run_cut_to_posterior_cortex(
    masked_data, occipital_data, maps
) -> None:
    occipital = maps["occipital"]
    support = np.all(occipital_data != 0, axis=-1)
    np.testing.assert_array_equal(support, occipital)
    assert not np.any(occipital_data[~occipital])
    # The same run, voxel for voxel, inside the cortex: already-masked data.
    np.testing.assert_array_equal(occipital_data[occipital], masked_data[occipital])
    # A few percent of the image, like the walkthrough's occipital sample.
    assert 0.02 < occipital.mean() < 0.06
    # Grey matter at the back of the brain, above the cerebellum.
    assert np.all(maps["brain"][occipital])
    assert np.median(maps["gm"][occipital]) > 0.5
    world = nib.affines.apply_affine(grid_affine(), np.argwhere(occipital))
    assert world[:, 1].max() <= -60 and world[:, 2].min() >= -16
    assert world[:, 1].min() < -90  # reaches the occipital pole
    assert np.count_nonzero(world[:, 0] < 0) > 0.3 * len(world)  # both hemispheres
    assert np.count_nonzero(world[:, 0] > 0) > 0.3 * len(world)


def test_runs_carry_drift_and_fluctuations(raw_data, maps) -> None:
    grey = raw_data[maps["gm"] > 0.8].astype(float)
    global_signal = grey.mean(axis=0)
    time = np.arange(N_VOLUMES)
    slope = np.polyfit(time, global_signal, 1)[0]
    assert abs(slope) * N_VOLUMES > 0.01 * global_signal.mean()  # a drift of a percent or more
    detrended = grey - np.polyval(np.polyfit(time, grey.T, 1), time[:, None]).T
    # Temporal fluctuations of a few percent: BOLD, physiology and noise.
    relative = detrended.std(axis=1) / grey.mean(axis=1)
    assert 0.005 < np.median(relative) < 0.05
    # BOLD is shared by neighbouring grey-matter voxels: correlated, unlike thermal noise.
    correlation = np.corrcoef(detrended[:200])
    assert np.median(correlation[np.triu_indices(200, 1)]) > 0.1


# -- every walkthrough setting shows what it is for ---------------------------------------


def test_epi_mask_of_the_raw_run_excludes_the_scalp(runs, maps) -> None:
    mask = _nilearn_mask("compute_epi_mask", runs.raw)
    assert not np.any(mask & (maps["scalp"] > 0.5))
    assert np.count_nonzero(maps["brain"] & ~mask) < 0.01 * maps["brain"].sum()
    # Without the opening, thresholds alone do not separate the head from the brain.
    assert np.count_nonzero(mask & ~maps["brain"]) < 0.1 * mask.sum()


def test_opening_changes_the_epi_mask_visibly(runs) -> None:
    default = _nilearn_mask("compute_epi_mask", runs.raw)
    opened = _nilearn_mask("compute_epi_mask", runs.raw, opening=10)
    assert np.all(opened <= default)
    assert opened.sum() < 0.8 * default.sum()


def test_background_mask_of_the_masked_run_is_the_brain(runs, maps) -> None:
    mask = _nilearn_mask("compute_background_mask", runs.masked)
    np.testing.assert_array_equal(mask, maps["brain"])


def test_background_mask_of_the_occipital_run_is_its_cortex(runs, maps) -> None:
    import daskmask as dm

    expected = _nilearn_mask("compute_background_mask", runs.occipital)
    np.testing.assert_array_equal(expected, maps["occipital"])
    # The demo's default setting: daskmask's masker gives nilearn's mask, voxel for voxel.
    masker = dm.NiftiMasker().fit(runs.occipital)
    np.testing.assert_array_equal(np.asanyarray(masker.mask_img_.dataobj) > 0, expected)
    assert 2 < 100 * masker.n_elements_ / expected.size < 6


@pytest.mark.parametrize("mask_type", ["whole-brain", "gm", "wm"])
def test_templates_overlap_the_brain(runs, maps, mask_type: str) -> None:
    mask = _nilearn_mask("compute_brain_mask", runs.raw, mask_type=mask_type)
    assert mask.sum() > 500
    assert np.count_nonzero(mask & maps["brain"]) > 0.99 * mask.sum()


def test_trended_and_detrended_signals_differ_like_the_walkthrough(runs) -> None:
    import daskmask as dm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trended = dm.NiftiMasker(mask_strategy="epi").fit_transform(runs.raw).to_numpy()
        detrended = dm.NiftiMasker(mask_strategy="epi", detrend=True).fit_transform(runs.raw)
    detrended = detrended.to_numpy()
    assert 300 < trended.mean() < 2000  # a mean in the hundreds
    assert abs(detrended.mean()) < 0.005  # prints as 0.00
    assert detrended.std() < 0.2 * trended.std()  # the std drops
    assert detrended.std() > 1  # fluctuations are left


# -- the cache ----------------------------------------------------------------------------


def test_generation_is_deterministic(runs: WalkthroughRuns, tmp_path: Path) -> None:
    again = load_walkthrough_runs(tmp_path)
    assert again.raw.read_bytes() == runs.raw.read_bytes()
    assert again.masked.read_bytes() == runs.masked.read_bytes()
    assert again.occipital.read_bytes() == runs.occipital.read_bytes()


def test_cache_is_reused_not_rewritten(runs: WalkthroughRuns) -> None:
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in runs]
    start = time.perf_counter()
    again = load_walkthrough_runs(runs.raw.parents[1])
    assert time.perf_counter() - start < 0.5
    assert again == runs
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in again] == before
    assert sorted(p.name for p in runs.raw.parents[1].iterdir()) == [runs.raw.parent.name]


def test_cache_folder_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "mine"))
    assert data_home() == tmp_path / "mine"
    assert data_home(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv(DATA_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "daskmask"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_home() == Path.home() / ".cache" / "daskmask"


def test_a_killed_generation_leaves_no_run_and_the_next_call_completes(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", GENERATE, str(tmp_path)])
    final = tmp_path / f"walkthrough-v{GENERATOR_VERSION}"
    deadline = time.monotonic() + 60
    # Kill it while it writes (its hidden folder exists), before it publishes.
    while not any(p.name.endswith(".partial") for p in tmp_path.glob(".*")):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not final.exists()
    runs = load_walkthrough_runs(tmp_path)
    assert nib.load(runs.raw).shape[-1] == N_VOLUMES


def test_concurrent_first_calls_agree(runs: WalkthroughRuns, tmp_path: Path) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", GENERATE, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert outputs[0] == outputs[1]
    published = load_walkthrough_runs(tmp_path)
    assert published.raw.read_bytes() == runs.raw.read_bytes()
    # The loser's hidden folder is removed: only the published folder is left.
    assert [p.name for p in tmp_path.iterdir()] == [published.raw.parent.name]


@pytest.mark.parametrize("missing", ["masked", "occipital"])
def test_an_incomplete_cache_folder_is_regenerated(
    runs: WalkthroughRuns, tmp_path, missing: str
) -> None:
    first = load_walkthrough_runs(tmp_path)
    getattr(first, missing).unlink()
    again = load_walkthrough_runs(tmp_path)
    assert getattr(again, missing).read_bytes() == getattr(runs, missing).read_bytes()


def test_an_unwritable_cache_folder_is_a_typed_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match=r"a-file.*DASKMASK_DATA"):
        load_walkthrough_runs(blocker / "cache")
