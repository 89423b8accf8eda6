from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from daskmask.datasets import (
    epi_tissue_maps,
    generate_epi,
    generate_epi_volume,
    iter_epi_volumes,
    load_sample,
    sample_paths,
    write_nifti_volumes,
)

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
SMALL_SHAPE = (20, 22, 12)


def _load(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    image = nib.load(path)
    return image, np.asanyarray(image.dataobj)


def _raw_header(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        return np.frombuffer(stream.read(348), dtype=nib.nifti1.header_dtype)[0]


def _lag1_autocorrelation(series: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each row after removing a linear trend."""
    time = np.arange(series.shape[1], dtype=float)
    design = np.column_stack([np.ones_like(time), time])
    coefficients, *_ = np.linalg.lstsq(design, series.T, rcond=None)
    residuals = series - (design @ coefficients).T
    numerator = np.sum(residuals[:, 1:] * residuals[:, :-1], axis=1)
    return numerator / np.sum(residuals**2, axis=1)


# -- real samples -------------------------------------------------------------------------


def test_load_sample_is_nibabels_example4d():
    path = load_sample()
    assert path.is_file()
    assert path.name == "example4d.nii.gz"
    image = nib.load(path)
    assert image.shape == (128, 96, 24, 2)
    assert image.header.get_zooms()[3] == pytest.approx(2000.0)
    # Oblique: the rotation part of the affine is not diagonal.
    rotation = image.affine[:3, :3]
    assert np.count_nonzero(np.abs(rotation - np.diag(np.diag(rotation))) > 1e-3) > 0
    reference = NIBABEL_DATA / "example4d.nii.gz"
    if reference.is_file():
        assert path.read_bytes() == reference.read_bytes()


def test_sample_paths_lists_available_real_runs():
    paths = sample_paths()
    assert paths["example4d"] == load_sample()
    expected = {"example4d"}
    if importlib.util.find_spec("nitime") is not None:
        expected.add("fmri1")
        assert paths["fmri1"] == Path(
            str(importlib.resources.files("nitime").joinpath("data", "fmri1.nii.gz"))
        )
    if importlib.util.find_spec("nipy") is not None:
        expected.add("functional")
        assert paths["functional"] == Path(
            str(importlib.resources.files("nipy").joinpath("testing", "functional.nii.gz"))
        )
    assert set(paths) == expected
    for path in paths.values():
        image = nib.load(path)
        assert image.ndim == 4
        assert image.shape[3] >= 2


def test_sample_paths_does_not_import_the_heavy_packages():
    code = (
        "import sys, json\n"
        "from daskmask.datasets import sample_paths\n"
        "paths = sample_paths()\n"
        "print(json.dumps([sorted(paths), 'nitime' in sys.modules, 'nipy' in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    names, nitime_imported, nipy_imported = json.loads(result.stdout.splitlines()[-1])
    assert "example4d" in names
    assert not nitime_imported
    assert not nipy_imported


# -- generate_epi: file format ------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", ["int16", "float32"])
@pytest.mark.parametrize("kind", ["raw", "skull-stripped"])
def test_generate_epi_writes_a_loadable_run(tmp_path, suffix, dtype, kind):
    n_timepoints = 4
    path = generate_epi(
        tmp_path / f"run{suffix}", SMALL_SHAPE, n_timepoints, kind=kind, dtype=dtype, t_r=1.5
    )
    assert path == tmp_path / f"run{suffix}"
    assert sorted(tmp_path.iterdir()) == [path]
    image, data = _load(path)
    assert image.shape == (*SMALL_SHAPE, n_timepoints)
    assert image.get_data_dtype() == np.dtype(dtype)
    assert data.dtype == np.dtype(dtype)
    # Default affine: axis-aligned 3 mm RAS+, world origin at the grid centre.
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    centre = image.affine @ np.array([*((np.array(SMALL_SHAPE) - 1) / 2.0), 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-6)
    np.testing.assert_allclose(image.header.get_zooms(), (3.0, 3.0, 3.0, 1.5))
    assert image.header.get_xyzt_units() == ("mm", "sec")
    header = _raw_header(path)
    assert header["vox_offset"] == 352
    assert bytes(header["magic"]) == b"n+1"
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    expected = np.stack(
        [
            generate_epi_volume(t, SMALL_SHAPE, n_timepoints, kind=kind, dtype=dtype, t_r=1.5)
            for t in range(n_timepoints)
        ],
        axis=-1,
    )
    np.testing.assert_array_equal(data, expected)


def test_odd_shape_and_oblique_affine_round_trip(tmp_path):
    shape = (7, 9, 5)
    oblique = nib.load(load_sample()).affine
    path = generate_epi(tmp_path / "odd.nii.gz", shape, 3, affine=oblique, t_r=0.8)
    image, data = _load(path)
    assert data.shape == (7, 9, 5, 3)
    np.testing.assert_allclose(image.affine, oblique, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(image.header.get_zooms()[:3], nib.affines.voxel_sizes(oblique))
    assert image.header.get_zooms()[3] == pytest.approx(0.8)
    # Raw: a head in the middle of a noisy, almost never zero (Rayleigh) background.
    assert np.mean(data == 0) < 0.01
    assert data[3, 4, 2].min() > 5 * data[0, 0, 0].max()


def test_float32_run_is_the_unrounded_int16_run():
    as_float = generate_epi_volume(2, SMALL_SHAPE, 5, dtype="float32", seed=3)
    as_int = generate_epi_volume(2, SMALL_SHAPE, 5, dtype="int16", seed=3)
    np.testing.assert_array_equal(np.rint(as_float).astype(np.int16), as_int)
    assert np.any(as_float != np.rint(as_float))


# -- determinism and streaming ------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_same_arguments_give_byte_identical_files(tmp_path, suffix):
    first = generate_epi(tmp_path / f"a{suffix}", SMALL_SHAPE, 5, seed=7)
    second = generate_epi(tmp_path / f"b{suffix}", SMALL_SHAPE, 5, seed=7, chunk_volumes=2)
    other_seed = generate_epi(tmp_path / f"c{suffix}", SMALL_SHAPE, 5, seed=8)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other_seed.read_bytes()
    if suffix == ".nii.gz":
        raw = first.read_bytes()
        flags, mtime = raw[3], int.from_bytes(raw[4:8], "little")
        assert mtime == 0
        assert not flags & 0x08  # FNAME: no file name stored


@pytest.mark.parametrize("compresslevel", [0, 1, 6])
def test_every_compression_level_loads(tmp_path, compresslevel):
    path = generate_epi(tmp_path / "run.nii.gz", SMALL_SHAPE, 3, compresslevel=compresslevel)
    reference = generate_epi(tmp_path / "run.nii", SMALL_SHAPE, 3)
    np.testing.assert_array_equal(_load(path)[1], _load(reference)[1])


def test_different_seeds_give_different_noise_and_networks():
    first = generate_epi_volume(0, SMALL_SHAPE, 10, seed=0).astype(float)
    second = generate_epi_volume(0, SMALL_SHAPE, 10, seed=1).astype(float)
    assert not np.array_equal(first, second)


def test_volumes_are_independent_of_generation_order():
    arguments = {"shape": SMALL_SHAPE, "n_timepoints": 6, "kind": "skull-stripped", "seed": 2}
    forward = list(iter_epi_volumes(**arguments))
    backward = [generate_epi_volume(t, **arguments) for t in reversed(range(6))][::-1]
    middle = list(iter_epi_volumes(**arguments, start=2, stop=5))
    for t in range(6):
        np.testing.assert_array_equal(forward[t], backward[t])
    for offset, volume in enumerate(middle):
        np.testing.assert_array_equal(volume, forward[2 + offset])
    assert all(volume.flags.f_contiguous for volume in forward)
    # Consecutive volumes differ (noise is drawn per volume).
    assert not np.array_equal(forward[0], forward[1])


def test_streamed_file_matches_independent_volumes(tmp_path):
    path = generate_epi(tmp_path / "run.nii.gz", SMALL_SHAPE, 8, seed=5, chunk_volumes=3)
    image = nib.load(path)
    for t in (0, 3, 7):
        np.testing.assert_array_equal(
            np.asanyarray(image.dataobj[..., t]), generate_epi_volume(t, SMALL_SHAPE, 8, seed=5)
        )


# -- realism ------------------------------------------------------------------------------

REALISM_SHAPE = (40, 44, 30)
REALISM_T = 60


@pytest.fixture(scope="module")
def realistic_runs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("realism")
    runs = {
        kind: generate_epi(
            directory / f"{kind}.nii.gz", REALISM_SHAPE, REALISM_T, kind=kind, seed=11
        )
        for kind in ("raw", "skull-stripped")
    }
    return runs, epi_tissue_maps(REALISM_SHAPE, seed=11)


def test_skull_stripped_background_is_exactly_zero(realistic_runs):
    runs, tissues = realistic_runs
    data = _load(runs["skull-stripped"])[1]
    brain = tissues["brain"]
    assert np.all(data[~brain] == 0)
    assert np.all(data[brain] != 0)


def test_raw_background_is_noisy_and_non_zero(realistic_runs):
    runs, tissues = realistic_runs
    data = _load(runs["raw"])[1].astype(float)
    background = data[~tissues["head"]]
    assert np.mean(background == 0) < 0.01
    assert background.std() > 3.0
    # Rayleigh-like floor, far below the tissue signal.
    assert 0 < np.median(background) < 0.1 * np.median(data[tissues["brain"]])


def test_epi_tissue_contrast_and_int16_scaling(realistic_runs):
    runs, tissues = realistic_runs
    mean = _load(runs["raw"])[1].astype(float).mean(axis=-1)
    pure = {tissue: tissues[tissue] > 0.8 for tissue in ("csf", "gm", "wm")}
    assert all(mask.sum() > 20 for mask in pure.values())
    csf, gm, wm = (mean[pure[tissue]].mean() for tissue in ("csf", "gm", "wm"))
    assert csf > gm > wm
    assert 500 < mean[tissues["brain"]].mean() < 1500
    fractions = sum(tissues[tissue] for tissue in ("scalp", "skull", "csf", "gm", "wm"))
    assert fractions.max() <= 1.0 + 1e-5


def test_temporal_signal_has_drift_and_low_frequency_bold(realistic_runs):
    runs, tissues = realistic_runs
    data = _load(runs["skull-stripped"])[1].astype(float)
    brain_series = data[tissues["brain"]]
    assert np.all(brain_series.std(axis=1) > 0)
    global_signal = brain_series.mean(axis=0)
    time = np.arange(REALISM_T)
    assert np.corrcoef(time, global_signal)[0, 1] > 0.5
    slope, _ = np.polyfit(time, global_signal, 1)
    assert slope * (REALISM_T - 1) > 0.005 * global_signal.mean()
    # BOLD fluctuations are smooth (0.01-0.1 Hz at TR 2 s): grey matter is autocorrelated
    # after detrending, whereas raw air is white noise.
    grey = data[tissues["gm"] > 0.8]
    assert np.median(_lag1_autocorrelation(grey)) > 0.2
    air = _load(runs["raw"])[1].astype(float)[~tissues["head"]]
    assert abs(np.median(_lag1_autocorrelation(air))) < 0.1


def test_nilearn_masks_find_the_brain(realistic_runs):
    from nilearn.masking import compute_background_mask, compute_epi_mask

    runs, tissues = realistic_runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epi_mask = compute_epi_mask(runs["raw"]).get_fdata().astype(bool)
        background_mask = compute_background_mask(runs["skull-stripped"]).get_fdata()
    brain, head = tissues["brain"], tissues["head"]
    assert 0 < epi_mask.sum() < epi_mask.size
    assert (epi_mask & brain).sum() >= 0.95 * brain.sum()
    assert (epi_mask & ~head).sum() <= 0.1 * (~head).sum()
    np.testing.assert_array_equal(background_mask.astype(bool), brain)


# -- bounded memory -----------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["skull-stripped", pytest.param("raw", marks=pytest.mark.slow)])
def test_generation_memory_is_bounded_by_a_few_volumes(tmp_path, kind):
    # ~1.5 GB of float32 in 640 volumes of 2.25 MiB, generated in a fresh process that
    # reports its resident memory after the imports and its peak (VmHWM) at the end.
    # (ru_maxrss would not do: Linux carries it over from the forking pytest process.)
    target = tmp_path / "big.nii"
    code = textwrap.dedent(
        f"""
        import json
        from daskmask.datasets import generate_epi

        def status_kib(field):
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])

        baseline = status_kib("VmRSS")
        generate_epi({str(target)!r}, (96, 96, 64), 640, kind={kind!r}, dtype="float32")
        print(json.dumps([baseline, status_kib("VmHWM")]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    baseline_kib, peak_kib = json.loads(result.stdout.splitlines()[-1])
    size = target.stat().st_size
    target.unlink()
    assert size == 352 + 96 * 96 * 64 * 640 * 4
    assert size > 1.4e9
    # A volume is 2.25 MiB; the generator and the 16 MiB write buffer stay far below the
    # file size.
    assert (peak_kib - baseline_kib) * 1024 < size / 15
    assert peak_kib * 1024 < 500e6


# -- errors and atomic writes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"shape": (4, 4)}, ValueError, "3 elements"),
        ({"shape": (4, 4, 0)}, ValueError, "positive"),
        ({"shape": (4, 4, 2.5)}, TypeError, "ints"),
        ({"shape": "444"}, TypeError, "sequence"),
        ({"n_timepoints": 0}, ValueError, "n_timepoints"),
        ({"n_timepoints": 2.0}, TypeError, "n_timepoints"),
        ({"kind": "preprocessed"}, ValueError, "kind"),
        ({"dtype": "float64"}, ValueError, "dtype"),
        ({"dtype": "not-a-dtype"}, TypeError, "dtype"),
        ({"t_r": 0.0}, ValueError, "t_r"),
        ({"t_r": float("nan")}, ValueError, "t_r"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"voxel_size": (3.0, 3.0)}, ValueError, "voxel_size"),
        ({"voxel_size": (3.0, -1.0, 3.0)}, ValueError, "voxel_size"),
        ({"affine": np.eye(3)}, ValueError, "4x4"),
        ({"affine": np.zeros((4, 4))}, ValueError, "last row"),
        (
            {"affine": np.diag([2.0, 2.0, 2.0, 1.0]), "voxel_size": (3, 3, 3)},
            ValueError,
            "disagrees",
        ),
        ({"compresslevel": 10}, ValueError, "compresslevel"),
        ({"chunk_volumes": 0}, ValueError, "chunk_volumes"),
    ],
)
def test_generate_epi_rejects_bad_arguments(tmp_path, arguments, error, match):
    full = {"shape": (4, 4, 3), "n_timepoints": 2, **arguments}
    with pytest.raises(error, match=match):
        generate_epi(tmp_path / "run.nii.gz", **full)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["run.nii.bz2", "run.img", "run", ".nii", "run.NII.gz.tmp"])
