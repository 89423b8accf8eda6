"""Tests of the xarray "nifti" engine (daskmask.reading.backend)."""

from __future__ import annotations

import gzip
import importlib.resources
import io
import pickle
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from daskmask.exceptions import NiftiFileNotFoundError, NiftiReadError
from daskmask.reading import open_nifti
from daskmask.reading.backend import NiftiBackendEntrypoint


def _save(path: Path, data: np.ndarray, image_class=nib.Nifti1Image, t_r: float = 1.5) -> Path:
    image = image_class(data, np.diag([2.0, 2.5, 3.0, 1.0]))
    if data.ndim == 4:
        image.header.set_zooms((2.0, 2.5, 3.0, t_r))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return path


def _assert_same(left: xr.DataArray, right: xr.DataArray) -> None:
    """Equal values, coords, name, dtype and attrs (attrs hold a NumPy affine)."""
    xr.testing.assert_identical(left.drop_attrs(), right.drop_attrs())
    assert left.dtype == right.dtype
    assert left.attrs.keys() == right.attrs.keys()
    for key, value in left.attrs.items():
        np.testing.assert_array_equal(value, right.attrs[key])


@pytest.fixture
def bold(tmp_path: Path) -> Path:
    data = np.random.default_rng(0).integers(-300, 300, size=(5, 6, 7, 9), dtype=np.int16)
    return _save(tmp_path / "sub-02_task-rest_bold.nii.gz", data)


def test_engine_is_registered() -> None:
    engines = xr.backends.list_engines()
    assert "nifti" in engines
    assert isinstance(engines["nifti"], NiftiBackendEntrypoint)
    assert "NIfTI" in engines["nifti"].description
    assert engines["nifti"].url.startswith("https://")


def test_open_dataarray_equals_open_nifti(bold: Path) -> None:
    via_engine = xr.open_dataarray(bold, engine="nifti", chunks={})
    direct = open_nifti(bold)
    _assert_same(via_engine, direct)
    assert via_engine.name == "sub-02_task-rest_bold"
    assert via_engine.chunks == direct.chunks


def test_preferred_chunks_follow_the_planner(bold: Path) -> None:
    with dask.config.set({"array.chunk-size": f"{5 * 6 * 7 * 2 * 2}B"}):
        via_engine = xr.open_dataarray(bold, engine="nifti", chunks={})
        direct = open_nifti(bold)
    assert via_engine.chunks == direct.chunks == ((5,), (6,), (7,), (2, 2, 2, 2, 1))
    encoding = xr.open_dataarray(bold, engine="nifti").encoding
    assert encoding["preferred_chunks"]["x"] == 5
    assert encoding["preferred_chunks"]["time"] == 9


def test_lazy_without_dask_and_indexing(bold: Path) -> None:
    lazy = xr.open_dataarray(bold, engine="nifti")
    expected = np.asanyarray(nib.load(bold).dataobj)
    # outer/basic selections are composed lazily and only the final key is read
    selection = lazy.isel(x=slice(1, 4), y=2, time=slice(None, None, 3))
    np.testing.assert_array_equal(selection.values, expected[1:4, 2, :, ::3])
    np.testing.assert_array_equal(lazy.isel(z=[0, 3, 5]).values, expected[:, :, [0, 3, 5]])
    assert lazy.values.dtype == expected.dtype


def test_dataset_and_drop_variables(bold: Path) -> None:
    dataset = xr.open_dataset(bold, engine="nifti")
    assert list(dataset.data_vars) == ["sub-02_task-rest_bold"]
    assert dataset["time"].values.tolist() == pytest.approx(np.arange(9) * 1.5)
    dropped = xr.open_dataset(bold, engine="nifti", drop_variables="sub-02_task-rest_bold")
    assert not dropped.data_vars


def test_auto_detected_without_engine(bold: Path) -> None:
    _assert_same(xr.open_dataarray(bold, chunks={}), open_nifti(bold))


def test_example4d_sample() -> None:
    path = Path(str(importlib.resources.files("nibabel") / "tests/data/example4d.nii.gz"))
    _assert_same(xr.open_dataarray(path, engine="nifti", chunks={}), open_nifti(path))


def test_3d_and_nifti2(tmp_path: Path) -> None:
    data = np.random.default_rng(1).standard_normal((4, 5, 6))
    path = _save(tmp_path / "anat.nii", data, image_class=nib.Nifti2Image)
    via_engine = xr.open_dataarray(path, engine="nifti", chunks={})
    assert via_engine.dims == ("x", "y", "z")
    assert via_engine.attrs["nifti_version"] == 2
    _assert_same(via_engine, open_nifti(path))


def test_dataset_pickles(bold: Path) -> None:
    dataarray = xr.open_dataarray(bold, engine="nifti", chunks={})
    restored = pickle.loads(pickle.dumps(dataarray))
    np.testing.assert_array_equal(restored.values, dataarray.values)


def test_errors(tmp_path: Path) -> None:
    backend = NiftiBackendEntrypoint()
    with pytest.raises(NiftiFileNotFoundError, match="File not found"):
        backend.open_dataset(tmp_path / "missing.nii")
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not a header")
    with pytest.raises(NiftiReadError, match="bad.nii"):
        backend.open_dataset(bad)
    with pytest.raises(TypeError, match="by path"):
        backend.open_dataset(io.BytesIO(b""))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("endianness", ["<", ">"])
def test_guess_can_open_by_magic(tmp_path: Path, suffix, image_class, endianness) -> None:
    data = np.zeros((2, 2, 2), np.float32)
    header = image_class.header_class(endianness=endianness)
    image = image_class(data, np.eye(4), header=header)
    path = tmp_path / f"image{suffix}"
    nib.save(image, path)
    # the content is recognised even under a name that says nothing
    renamed = path.rename(tmp_path / "renamed.data")
    assert NiftiBackendEntrypoint().guess_can_open(renamed)
    assert NiftiBackendEntrypoint().guess_can_open(str(renamed))


def test_guess_can_open_pair_header(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Pair(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / "p.img")
    assert NiftiBackendEntrypoint().guess_can_open(tmp_path / "p.hdr")


def test_guess_can_open_rejects_other_files(tmp_path: Path) -> None:
    backend = NiftiBackendEntrypoint()
    text = tmp_path / "table.csv"
    text.write_text("a,b\n1,2\n" * 100)
    assert not backend.guess_can_open(text)
    compressed = tmp_path / "table.csv.gz"
    compressed.write_bytes(gzip.compress(b"a,b\n1,2\n" * 100))
    assert not backend.guess_can_open(compressed)
    assert not backend.guess_can_open(io.BytesIO(b""))
    # unreadable paths fall back to the suffix
    assert backend.guess_can_open(tmp_path / "missing.nii.gz")
    assert not backend.guess_can_open(tmp_path / "missing.nc")
