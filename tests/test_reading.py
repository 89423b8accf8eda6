"""Tests of daskmask.reading.open_nifti against nibabel, on real files."""

from __future__ import annotations

import gzip
import importlib.resources
import os
import pickle
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskmask.exceptions import DimensionError, NiftiFileNotFoundError, NiftiReadError
from daskmask.reading import open_nifti
from daskmask.reading._array import NiftiArrayWrapper, StackedNiftiArray, spec_from_proxy
from daskmask.reading._chunks import plan_time_chunks

# ---------------------------------------------------------------------------
# Writing test files
# ---------------------------------------------------------------------------

NIFTI_DTYPES = [
    "uint8",
    "int8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "RGB",
    "RGBA",
]


def random_data(shape: tuple[int, ...], dtype_name: str, rng: np.random.Generator) -> np.ndarray:
    """Random values spanning the dtype's range (with NaN/inf for floats)."""
    if dtype_name in ("RGB", "RGBA"):
        header = nib.Nifti1Header()
        header.set_data_dtype(dtype_name)
        dtype = header.get_data_dtype()
        raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
        return raw.view(dtype).reshape(shape)
    dtype = np.dtype(dtype_name)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    real = rng.standard_normal(shape) * 1e3
    if dtype.kind == "c":
        data = (real + 1j * rng.standard_normal(shape)).astype(dtype)
    else:
        data = real.astype(dtype)
    flat = data.reshape(-1)
    if flat.size >= 3:
        flat[0], flat[1], flat[2] = np.nan, np.inf, -np.inf
    return data


def write_nifti(
    path: Path,
    data: np.ndarray,
    *,
    dtype_name: str | None = None,
    version: int = 1,
    big_endian: bool = False,
    slope: float | None = None,
    inter: float | None = None,
    extra_offset: int = 0,
    affine: np.ndarray | None = None,
    t_r: float = 2.0,
    time_unit: str = "sec",
) -> Path:
    """Write a NIfTI file byte by byte, controlling every header field we test.

    ``.gz`` paths are gzip-compressed. The data are stored as given (no
    scaling computed by nibabel), so slope/intercept are exactly ours.
    """
    header = (nib.Nifti1Header if version == 1 else nib.Nifti2Header)(
        endianness=">" if big_endian else "<"
    )
    header.set_data_dtype(dtype_name or data.dtype)
    header.set_data_shape(data.shape)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header.set_xyzt_units("mm", time_unit)
    zooms = [2.0] * min(data.ndim, 3) + [t_r] * (data.ndim > 3) + [1.0] * max(0, data.ndim - 4)
    header.set_zooms(zooms)
    if slope is not None:
        header["scl_slope"] = slope
    if inter is not None:
        header["scl_inter"] = inter
    offset = header.single_vox_offset + extra_offset
    header.set_data_offset(offset)
    on_disk = np.asarray(data).astype(header.get_data_dtype())
    block = header.binaryblock
    payload = block + bytes(offset - len(block)) + on_disk.tobytes(order="F")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as stream:
        stream.write(payload)
    return path


def nibabel_data(path: Path | str) -> np.ndarray:
    """The oracle: what nibabel gives for the file's data object."""
    return np.asanyarray(nib.load(path).dataobj)


def n_tasks(array: xr.DataArray) -> int:
    return len(dict(array.data.__dask_graph__()))