def test_generate_epi_rejects_non_nifti_names(tmp_path, name):
    with pytest.raises(ValueError, match=r"\.nii"):
        generate_epi(tmp_path / name, (4, 4, 3), 2)
    assert list(tmp_path.iterdir()) == []


def test_volume_index_is_checked():
    with pytest.raises(ValueError, match="volume index"):
        generate_epi_volume(5, (4, 4, 3), 5)
    with pytest.raises(TypeError, match="int"):
        generate_epi_volume(1.0, (4, 4, 3), 5)
    with pytest.raises(ValueError, match="start"):
        iter_epi_volumes((4, 4, 3), 5, start=3, stop=2)


def test_missing_directory_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        generate_epi(tmp_path / "missing" / "run.nii", (4, 4, 3), 2)
    assert list(tmp_path.iterdir()) == []


def _volumes_then(failure: BaseException, n_good: int, shape: tuple[int, int, int]):
    for t in range(n_good):
        yield np.full(shape, t, dtype=np.int16)
    raise failure


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_interrupted_write_leaves_no_file_and_keeps_the_old_one(tmp_path, suffix):
    shape = (6, 5, 4)
    target = tmp_path / f"run{suffix}"
    with pytest.raises(KeyboardInterrupt):
        write_nifti_volumes(
            target,
            _volumes_then(KeyboardInterrupt(), 3, shape),
            shape=shape,
            n_timepoints=10,
            dtype="int16",
            affine=np.eye(4),
            t_r=2.0,
            chunk_volumes=1,
        )
    assert list(tmp_path.iterdir()) == []
    # A complete file already at the target survives a failed rewrite unchanged.
    generate_epi(target, shape, 2)
    previous = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_nifti_volumes(
            target,
            _volumes_then(RuntimeError("disk on fire"), 2, shape),
            shape=shape,
            n_timepoints=4,
            dtype="int16",
            affine=np.eye(4),
            t_r=2.0,
        )
    assert sorted(tmp_path.iterdir()) == [target]
    assert target.read_bytes() == previous


