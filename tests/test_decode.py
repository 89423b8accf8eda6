"""A .nii.gz is inflated once for fit and transform (daskmask.reading._decode)."""

from __future__ import annotations

import gc
import gzip
import importlib.resources
import os
import pickle
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nilearn.maskers import NiftiMasker as NilearnNiftiMasker
from sklearn.base import clone

import daskmask as dm
from daskmask.datasets import generate_epi
from daskmask.masking._mean import mean_volume
from daskmask.reading._decode import decode_once, decoder_name, gzip_source


def _save(tmp_path: Path, data: np.ndarray, name: str, **header: float) -> str:
    image = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.5, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    for field, value in header.items():
        image.header[field] = value
    path = tmp_path / name
    nib.save(image, path)
    if "scl_slope" in header:  # nibabel resets the scaling on save: write it back
        raw = nib.load(path, mmap=False)  # a .nii is rewritten in place below
        raw.header.set_slope_inter(header["scl_slope"], header.get("scl_inter", 0.0))
        nib.save(
            nib.Nifti1Image(np.asanyarray(raw.dataobj._get_unscaled(())), None, raw.header), path
        )
    return str(path)


def _cases(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    int16 = rng.integers(-300, 3000, (9, 8, 7, 23)).astype(np.int16)
    float32 = rng.normal(100, 20, (9, 8, 7, 23)).astype(np.float32)
    cases = {
        "int16": _save(tmp_path, int16, "int16.nii.gz"),
        "float32": _save(tmp_path, float32, "float32.nii.gz"),
        "nipy-scaled": str(importlib.resources.files("nipy") / "testing/functional.nii.gz"),
    }
    big_endian = nib.Nifti1Image(int16.astype(">i2"), np.eye(4))
    big_endian.set_data_dtype(np.dtype(">i2"))
    path = tmp_path / "big_endian.nii.gz"
    big_endian.to_filename(path)
    cases["big-endian"] = str(path)
    return cases


@pytest.mark.parametrize("case", ["int16", "float32", "nipy-scaled", "big-endian"])
@pytest.mark.parametrize("chunk_volumes", [1, 7, 100])
def test_decoded_values_and_mean_equal_nibabel(tmp_path, case, chunk_volumes):
    path = _cases(tmp_path)[case]
    run = dm.open_nifti(path)
    decoded, mean = decode_once(run, tmp_path, chunk_volumes=chunk_volumes)
    expected = np.asanyarray(nib.load(path).dataobj)
    values = decoded.values
    assert values.dtype == expected.dtype == run.dtype
    np.testing.assert_array_equal(values, expected)
    reference = mean_volume(run)
    assert mean.dtype == reference.dtype
    assert np.asarray(mean, order="C").tobytes() == np.asarray(reference, order="C").tobytes()
    assert decoded.dims == run.dims and decoded.attrs["source"] == run.attrs["source"]
    np.testing.assert_array_equal(decoded["time"], run["time"])
    assert os.path.isfile(decoded.attrs["decoded_store"])


def test_decode_refuses_other_inputs(tmp_path):
    data = np.ones((4, 4, 4, 3), np.float32)
    plain = _save(tmp_path, data, "plain.nii")
    assert gzip_source(dm.open_nifti(plain)) is None
    assert gzip_source(dm.open_nifti(nib.Nifti1Image(data, np.eye(4)))) is None
    gz = _save(tmp_path, data, "run.nii.gz")
    assert gzip_source(dm.open_nifti([gz, gz], concat="time")) is None
    assert gzip_source(dm.open_nifti(gz).isel(time=slice(0, 2))) is None
    with pytest.raises(ValueError, match="one .nii.gz file or"):
        decode_once(dm.open_nifti(plain), tmp_path, chunk_volumes=2)
    assert decoder_name() in ("isal.igzip", "zlib_ng.gzip_ng", "gzip")


def test_truncated_gzip_raises_and_leaves_nothing(tmp_path):
    gz = _save(
        tmp_path, np.arange(4 * 4 * 4 * 30, dtype=np.float32).reshape(4, 4, 4, 30), "t.nii.gz"
    )
    size = os.path.getsize(gz)
    with open(gz, "r+b") as handle:
        handle.truncate(size // 2)
    run = dm.open_nifti(gz)  # a .gz is not checked for truncation at open
    store_root = tmp_path / "stores"
    store_root.mkdir()
    with pytest.raises(dm.exceptions.NiftiReadError, match="truncated or corrupt"):
        decode_once(run, store_root, chunk_volumes=4)
    assert list(store_root.iterdir()) == []


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("decode")
    return str(generate_epi(folder / "run.nii.gz", shape=(30, 34, 26), n_timepoints=40, seed=1))


def _corrupt_data_keep_stat(path: str) -> None:
    """Overwrite the second half of a .gz (the voxel data) with garbage.

    The size and modification time stay the same, so the cache key still
    matches: any read of those volumes from the .gz would now fail.
    """
    stat = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(stat.st_size // 2)
        handle.write(b"\x00garbage" * ((stat.st_size - stat.st_size // 2) // 8))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size


def _graph_layers(signals) -> list[str]:
    return [str(name) for name in signals.data.__dask_graph__().layers]


@pytest.mark.parametrize("strategy", ["epi", "background"])
@pytest.mark.parametrize("target_affine", [None, np.eye(3) * 5])
def test_fit_transform_equals_nilearn(generated_run, strategy, target_affine):
    params = {"mask_strategy": strategy, "target_affine": target_affine}
    ours = dm.NiftiMasker(**params).fit(generated_run)
    assert ours._fitted_run.decoded is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnNiftiMasker(**params).fit(generated_run)
        expected = theirs.transform(generated_run)
        signals = ours.transform(generated_run)
    np.testing.assert_array_equal(ours.mask_img_.get_fdata(), theirs.mask_img_.get_fdata())
    np.testing.assert_allclose(ours.mask_img_.affine, theirs.mask_img_.affine)
    np.testing.assert_allclose(np.asarray(signals), expected, rtol=1e-6, atol=1e-4)
    layers = _graph_layers(signals)
    assert any(name.startswith("decoded-") for name in layers)
    assert not any(name.startswith("nifti-") for name in layers)


def test_transform_reads_the_decoded_copy_only(tmp_path):
    path = str(generate_epi(tmp_path / "run.nii.gz", shape=(20, 22, 18), n_timepoints=30, seed=2))
    reference = dm.NiftiMasker(mask_strategy="epi").fit(path)
    # A user mask does not decode: these signals are read from the .gz itself.
    expected = np.asarray(dm.NiftiMasker(mask_img=reference.mask_img_).fit().transform(path))

    masker = dm.NiftiMasker(mask_strategy="epi").fit(path)
    store = masker._fitted_run.decoded.attrs["decoded_store"]
    _corrupt_data_keep_stat(path)
    with pytest.raises(EOFError), gzip.open(path) as stream:
        stream.read()  # the .gz itself is no longer readable
    for source in (path, dm.open_nifti(path), nib.load(path)):
        signals = masker.transform(source)
        np.testing.assert_array_equal(np.asarray(signals), expected)
    # The store lives as long as the masker or any result built on it.
    signals = masker.transform(path)
    del masker
    gc.collect()
    assert os.path.isdir(os.path.dirname(store))
    np.testing.assert_array_equal(np.asarray(signals), expected)
    del signals
    gc.collect()
    assert not os.path.exists(os.path.dirname(store))


def test_cache_invalidated_replaced_on_refit_and_not_pickled(tmp_path):
    path = str(generate_epi(tmp_path / "run.nii.gz", shape=(12, 14, 10), n_timepoints=12, seed=3))
    masker = dm.NiftiMasker().fit(path)
    first = masker._fitted_run.decoded.attrs["decoded_store"]
    masker.fit(path)
    second = masker._fitted_run.decoded.attrs["decoded_store"]
    assert first != second
    gc.collect()
    assert not os.path.exists(os.path.dirname(first))

    restored = pickle.loads(pickle.dumps(masker))
    assert restored._fitted_run.decoded is None
    assert restored.n_elements_ == masker.n_elements_
    assert not hasattr(clone(masker), "_fitted_run")

    # A changed file (new mtime) is read again, not taken from the cache.
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    layers = _graph_layers(masker.transform(path))
    assert any(name.startswith("nifti-") for name in layers)
    assert not any(name.startswith("decoded-") for name in layers)


@pytest.mark.parametrize(
    "params",
    [
        {"mask_strategy": "whole-brain-template"},
        {"mask_img": "MASK"},
    ],
)
def test_other_fits_keep_the_old_path(tmp_path, params):
    path = str(generate_epi(tmp_path / "run.nii.gz", shape=(12, 14, 10), n_timepoints=6, seed=4))
    if params.get("mask_img") == "MASK":
        params = {
            "mask_img": nib.Nifti1Image(np.ones((12, 14, 10), np.uint8), nib.load(path).affine)
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker = dm.NiftiMasker(**params).fit(path)
    assert masker._fitted_run is None
    plain = str(generate_epi(tmp_path / "run.nii", shape=(12, 14, 10), n_timepoints=6, seed=4))
    assert dm.NiftiMasker().fit(plain)._fitted_run.decoded is None
    assert dm.NiftiMasker().fit([path, path])._fitted_run is None


# ------------------------------------------------ an uncompressed object fetched once


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["s3", "memory"])
@pytest.mark.parametrize("case", ["int16", "scaled", "big-endian"])
@pytest.mark.parametrize("chunk_volumes", [1, 7, 100])
def test_object_nii_fetched_once_equals_nibabel(
    request, tmp_path, monkeypatch, protocol, case, chunk_volumes
):
    """A .nii object is copied by the decode-once pass (identity decoder), bit for bit.

    ``s3`` streams one GET (moto's server); ``memory`` cannot stream, so it
    is read by ranged requests, made tiny here so that every slab spans
    several of them.
    """
    import fsspec

    from daskmask.reading import _array

    rng = np.random.default_rng(3)
    data = rng.integers(-300, 3000, (9, 8, 7, 23)).astype(np.int16)
    if case == "scaled":
        local = _save(tmp_path, data, "run.nii", scl_slope=2.0, scl_inter=1.5)
    elif case == "big-endian":
        image = nib.Nifti1Image(data.astype(">i2"), np.eye(4))
        image.set_data_dtype(np.dtype(">i2"))
        local = str(tmp_path / "run.nii")
        image.to_filename(local)
    else:
        local = _save(tmp_path, data, "run.nii")
    if protocol == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = server.new_bucket()
        server.filesystem().put(local, f"{bucket}/run.nii")
        url = f"s3://{bucket}/run.nii"
    else:
        monkeypatch.setattr(_array, "SEQUENTIAL_RANGE_BYTES", 1000)
        url = f"memory://{tmp_path.name}/run.nii"
        fsspec.filesystem("memory").pipe(url, Path(local).read_bytes())
    run = dm.open_nifti(url)
    decoded, mean = decode_once(run, tmp_path, chunk_volumes=chunk_volumes)
    expected = np.asanyarray(nib.load(local).dataobj)
    values = decoded.values
    assert values.dtype == expected.dtype
    assert values.tobytes() == expected.tobytes()
    np.testing.assert_array_equal(mean, mean_volume(dm.open_nifti(local)))
    assert os.path.getsize(decoded.attrs["decoded_store"]) == expected.nbytes
