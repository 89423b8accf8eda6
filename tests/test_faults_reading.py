"""Fault injection on reading: bit flips, huge headers, a full scratch disk, odd paths, changes.

Every case reproduces a defect of issue 9 with real files, real processes,
real ``prlimit`` address-space limits and a real tmpfs; each is bounded in time.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from nilearn import masking as nl_masking

import daskmask as dm
from daskmask.exceptions import (
    InputChangedError,
    NiftiFileNotFoundError,
    NiftiReadError,
    ScratchSpaceError,
)
from daskmask.reading._decode import decode_once
from daskmask.reading._integrity import crc32_combine
from daskmask.reading.backend import NiftiBackendEntrypoint

#: Address-space limit of the subprocesses that open huge headers: a
#: regression fails with MemoryError instead of taking the machine down.
ADDRESS_SPACE_LIMIT = 1536 << 20

#: Shape of the run whose bits are flipped: 8 MB decoded, more than the 4 MB
#: nibabel's gzip reader buffers when it reads the header, so that flips in
#: the second half are found by the data reads, not at open.
FLIP_SHAPE = (48, 48, 36, 48)


def _nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    image.header["pixdim"][4] = 2.0
    return image.to_bytes()


@pytest.fixture(scope="module")
def flip_payload() -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(9)
    # Smooth-ish values: deflate codes them with Huffman tables and matches.
    data = (rng.integers(0, 40, FLIP_SHAPE) + 1000).astype(np.int16)
    return _nifti_bytes(data), data


def _flip(payload: bytes, level: int, seed: int, tmp_path: Path) -> Path:
    """Write ``payload`` gzip-compressed at ``level`` with one bit flipped.

    The flipped bit lies in the second half of the deflate stream or in the
    trailer (seed 3): decoded after the header, so reading the header at
    open does not reach it.
    """
    compressed = bytearray(gzip.compress(payload, compresslevel=level, mtime=0))
    rng = np.random.default_rng(seed)
    if seed == 3:
        position = len(compressed) - 1 - int(rng.integers(8))  # CRC32 or ISIZE
    else:
        position = int(rng.integers(len(compressed) // 2, len(compressed) - 8))
    compressed[position] ^= 1 << int(rng.integers(8))
    path = tmp_path / f"flipped-{level}-{seed}.nii.gz"
    path.write_bytes(bytes(compressed))
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("level", [0, 1, 6])
def test_flipped_bit_never_read_silently(tmp_path, flip_payload, level, seed):
    payload, _ = flip_payload
    path = _flip(payload, level, seed, tmp_path)
    # The lazy reader: one chunk (one read from the start to the end of the
    # data, short of the trailer), and chunks of 5 volumes read by 2 threads
    # in any order.
    for chunks in ("auto", 5):
        with dask.config.set(scheduler="threads", num_workers=2):
            with pytest.raises(NiftiReadError, match="flipped-") as lazy:
                dm.open_nifti(path, chunks=chunks).compute()
        assert "corrupt" in str(lazy.value)
    # The decode-once pass of fit.
    with pytest.raises(NiftiReadError, match="flipped-") as fitted:
        dm.NiftiMasker(mask_strategy="epi").fit(path)
    assert "corrupt" in str(fitted.value)
    assert "re-download" in str(fitted.value)


_STDLIB_FLIPS = textwrap.dedent(
    """
    import json, sys
    # No isal, zlib-ng or indexed_gzip: the standard library's gzip decodes.
    for name in ("isal", "zlib_ng", "indexed_gzip"):
        sys.modules[name] = None
    import dask
    import daskmask as dm
    from daskmask.reading._decode import decode_once, decoder_name
    assert decoder_name() == "gzip"
    outcomes = []
    for path in sys.argv[1:]:
        for how in ("auto", 5, "decode-5", "decode-48"):
            try:
                if isinstance(how, str) and how.startswith("decode"):
                    run = dm.open_nifti(path)
                    decode_once(run, sys.argv[1] + ".d", chunk_volumes=int(how[7:]))
                else:
                    with dask.config.set(scheduler="threads", num_workers=2):
                        dm.open_nifti(path, chunks=how).compute()
                outcomes.append([path, how, None, ""])
            except Exception as error:
                outcomes.append([path, how, type(error).__name__, str(error)])
    print(json.dumps(outcomes))
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("level", [0, 1, 6])
def test_flipped_bit_caught_by_the_standard_library_decoders(tmp_path, flip_payload, level):
    payload, _ = flip_payload
    paths = [str(_flip(payload, level, seed, tmp_path)) for seed in range(4)]
    os.mkdir(paths[0] + ".d")
    completed = subprocess.run(
        [sys.executable, "-c", _STDLIB_FLIPS, *paths],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcomes = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(outcomes) == 16
    for path, how, error_type, message in outcomes:
        assert error_type == "NiftiReadError", (path, how, error_type, message)
        assert "corrupt" in message and os.path.basename(path) in message


@pytest.mark.timeout(60)
def test_crc_mismatch_says_so_and_sticks(tmp_path, flip_payload):
    payload, _ = flip_payload
    path = _flip(payload, 0, 0, tmp_path)  # stored blocks: only the CRC tells
    run = dm.open_nifti(path, chunks=5)
    with pytest.raises(NiftiReadError, match=r"corrupt \(CRC mismatch\).*re-download"):
        run.compute()
    # Once found corrupt, a later read of one slab of that version fails too.
    with pytest.raises(NiftiReadError, match="CRC mismatch"):
        run.isel(time=slice(0, 5)).compute()


@pytest.mark.timeout(60)
def test_intact_files_pass_the_checks(tmp_path, flip_payload):
    payload, data = flip_payload
    single = tmp_path / "single.nii.gz"
    single.write_bytes(gzip.compress(payload, compresslevel=1))
    # Several gzip members (bgzip, pigz --independent, cat a.gz b.gz): the
    # trailer describes the last member only; the reader must not cry wolf.
    members = tmp_path / "members.nii.gz"
    cut = len(payload) // 3
    members.write_bytes(gzip.compress(payload[:cut]) + gzip.compress(payload[cut:]))
    # Bytes after the voxel data (allowed by NIfTI): the trailer covers them.
    tail = tmp_path / "tail.nii.gz"
    tail.write_bytes(gzip.compress(payload + b"extra bytes after the data"))
    for path in (single, members, tail):
        for chunks in (5, 48):
            with dask.config.set(scheduler="threads", num_workers=2):
                values = dm.open_nifti(path, chunks=chunks).values
            np.testing.assert_array_equal(values, data)
        # The decode-once pass of fit.
        decoded, mean = decode_once(dm.open_nifti(path), tmp_path, chunk_volumes=7)
        np.testing.assert_array_equal(decoded.values, data)
        np.testing.assert_array_equal(mean, data.mean(axis=-1))


def test_crc32_combine_equals_zlib():
    rng = np.random.default_rng(0)
    for first, second in [(0, 0), (0, 7), (7, 0), (1, 1), (1000, 4097), (65536, 1 << 20)]:
        a = rng.bytes(first)
        b = rng.bytes(second)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), second) == zlib.crc32(a + b)