@pytest.mark.parametrize(
    ("volumes", "error", "match"),
    [
        ([np.zeros((6, 5, 4), np.int16)] * 2 + [np.zeros((6, 5, 4))], TypeError, "data type"),
        ([np.zeros((6, 5, 4), np.int16), np.zeros((6, 5, 3), np.int16)], ValueError, "shape"),
        ([np.zeros((6, 5, 4), np.int16)] * 2, ValueError, "Got 2 volumes"),
        ([np.zeros((6, 5, 4), np.int16)] * 4, ValueError, "more than"),
    ],
)
def test_bad_volume_found_late_leaves_no_file(tmp_path, volumes, error, match):
    with pytest.raises(error, match=match):
        write_nifti_volumes(
            tmp_path / "run.nii.gz",
            iter(volumes),
            shape=(6, 5, 4),
            n_timepoints=3,
            dtype="int16",
            affine=np.eye(4),
            t_r=2.0,
        )
    assert list(tmp_path.iterdir()) == []


# -- the writer against nibabel -----------------------------------------------------------


@pytest.mark.parametrize("chunk_volumes", [None, 1, 3])
@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8"])
def test_writer_matches_nibabel(tmp_path, chunk_volumes, dtype):
    rng = np.random.default_rng(0)
    data = (rng.uniform(0, 200, size=(5, 6, 7, 4))).astype(dtype)
    affine = nib.load(load_sample()).affine
    streamed = write_nifti_volumes(
        tmp_path / "streamed.nii",
        (data[..., t] for t in range(4)),
        shape=(5, 6, 7),
        n_timepoints=4,
        dtype=dtype,
        affine=affine,
        t_r=2.5,
        chunk_volumes=chunk_volumes,
    )
    image, loaded = _load(streamed)
    np.testing.assert_array_equal(loaded, data)
    assert loaded.dtype == np.dtype(dtype)
    np.testing.assert_allclose(image.affine, affine, rtol=1e-5, atol=1e-4)
    # nibabel writing the same array with the same header gives the same bytes.
    reference = tmp_path / "reference.nii"
    nib.Nifti1Image(data, image.affine, header=image.header).to_filename(reference)
    assert streamed.read_bytes()[352:] == reference.read_bytes()[352:]
    assert _raw_header(streamed)["vox_offset"] == _raw_header(reference)["vox_offset"]