def assert_same_data(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # NaNs compare equal


def sample_path(package: str, relative: str) -> Path:
    path = importlib.resources.files(package) / relative
    if not path.is_file():
        pytest.skip(f"{package} sample {relative} not installed")
    return Path(str(path))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def run_4d(tmp_path: Path, rng: np.random.Generator) -> Path:
    data = rng.standard_normal((5, 6, 7, 12)).astype(np.float32)
    return write_nifti(tmp_path / "sub-01_task-rest_bold.nii.gz", data)


# ---------------------------------------------------------------------------
# Property test against nibabel
# ---------------------------------------------------------------------------


@st.composite
def nifti_cases(draw: st.DrawFn) -> dict:
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(3))
    four_d = draw(st.booleans())
    shape = (*spatial, draw(st.integers(1, 5))) if four_d else spatial
    dtype_name = draw(st.sampled_from(NIFTI_DTYPES))
    scaled = dtype_name not in ("RGB", "RGBA") and draw(st.booleans())
    return {
        "shape": shape,
        "dtype_name": dtype_name,
        "version": draw(st.sampled_from([1, 2])),
        "big_endian": draw(st.booleans()),
        "slope": draw(st.sampled_from([2.5, -0.5, 3e4, 0.0])) if scaled else None,
        "inter": draw(st.sampled_from([0.0, 1.5, -100.0])) if scaled else None,
        "extra_offset": draw(st.sampled_from([0, 16, 256])),
        "suffix": draw(st.sampled_from([".nii", ".nii.gz"])),
        "chunks": draw(st.one_of(st.just("auto"), st.integers(1, 6), st.just("64B"))),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


# inf * slope and NaN casts warn in nibabel's scaling, for the oracle and for us alike
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=nifti_cases())
def test_values_and_dtype_equal_nibabel(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    data = random_data(case["shape"], case["dtype_name"], rng)
    with tempfile.TemporaryDirectory() as directory:
        path = write_nifti(
            Path(directory) / f"image{case['suffix']}",
            data,
            dtype_name=case["dtype_name"],
            version=case["version"],
            big_endian=case["big_endian"],
            slope=case["slope"],
            inter=case["inter"],
            extra_offset=case["extra_offset"],
        )
        expected = nibabel_data(path)
        array = open_nifti(path, chunks=case["chunks"])
        # dtype is known before any data are read
        assert array.dtype == expected.dtype
        assert array.dims == ("x", "y", "z", "time")[: expected.ndim]
        assert array.attrs["nifti_version"] == case["version"]
        assert array.attrs["on_disk_dtype"] == str(nib.load(path).get_data_dtype())
        assert n_tasks(array) == array.data.npartitions
        expected_chunks = plan_time_chunks(expected.shape, expected.dtype.itemsize, case["chunks"])
        assert array.chunks == expected_chunks
        assert_same_data(array.values, expected)
        # a sub-selection goes through the same path
        if expected.ndim == 4:
            assert_same_data(array[:, -1, ::2, 1:].values, expected[:, -1, ::2, 1:])


def test_wrapper_dtype_equals_nibabel_without_reading(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    for version, slope, inter in [(1, 2.0, 1.0), (2, 2.0, 1.0), (1, None, None), (1, 1.0, 3.0)]:
        path = write_nifti(
            tmp_path / f"s{version}{slope}{inter}.nii",
            data,
            version=version,
            slope=slope,
            inter=inter,
        )
        wrapper = NiftiArrayWrapper(spec_from_proxy(nib.load(path).dataobj))
        assert wrapper.dtype == nibabel_data(path).dtype


def test_big_endian_header_written_by_nibabel(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(-1000, 1000, size=(3, 4, 5, 6), dtype=np.int16)
    header = nib.Nifti1Header(endianness=">")
    image = nib.Nifti1Image(data, np.eye(4), header=header)
    image.header.set_data_dtype(np.int16)
    path = tmp_path / "big.nii"
    nib.save(image, path)
    assert nib.load(path).header.endianness == ">"
    assert_same_data(open_nifti(path, chunks=2).values, nibabel_data(path))


def test_byteswapped_header(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((3, 4, 5, 3))
    image = nib.Nifti1Image(data, np.eye(4))
    swapped = nib.Nifti1Image(data, np.eye(4), header=image.header.as_byteswapped(">"))
    path = tmp_path / "swapped.nii.gz"
    nib.save(swapped, path)
    assert_same_data(open_nifti(path).values, nibabel_data(path))


# ---------------------------------------------------------------------------
# Real samples
# ---------------------------------------------------------------------------


def test_example4d_sample_oblique_and_tr_in_ms() -> None:
    path = sample_path("nibabel", "tests/data/example4d.nii.gz")
    image = nib.load(path)
    array = open_nifti(path)
    assert_same_data(array.values, nibabel_data(path))
    np.testing.assert_array_equal(array.attrs["affine"], image.affine)
    assert array.attrs["affine"].dtype == np.float64
    # the header stores 2000 labelled "sec": an old FSL millisecond TR
    assert image.header.get_zooms()[3] == 2000
    assert array.attrs["t_r"] == pytest.approx(2.0)
    np.testing.assert_allclose(array["time"].values, np.arange(image.shape[3]) * 2.0)
    assert array.name == "example4d"
    assert array.attrs["source"] == str(path)
    assert array.attrs["xyz_units"] == "mm"


def test_nitime_sample() -> None:
    path = sample_path("nitime", "data/fmri1.nii.gz")
    array = open_nifti(path, chunks=7)
    assert_same_data(array.values, nibabel_data(path))
    assert array.attrs["t_r"] == pytest.approx(float(nib.load(path).header.get_zooms()[3]))
    assert n_tasks(array) == len(array.chunks[3]) == int(np.ceil(array.shape[3] / 7))


def test_nipy_sample_with_scaling() -> None:
    path = sample_path("nipy", "testing/functional.nii.gz")
    proxy = nib.load(path).dataobj
    assert (proxy.slope, proxy.inter) != (1.0, 0.0)
    array = open_nifti(path, chunks=3)
    assert array.dtype == np.float64  # scaled int16, as nibabel gives it
    assert_same_data(array.values, nibabel_data(path))


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "raw", "seconds"),
    [("sec", 1.5, 1.5), ("msec", 720.0, 0.72), ("usec", 2_000_000.0, 2.0)],
)
def test_t_r_converted_to_seconds(tmp_path: Path, unit: str, raw: float, seconds: float) -> None:
    data = np.zeros((2, 2, 2, 4), dtype=np.float32)
    path = write_nifti(tmp_path / "tr.nii", data, t_r=raw, time_unit=unit)
    array = open_nifti(path)
    assert array.attrs["t_r"] == pytest.approx(seconds)
    assert array.attrs["time_units"] == unit
    np.testing.assert_allclose(array["time"].values, np.arange(4) * seconds)


def test_no_t_r_gives_index_time(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "no_tr.nii", np.zeros((2, 2, 2, 3), np.uint8), t_r=0.0)
    array = open_nifti(path)
    assert array.attrs["t_r"] is None
    np.testing.assert_array_equal(array["time"].values, np.arange(3))
    for dim, size in zip("xyz", array.shape, strict=False):
        np.testing.assert_array_equal(array[dim].values, np.arange(size))


def test_3d_image_has_no_time(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "anat.nii", np.ones((3, 4, 5), np.int16))
    array = open_nifti(path)
    assert array.dims == ("x", "y", "z")
    assert array.attrs["t_r"] is None
    assert array.name == "anat"


def test_2d_image_dims(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "slice.nii", np.arange(12, dtype=np.float32).reshape(3, 4))
    array = open_nifti(path)
    assert array.dims == ("x", "y")
    assert_same_data(array.values, nibabel_data(path))


def test_5d_with_singleton_extra_dims_is_squeezed(tmp_path: Path, rng) -> None:
    data = rng.standard_normal((2, 3, 4, 5, 1, 1)).astype(np.float32)
    path = write_nifti(tmp_path / "five.nii.gz", data)
    array = open_nifti(path, chunks=2)
    assert array.dims == ("x", "y", "z", "time")
    assert_same_data(array.values, nibabel_data(path)[:, :, :, :, 0, 0])


def test_5d_with_real_extra_dim_is_rejected(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "vectors.nii", np.zeros((2, 3, 4, 1, 3), np.float32))
    with pytest.raises(DimensionError, match="vectors.nii"):
        open_nifti(path)


def test_nifti_pair(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 100, size=(3, 4, 5, 6), dtype=np.int16)
    path = tmp_path / "pair.img"
    nib.save(nib.Nifti1Pair(data, np.eye(4)), path)
    array = open_nifti(tmp_path / "pair.hdr", chunks=4)
    assert_same_data(array.values, nibabel_data(tmp_path / "pair.hdr"))
    assert array.name == "pair"


# ---------------------------------------------------------------------------
# Sources: paths, globs, lists, nibabel images, DataArrays
# ---------------------------------------------------------------------------


def test_path_forms_are_equivalent(run_4d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(run_4d.parent))
    by_str = open_nifti(str(run_4d))
    by_path = open_nifti(run_4d)
    by_home = open_nifti("~/" + run_4d.name)
    xr.testing.assert_identical(by_str.drop_attrs(), by_path.drop_attrs())
    xr.testing.assert_identical(by_str.drop_attrs(), by_home.drop_attrs())
    assert by_str.name == "sub-01_task-rest_bold"
    assert by_str.data.name == by_path.data.name  # deterministic graph names


def test_graph_name_changes_when_file_changes(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "a.nii", np.zeros((2, 2, 2, 3), np.float32))
    first = open_nifti(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert open_nifti(path).data.name != first.data.name
    assert open_nifti(path, chunks=1).data.name != open_nifti(path, chunks=2).data.name


def test_list_of_3d_files_stacked_in_few_tasks(tmp_path: Path, rng) -> None:
    volumes = [rng.standard_normal((3, 4, 5)).astype(np.float32) for _ in range(30)]
    paths = [write_nifti(tmp_path / f"vol{i:03d}.nii.gz", v) for i, v in enumerate(volumes)]
    array = open_nifti(paths, chunks=8)
    assert array.dims == ("x", "y", "z", "time")
    assert n_tasks(array) == 4  # 30 files, 8 volumes per chunk
    assert_same_data(array.values, np.stack([nibabel_data(p) for p in paths], axis=-1))
    assert array.attrs["source"] == [str(p) for p in paths]
    assert array.attrs["t_r"] is None


def test_stacked_array_indexing_matches_numpy(tmp_path: Path, rng) -> None:
    volumes = [rng.standard_normal((3, 4, 5, n)).astype(np.float32) for n in (2, 1, 3)]
    paths = [write_nifti(tmp_path / f"run{i}.nii", v) for i, v in enumerate(volumes)]
    paths.append(write_nifti(tmp_path / "run3.nii", rng.standard_normal((3, 4, 5))))
    expected = np.concatenate(
        [nibabel_data(p).reshape(3, 4, 5, -1) for p in paths], axis=-1
    ).astype(np.float64)
    stacked = StackedNiftiArray(
        [NiftiArrayWrapper(spec_from_proxy(nib.load(p).dataobj)) for p in paths]
    )
    assert stacked.shape == expected.shape
    assert stacked.dtype == expected.dtype
    for key in [
        (slice(None),) * 4,
        (0, slice(1, 3), slice(None), slice(1, 6)),
        (slice(None), 2, slice(None, None, 2), 4),
        (slice(None), slice(None), slice(None), slice(None, None, -2)),
        (slice(None), slice(None), slice(None), -1),
        (slice(None), slice(None), slice(None), slice(3, 3)),
    ]:
        assert_same_data(stacked[key], expected[key])
    restored = pickle.loads(pickle.dumps(stacked))
    assert_same_data(restored[(slice(None),) * 4], expected)


def test_list_of_4d_files_concatenated_on_request(tmp_path: Path, rng) -> None:
    runs = [rng.integers(0, 50, size=(3, 3, 3, n), dtype=np.int16) for n in (4, 7, 2)]
    paths = [write_nifti(tmp_path / f"run{i}.nii", r, slope=0.5) for i, r in enumerate(runs)]
    # a list of runs is 5D (nilearn refuses it too): concatenation is asked for
    with pytest.raises(DimensionError, match=r"list of 3 images of which 3 4D.*MultiNiftiMasker"):
        open_nifti(paths)
    with pytest.raises(ValueError, match="concat must be None or 'time'"):
        open_nifti(paths, concat="space")
    array = open_nifti(paths, chunks=3, concat="time")
    expected = np.concatenate([nibabel_data(p) for p in paths], axis=-1)
    assert array.chunks[3] == (3, 3, 3, 3, 1)
    assert_same_data(array.values, expected)
    assert array.attrs["t_r"] == pytest.approx(2.0)


def test_glob_sorted_and_expanded(tmp_path: Path, rng, monkeypatch) -> None:
    names = ["b.nii", "a.nii", "c.nii"]
    paths = [write_nifti(tmp_path / n, rng.standard_normal((2, 3, 4))) for n in names]
    (tmp_path / "other.txt").write_text("not an image")
    array = open_nifti(str(tmp_path / "?.nii"))
    expected = np.stack([nibabel_data(p) for p in sorted(paths)], axis=-1)
    assert_same_data(array.values, expected)
    assert array.attrs["source"] == sorted(str(p) for p in paths)
    # a glob matching one 3D file still gives a list, i.e. 4D (as nilearn)
    single = open_nifti(str(tmp_path / "a.n*i"))
    assert single.dims == ("x", "y", "z", "time")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_nifti("~/*.nii").shape == array.shape


def test_existing_file_with_glob_characters(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "run[1].nii", np.ones((2, 2, 2, 2), np.float32))
    array = open_nifti(str(path))
    assert array.dims == ("x", "y", "z", "time")
    assert array.attrs["source"] == str(path)


def test_nibabel_image_from_file_is_lazy_and_uses_its_affine(run_4d: Path) -> None:
    image = nib.load(run_4d)
    shifted = image.affine.copy()
    shifted[:3, 3] += 10
    moved = nib.Nifti1Image(image.dataobj, shifted, image.header)
    array = open_nifti(moved, chunks=5)
    np.testing.assert_array_equal(array.attrs["affine"], shifted)
    assert array.attrs["source"] == str(run_4d)
    assert n_tasks(array) == 3
    assert_same_data(array.values, nibabel_data(run_4d))
    # reading goes to the file: the graph holds a picklable file wrapper, not the data
    assert len(pickle.dumps(dict(array.data.__dask_graph__()))) < 10_000


def test_in_memory_nibabel_image(rng: np.random.Generator) -> None:
    data = rng.standard_normal((4, 5, 6, 7)).astype(np.float32)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    image = nib.Nifti1Image(data, affine)
    image.header.set_zooms((3.0, 3.0, 3.0, 0.8))
    array = open_nifti(image, chunks=3)
    assert array.attrs["source"] == "<in-memory Nifti1Image>"
    assert array.attrs["t_r"] == pytest.approx(0.8)
    assert array.chunks[3] == (3, 3, 1)
    assert_same_data(array.values, np.asanyarray(image.dataobj))
    np.testing.assert_array_equal(array.attrs["affine"], affine)


def test_image_with_loaded_data_uses_the_cache_like_nilearn(run_4d: Path) -> None:
    from nilearn.image import get_data

    image = nib.load(run_4d)
    get_data(image)[0, 0, 0, :] = 1234.0  # loads into the image's cache, edited in place
    array = open_nifti(image)
    expected = get_data(image)
    assert_same_data(array.values, expected)
    assert (array[0, 0, 0].values == 1234.0).all()


def test_list_of_3d_images_equals_nilearn_concatenation(tmp_path: Path, rng) -> None:
    from nilearn.image import concat_imgs

    paths = [
        write_nifti(tmp_path / f"v{i}.nii", rng.integers(0, 9, (3, 4, 5), dtype=np.int16))
        for i in range(4)
    ]
    expected = np.asanyarray(concat_imgs(paths).dataobj)
    np.testing.assert_array_equal(open_nifti(paths, chunks=3).values, expected)


def test_list_mixing_files_and_in_memory_images(run_4d: Path, rng) -> None:
    reference = nib.load(run_4d)
    volume = rng.standard_normal(reference.shape[:3])  # float64 in memory
    in_memory = nib.Nifti1Image(volume, reference.affine)
    array = open_nifti([in_memory, run_4d, in_memory], chunks=5, concat="time")
    expected = np.concatenate(
        [volume[..., None], nibabel_data(run_4d), volume[..., None]], axis=-1
    )
    assert array.chunks[3] == (5, 5, 4)
    assert_same_data(array.values, expected)


def test_data_array_returned_unchanged_or_rechunked(run_4d: Path) -> None:
    array = open_nifti(run_4d)
    assert open_nifti(array) is array
    rechunked = open_nifti(array, chunks=5)
    assert rechunked.chunks[3] == (5, 5, 2)
    xr.testing.assert_identical(rechunked.drop_attrs(), array.drop_attrs())
    with pytest.raises(ValueError, match="chunks must be"):
        open_nifti(array, chunks=0)


def test_list_of_data_arrays(run_4d: Path) -> None:
    array = open_nifti(run_4d)
    both = open_nifti([array, array], chunks=6, concat="time")
    assert both.shape[3] == 2 * array.shape[3]
    assert_same_data(both.values, np.concatenate([array.values] * 2, axis=-1))
    assert both.attrs["t_r"] == array.attrs["t_r"]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(NiftiFileNotFoundError, match=r"File not found: '.*nope\.nii\.gz'"):
        open_nifti(missing)
    with pytest.raises(FileNotFoundError):
        open_nifti(str(missing))
    with pytest.raises(ValueError):  # nilearn raises a ValueError
        open_nifti([missing])


def test_glob_without_match(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.nii")
    with pytest.raises(
        NiftiFileNotFoundError, match="No files matching the entered niimg expression"
    ):
        open_nifti(pattern)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii"
    path.write_text("x" * 1000)
    with pytest.raises(NiftiReadError, match="notes.nii"):
        open_nifti(path)
    short = tmp_path / "short.nii"
    short.write_bytes(b"abc")
    with pytest.raises(NiftiReadError, match="only 3 bytes"):
        open_nifti(short)
    with pytest.raises(NiftiReadError, match="is a directory"):
        open_nifti(tmp_path)


def test_corrupt_gzip_header_fails_at_open(tmp_path: Path) -> None:
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    with pytest.raises(NiftiReadError, match=r"bad\.nii\.gz.*gzip stream is corrupt"):
        open_nifti(path)


def test_empty_image(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "empty.nii", np.zeros((3, 0, 2), np.float32))
    with pytest.raises(ValueError, match="The image is empty."):
        open_nifti(path)
    with pytest.raises(ValueError, match="The image is empty."):
        open_nifti(nib.Nifti1Image(np.zeros((2, 2, 2, 0)), np.eye(4)))


@pytest.mark.parametrize(
    ("source", "type_name"), [(3, "int"), (None, "NoneType"), (b"a.nii", "bytes")]
)
def test_wrong_type(source: object, type_name: str) -> None:
    message = (
        f"input should be a NiftiLike object or an iterable of NiftiLike object. Got: {type_name}"
    )
    with pytest.raises(TypeError, match=message):
        open_nifti(source)
    with pytest.raises(TypeError, match=message):
        open_nifti([source])


def test_empty_list() -> None:
    with pytest.raises(TypeError, match="empty list"):
        open_nifti([])


def test_nested_list_is_5d(run_4d: Path) -> None:
    with pytest.raises(DimensionError, match="5D"):
        open_nifti([[run_4d], [run_4d]])


@pytest.mark.parametrize("change", ["affine", "shape"])
def test_list_with_different_fov(tmp_path: Path, change: str) -> None:
    data = np.zeros((3, 4, 5), np.float32)
    first = write_nifti(tmp_path / "first.nii", data)
    if change == "affine":
        second = write_nifti(tmp_path / "second.nii", data, affine=np.diag([3.0, 3, 3, 1]))
    else:
        second = write_nifti(tmp_path / "second.nii", np.zeros((3, 4, 6), np.float32))
    with pytest.raises(ValueError) as raised:
        open_nifti([first, first, second])
    message = str(raised.value)
    assert message.startswith("Field of view of image #2 is different from reference FOV.\n")
    for part in ("Reference affine:\n", "Image affine:\n", "Reference shape:\n", "Image shape:\n"):
        assert part in message


def test_truncated_nii_detected_at_open(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "cut.nii", np.ones((4, 4, 4, 10), np.float32))
    full_size = path.stat().st_size
    with open(path, "r+b") as stream:
        stream.truncate(full_size - 100)
    data_bytes = 4 * 4 * 4 * 10 * 4
    with pytest.raises(NiftiReadError) as raised:
        open_nifti(path)
    message = str(raised.value)
    assert "cut.nii' is truncated" in message
    assert f"promises {data_bytes} bytes of data after offset 352" in message
    assert f"holds only {data_bytes - 100}" in message


def _truncated_gz(tmp_path: Path) -> Path:
    data = np.random.default_rng(1).standard_normal((8, 8, 8, 40)).astype(np.float32)
    path = write_nifti(tmp_path / "cut.nii.gz", data)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    return path


def test_truncated_gz_opens_then_fails_when_read(tmp_path: Path) -> None:
    path = _truncated_gz(tmp_path)
    array = open_nifti(path, chunks=10)
    # the first chunk is intact
    assert_same_data(array[..., :10].values, nibabel_data_prefix(path, 10))
    with pytest.raises(NiftiReadError, match=r"Cannot read volumes \d+-\d+ of '.*cut\.nii\.gz'"):
        array.values  # noqa: B018


def nibabel_data_prefix(path: Path, n_volumes: int) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj[..., :n_volumes])


def test_corrupt_gz_data_fails_when_read(tmp_path: Path) -> None:
    # noise barely compresses: the stream is larger than one gzip read buffer,
    # so opening (which inflates the first buffer) does not reach the damage
    data = np.random.default_rng(2).standard_normal((32, 32, 32, 60)).astype(np.float32)
    path = write_nifti(tmp_path / "damaged.nii.gz", data)
    payload = bytearray(path.read_bytes())
    position = int(len(payload) * 0.8)
    payload[position : position + 500] = b"x" * 500
    path.write_bytes(bytes(payload))
    array = open_nifti(path, chunks=8)
    with pytest.raises(NiftiReadError, match=r"damaged\.nii\.gz"):
        array.values  # noqa: B018


def test_file_removed_after_open(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "gone.nii", np.ones((2, 2, 2, 2), np.float32))
    array = open_nifti(path)
    path.unlink()
    with pytest.raises(NiftiReadError, match="gone.nii"):
        array.values  # noqa: B018


# ---------------------------------------------------------------------------
# Laziness and pickling
# ---------------------------------------------------------------------------


def test_open_reads_no_data(tmp_path: Path) -> None:
    shape = (128, 128, 64, 2048)  # 8 GiB of float32, as a sparse file
    path = write_nifti(tmp_path / "huge.nii", np.zeros((1, 1, 1, 1), np.float32))
    header = nib.load(path).header.copy()
    header.set_data_shape(shape)
    with open(path, "r+b") as stream:
        stream.write(header.binaryblock)
        stream.truncate(352 + int(np.prod(shape)) * 4)
    # a first open imports what opening needs (seconds on a loaded machine when this test
    # runs first); the measured one would read 8 GiB if opening read data
    open_nifti(path)
    tracemalloc.start()
    started = time.perf_counter()
    array = open_nifti(path)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert array.shape == shape
    assert elapsed < 2.0
    assert peak < 20 * 2**20
    # one volume reads one volume
    volume = array[..., 1000].values
    assert volume.shape == shape[:3] and not volume.any()


def test_wrapper_pickles_small(run_4d: Path) -> None:
    wrapper = NiftiArrayWrapper(spec_from_proxy(nib.load(run_4d).dataobj))
    payload = pickle.dumps(wrapper)
    assert len(payload) < 2048
    restored = pickle.loads(payload)
    assert restored.spec == wrapper.spec and restored.dtype == wrapper.dtype
    assert not hasattr(restored, "copy")  # dask.from_array must not copy it
    assert_same_data(restored[(slice(None),) * 4], nibabel_data(run_4d))
    graph = dict(open_nifti(run_4d, chunks=4).data.__dask_graph__())
    assert len(pickle.dumps(graph)) < 3 * 2048


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_compute_on_distributed_cluster(client, tmp_path: Path, rng) -> None:
    data = rng.integers(-500, 500, size=(6, 7, 8, 20), dtype=np.int16)
    path = write_nifti(tmp_path / "dist.nii.gz", data, slope=0.25, inter=3.0)
    array = open_nifti(path, chunks=3)
    result = client.compute(array.data).result()
    assert_same_data(result, nibabel_data(path))
    paths = [write_nifti(tmp_path / f"v{i}.nii", data[..., i]) for i in range(5)]
    stacked = open_nifti(paths, chunks=2)
    assert_same_data(client.compute(stacked.data).result(), data[..., :5])


def test_read_error_survives_distributed(client, tmp_path: Path) -> None:
    path = _truncated_gz(tmp_path)
    array = open_nifti(path, chunks=10)
    future = client.compute(array.data.sum())
    with pytest.raises(NiftiReadError, match=r"cut\.nii\.gz"):
        future.result()


def test_threads_share_the_proxy_cache(run_4d: Path) -> None:
    array = open_nifti(run_4d, chunks=1)
    with dask.config.set(scheduler="threads", num_workers=2):
        result = array.values
    assert_same_data(result, nibabel_data(run_4d))


def test_in_place_rewrite_not_read_through_stale_cache(tmp_path: Path) -> None:
    path = tmp_path / "rewritten.nii.gz"
    write_nifti(path, np.zeros((3, 3, 3, 4), np.float32))
    assert not open_nifti(path).values.any()
    copy = tmp_path / "copy.nii.gz"
    write_nifti(copy, np.ones((3, 3, 3, 4), np.float32))
    shutil.copyfile(copy, path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert open_nifti(path).values.all()