# ---------------------------------------------------------------- huge headers


def _nifti2_header(shape: tuple[int, ...], dtype: type = np.int16) -> bytes:
    header = nib.Nifti2Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms((2.0,) * len(shape))
    header.set_xyzt_units("mm", "sec")
    header["vox_offset"] = 544
    return header.binaryblock + b"\0" * 4


def _run_limited(script: str, timeout: float = 60) -> dict:
    """Run ``script`` in a fresh Python under an address-space limit; return its JSON."""
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }
    completed = subprocess.run(
        ["prlimit", f"--as={ADDRESS_SPACE_LIMIT}", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


_PROBE = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import daskmask as dm

    def attempt(action):
        start = time.perf_counter()
        try:
            value = action()
            outcome = {"ok": True, "value": value}
        except BaseException as error:
            outcome = {"ok": False, "type": type(error).__name__, "message": str(error)}
        outcome["seconds"] = time.perf_counter() - start
        return outcome

    path = sys.argv[1] if len(sys.argv) > 1 else PATH
    results = {}
    """
)


def _probe(path: Path, body: str) -> dict:
    script = _PROBE.replace("PATH", repr(str(path))) + textwrap.dedent(body)
    script += textwrap.dedent(
        """
        # VmHWM, not ru_maxrss: the latter keeps the parent's peak across exec.
        status = open("/proc/self/status").read()
        results["max_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
        print(json.dumps(results, default=str))
        """
    )
    return _run_limited(script)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "shape",
    [(1, 1, 1, 1 << 28), (2048, 1024, 1024, 1)],
    ids=["2^28-volumes", "2^31-voxels"],
)
def test_tiny_gz_with_huge_header_refused_at_open(tmp_path, shape):
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(_nifti2_header(shape)))
    assert path.stat().st_size < 120
    results = _probe(
        path,
        """
        # imported before the clock starts: the bound is on the refusal, not on
        # importing the stack (10 s on a machine under a load of 6-10)
        dm.open_nifti, dm.NiftiMasker
        results["open"] = attempt(lambda: dm.open_nifti(path).shape)
        results["fit"] = attempt(lambda: dm.NiftiMasker().fit(path).n_elements_)
        """,
    )
    for step in ("open", "fit"):
        outcome = results[step]
        assert outcome["type"] == "NiftiReadError", outcome
        assert "huge.nii.gz" in outcome["message"]
        assert "cannot hold the data its header promises" in outcome["message"]
        assert outcome["seconds"] < 5
    assert results["max_rss_mb"] < 600


@pytest.mark.timeout(90)
def test_gz_that_inflates_short_fails_before_allocating_the_promise(tmp_path):
    # 4.3 MB of incompressible bytes behind a header that promises one 4 GiB
    # volume: plausible for deflate's 1032:1 ratio, so only reading tells.
    noise = np.random.default_rng(0).bytes(4_400_000)
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(_nifti2_header((2048, 1024, 1024, 1)) + noise, 1))
    results = _probe(
        path,
        """
        run = dm.open_nifti(path)
        results["slab"] = attempt(lambda: run.data.blocks[0, 0, 0, 0].compute().shape)
        results["fit"] = attempt(lambda: dm.NiftiMasker().fit(run).n_elements_)
        """,
    )
    for step in ("slab", "fit"):
        outcome = results[step]
        assert outcome["type"] == "NiftiReadError", outcome
        assert "short.nii.gz" in outcome["message"]
        assert "truncated or corrupt" in outcome["message"]
    assert results["max_rss_mb"] < 800


@pytest.mark.timeout(90)
def test_sparse_nii_with_huge_time_axis_opens_cheaply(tmp_path):
    # 512 MiB long on paper, one block on disk: the size check passes, and
    # the data (zeros) are real. Opening must not build a 2 GiB coordinate.
    path = tmp_path / "sparse.nii"
    shape = (1, 1, 1, 1 << 28)
    path.write_bytes(_nifti2_header(shape))
    os.truncate(path, 544 + (1 << 29))
    assert path.stat().st_blocks * 512 < 64 << 10
    results = _probe(
        path,
        """
        run = dm.open_nifti(path)
        results["shape"] = list(run.shape)
        results["tail"] = run["time"][-2:].values.tolist()
        results["last"] = run.isel(time=slice(-3, None)).values.ravel().tolist()
        results["sum"] = attempt(lambda: int(run.sum().compute()))
        """,
    )
    assert results["shape"] == list(shape)
    assert results["tail"] == [((1 << 28) - 2) * 2.0, ((1 << 28) - 1) * 2.0]
    assert results["last"] == [0, 0, 0]
    assert results["sum"]["ok"] and results["sum"]["value"] == 0, results["sum"]
    assert results["max_rss_mb"] < 900


@pytest.mark.timeout(90)
def test_sparse_nii_with_huge_spatial_axis_opens_cheaply(tmp_path):
    path = tmp_path / "wide.nii"
    shape = (1 << 31, 1, 1)
    path.write_bytes(_nifti2_header(shape, np.int8))
    os.truncate(path, 544 + (1 << 31))
    results = _probe(
        path,
        """
        run = dm.open_nifti(path)
        results["shape"] = list(run.shape)
        results["x"] = run["x"][-2:].values.tolist()
        """,
    )
    assert results["shape"] == list(shape)
    assert results["x"] == [(1 << 31) - 2, (1 << 31) - 1]
    assert results["max_rss_mb"] < 600


def test_time_coordinate_values_unchanged_by_the_lazy_index(tmp_path):
    from daskmask.reading._metadata import EAGER_TIME_VALUES, build_coords

    t_r = 0.72
    short = build_coords((2, 2, 2, EAGER_TIME_VALUES), t_r)["time"].values
    np.testing.assert_array_equal(short, np.arange(EAGER_TIME_VALUES, dtype=np.float64) * t_r)
    long = build_coords((2, 2, 2, EAGER_TIME_VALUES + 5), t_r)
    assert type(long.xindexes["time"]).__name__ == "RangeIndex"
    np.testing.assert_array_equal(
        long["time"][-5:].values, np.arange(EAGER_TIME_VALUES, EAGER_TIME_VALUES + 5) * t_r
    )


# ----------------------------------------------------------- full scratch disk


_SCRATCH_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import dask
    import daskmask as dm
    scratch, path = sys.argv[1], sys.argv[2]
    dask.config.set({"daskmask.temporary-directory": scratch})
    try:
        dm.NiftiMasker(mask_strategy="epi").fit(path)
        outcome = {"type": None}
    except BaseException as error:
        outcome = {"type": type(error).__name__, "message": str(error),
                   "errno": getattr(error, "errno", None)}
    outcome["left"] = [
        os.path.join(root, name) for root, _, names in os.walk(scratch) for name in names
    ]
    print(json.dumps(outcome))
    """
)


@pytest.mark.timeout(120)
def test_full_scratch_disk_while_decoding_says_so(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a private tmpfs")
    data = np.random.default_rng(1).integers(0, 3000, (40, 40, 30, 40)).astype(np.int16)
    path = tmp_path / "run.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes(data), 1))  # 3.8 MB decoded
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    command = (
        f"mount -t tmpfs -o size=2m tmpfs {scratch} && "
        f"{sys.executable} -c {_shell_quote(_SCRATCH_SCRIPT)} {scratch} {path}"
    )
    completed = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome["type"] == "ScratchSpaceError", outcome
    assert issubclass(ScratchSpaceError, OSError) and outcome["errno"] == 28
    assert str(scratch) in outcome["message"]
    assert "daskmask.temporary-directory" in outcome["message"]
    assert "truncated" not in outcome["message"] and "corrupt" not in outcome["message"]
    # The partial copy was removed (only lease files of other stores may remain).
    assert not [name for name in outcome["left"] if name.endswith("decoded.raw")]


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# ---------------------------------------------------------------- odd paths


@pytest.mark.timeout(20)
def test_symlink_loop_is_named(tmp_path):
    (tmp_path / "a.nii").symlink_to(tmp_path / "b.nii")
    (tmp_path / "b.nii").symlink_to(tmp_path / "a.nii")
    with pytest.raises(NiftiFileNotFoundError, match=r"a\.nii.*symbolic link loop"):
        dm.open_nifti(tmp_path / "a.nii")
    (tmp_path / "dangling.nii").symlink_to(tmp_path / "gone.nii")
    with pytest.raises(NiftiFileNotFoundError, match=r"symbolic link to .*gone\.nii"):
        dm.open_nifti(tmp_path / "dangling.nii")


@pytest.mark.timeout(20)
def test_fifo_refused_without_blocking(tmp_path):
    fifo = tmp_path / "run.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(NiftiReadError, match=r"run\.nii\.gz' is not a regular file.*FIFO"):
        dm.open_nifti(fifo)
    with pytest.raises(NiftiReadError, match="not a regular file"):
        dm.open_nifti([str(fifo)])
    with pytest.raises(NiftiReadError, match="not a regular file"):
        xr.open_dataarray(fifo, engine="nifti")
    assert NiftiBackendEntrypoint().guess_can_open(str(fifo)) in (True, False)
    with pytest.raises(NiftiReadError, match="not a regular file"):
        dm.open_nifti("/dev/null")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("given, missing", [(".hdr", ".img"), (".img", ".hdr")])
def test_pair_without_its_other_half(tmp_path, given, missing):
    image = nib.Nifti1Pair(np.zeros((4, 4, 4, 3), np.int16), np.eye(4))
    nib.save(image, tmp_path / "pair.hdr")
    (tmp_path / f"pair{missing}").unlink()
    with pytest.raises(NiftiFileNotFoundError, match=rf"pair\{missing}'.*pair\{given}'"):
        dm.open_nifti(tmp_path / f"pair{given}")
    if given == ".hdr":  # a nibabel image of the header alone
        with pytest.raises(NiftiFileNotFoundError, match=r"pair\.img"):
            dm.open_nifti(nib.load(tmp_path / "pair.hdr"))


def _write_with_affine(path: Path, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4))
    header = image.header
    header.set_qform(None, code=0)
    header["sform_code"] = 1
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[0], affine[1], affine[2]
    path.write_bytes(header.binaryblock + b"\0" * 4 + np.ones(4 * 4 * 4 * 3, "<f4").tobytes())
    return path


@pytest.mark.timeout(30)
@pytest.mark.parametrize("problem", ["nan", "inf", "singular"])
def test_unusable_affine_refused_at_open(tmp_path, problem):
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    if problem == "nan":
        affine[0, 3] = np.nan
    elif problem == "inf":
        affine[1, 1] = np.inf
    elif problem == "singular":
        affine[2] = affine[1]
    path = _write_with_affine(tmp_path / "affine.nii", affine)
    with pytest.raises(NiftiReadError, match=r"The affine of '.*affine\.nii'") as error:
        dm.open_nifti(path)
    assert "sform" in str(error.value)
    with pytest.raises(NiftiReadError, match="affine"):
        dm.NiftiMasker().fit(path)


# ------------------------------------------------------- files that change


def _epi(seed: int, shape: tuple[int, ...] = (14, 16, 12, 10)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 5.0, shape).astype(np.float32)
    data[3:-3, 3:-3, 2:-2] += 500.0  # a bright "brain" for the epi mask
    return data


def _write_run(path: Path, data: np.ndarray) -> None:
    payload = _nifti_bytes(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    path.write_bytes(gzip.compress(payload, 1) if path.name.endswith(".gz") else payload)


def _change(path: Path, data: np.ndarray, how: str) -> None:
    before = path.stat()
    if how == "replace":  # a download tool renaming its temporary file
        temporary = path.with_name("incoming-" + path.name)
        _write_run(temporary, data)
        os.replace(temporary, path)
    else:  # rewritten in place: same inode
        _write_run(path, data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
        assert path.stat().st_ino == before.st_ino


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["replace", "rewrite"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("fit_with", ["epi", "mask_img"])
def test_run_changed_between_transform_and_compute(tmp_path, how, suffix, fit_with):
    path = tmp_path / f"run{suffix}"
    _write_run(path, _epi(0))
    if fit_with == "epi":  # on a .nii.gz: the decoded copy of fit serves transform
        masker = dm.NiftiMasker(mask_strategy="epi").fit(path)
    else:  # no decoded copy: transform reads the file lazily
        mask = np.zeros((14, 16, 12), np.uint8)
        mask[4:-4, 4:-4, 3:-3] = 1
        masker = dm.NiftiMasker(mask_img=nib.Nifti1Image(mask, np.diag([3, 3, 3, 1.0]))).fit()
    signals = masker.transform(path)
    opened = dm.open_nifti(path)
    _change(path, _epi(1), how)
    for lazy in (signals, opened):
        with pytest.raises(InputChangedError, match=rf"run\{suffix}' changed") as error:
            np.asarray(lazy)
        assert "open_nifti" in str(error.value) and "fit" in str(error.value)
    # A new transform reads the new version, not a copy or mean of the old one.
    np.testing.assert_allclose(
        np.asarray(masker.transform(path)),
        nl_masking.apply_mask(str(path), masker.mask_img_),
        rtol=1e-6,
    )


@pytest.mark.timeout(60)
def test_fit_refuses_a_run_changed_since_open(tmp_path):
    path = tmp_path / "run.nii.gz"
    _write_run(path, _epi(0))
    run = dm.open_nifti(path)
    _change(path, _epi(1), "replace")
    with pytest.raises(InputChangedError, match="replaced by another file"):
        dm.NiftiMasker(mask_strategy="epi").fit(run)
