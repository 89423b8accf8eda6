"""The parallel inflate of a local .nii.gz (rapidgzip) and its sequential fallback.

Real files, real rapidgzip threads: values and mean bit for bit, every kind of
damage still a NiftiReadError naming the file, files rapidgzip refuses or cuts
short redone by the sequential decoder, and the choice of decoder (the dask
config ``daskmask.gzip-decoder``, a missing rapidgzip) in a fresh interpreter.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest

import daskmask as dm
from daskmask.exceptions import NiftiReadError
from daskmask.masking._mean import mean_volume
from daskmask.reading._decode import (
    DECODER_SETTING,
    PARALLEL_CHUNK_BYTES,
    PARALLEL_DECODER,
    PARALLEL_MIN_BYTES,
    PARALLEL_MIN_CORES,
    _ParallelStream,
    _UnverifiedEnd,
    decode_once,
    decoder_name,
    measure_decoders,
    pass_decoder,
    usable_cores,
)

pytest.importorskip("rapidgzip")

#: 4 rapidgzip chunks of compressed data, decoded by both threads.
SHAPE = (64, 64, 40, 100)


@pytest.fixture(scope="module")
def payload() -> tuple[bytes, np.ndarray]:
    """A NIfTI image whose gzip stream spans several of rapidgzip's chunks."""
    rng = np.random.default_rng(14)
    data = rng.integers(-2000, 30000, SHAPE).astype(np.int16)  # little to compress
    image = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    image.header["pixdim"][4] = 2.0
    return image.to_bytes(), data


@pytest.fixture(scope="module")
def smooth() -> bytes:
    """A NIfTI image of smooth values: deflate codes them with long matches."""
    rng = np.random.default_rng(14)
    data = (rng.integers(0, 40, SHAPE) + 1000).astype(np.int16)
    return nib.Nifti1Image(data, np.eye(4)).to_bytes()


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _forced(name: str):
    return dask.config.set({DECODER_SETTING: name})


def test_choice_of_decoder():
    # rapidgzip by default only where the writer and the folder keep a core
    # each besides its threads (on 2 cores the sequential pass was faster).
    enough_cores = usable_cores() >= PARALLEL_MIN_CORES
    with _forced("auto"):
        assert pass_decoder(PARALLEL_MIN_BYTES) == (
            PARALLEL_DECODER if enough_cores else decoder_name()
        )
        assert pass_decoder(PARALLEL_MIN_BYTES - 1) == decoder_name()
        assert pass_decoder(None) == decoder_name()  # an object: never in parallel
    with _forced(PARALLEL_DECODER):
        assert pass_decoder(1) == PARALLEL_DECODER
        assert pass_decoder(None) == decoder_name()
    with _forced("gzip"):
        assert pass_decoder(PARALLEL_MIN_BYTES) == "gzip"
    with _forced("brotli"), pytest.raises(ValueError, match="names no gzip decoder.*'auto'"):
        pass_decoder(PARALLEL_MIN_BYTES)


def test_parallel_pass_equals_nibabel_bit_for_bit(tmp_path, payload):
    content, data = payload
    path = _write(tmp_path, "run.nii.gz", gzip.compress(content, compresslevel=1))
    assert path.stat().st_size > 3 * PARALLEL_CHUNK_BYTES
    run = dm.open_nifti(path)
    for chunk_volumes in (1, 7, 100):
        with _forced(PARALLEL_DECODER):
            decoded, mean = decode_once(run, tmp_path, chunk_volumes=chunk_volumes)
        assert decoded.encoding["decoded_with"] == PARALLEL_DECODER
        np.testing.assert_array_equal(decoded.values, data)
        reference = mean_volume(run)
        assert mean.dtype == reference.dtype
        assert mean.tobytes() == np.asarray(reference, order="C").tobytes()


def test_parallel_stream_never_ends_silently_short(tmp_path, smooth):
    compressed = gzip.compress(smooth, compresslevel=1)
    half, third = len(compressed) // 2, len(compressed) // 3
    # Inside the last trailer, just before it, and inside the deflate data.
    raised = []
    for keep in (-4, -8, -9, -1000, -100_000, half, third):
        path = _write(tmp_path, "cut.nii.gz", compressed[:keep])
        buffer = bytearray(1 << 20)
        decoded = 0
        with (
            open(path, "rb") as raw,
            pytest.raises((_UnverifiedEnd, ValueError, RuntimeError)) as error,
        ):
            with _ParallelStream(raw, 2) as stream:
                while count := stream.readinto(buffer):
                    decoded += count
        assert decoded < len(smooth)
        raised.append(error.type)
    # rapidgzip 0.16 returns some of these cuts as shorter streams, without
    # an error of its own: the end checks catch them.
    assert _UnverifiedEnd in raised


def test_parallel_stream_hands_multi_member_and_padding_to_the_sequential_decoder(
    tmp_path, payload
):
    content, data = payload
    cut = len(content) // 3
    members = gzip.compress(content[:cut], 1) + gzip.compress(content[cut:], 1)
    padded = gzip.compress(content, 1) + bytes(16)
    for name, compressed, refusal in (
        ("members.nii.gz", members, _UnverifiedEnd),  # the trailer covers the last member
        ("padded.nii.gz", padded, ValueError),  # rapidgzip's own error
    ):
        path = _write(tmp_path, name, compressed)
        with open(path, "rb") as raw, pytest.raises(refusal):
            with _ParallelStream(raw, 2) as stream:
                while stream.readinto(bytearray(1 << 20)):
                    pass
        # decode_once redoes the pass sequentially, and the file is read.
        with _forced(PARALLEL_DECODER):
            decoded, mean = decode_once(dm.open_nifti(path), tmp_path, chunk_volumes=9)
        assert decoded.encoding["decoded_with"] == decoder_name()
        np.testing.assert_array_equal(decoded.values, data)
        np.testing.assert_array_equal(mean, data.mean(axis=-1))


def _damaged(content: bytes, how: str) -> bytes:
    compressed = bytearray(gzip.compress(content, compresslevel=6, mtime=0))
    rng = np.random.default_rng(len(how))
    if how == "crc":
        compressed[-8] ^= 0x10
    elif how == "isize":
        compressed[-2] ^= 0x01
    elif how == "deflate":
        position = int(rng.integers(len(compressed) // 2, len(compressed) - 8))
        compressed[position] ^= 1 << int(rng.integers(8))
    elif how == "truncated":
        return bytes(compressed[: len(compressed) * 2 // 3])
    return bytes(compressed)


@pytest.mark.parametrize("how", ["crc", "isize", "deflate", "truncated"])
def test_damage_still_raises_nifti_read_error_naming_the_file(tmp_path, payload, how):
    content, _ = payload
    path = _write(tmp_path, f"damaged-{how}.nii.gz", _damaged(content, how))
    run = dm.open_nifti(path)
    store_root = tmp_path / "stores"
    store_root.mkdir()
    messages = []
    for name in (PARALLEL_DECODER, decoder_name()):
        with _forced(name), pytest.raises(NiftiReadError) as raised:
            decode_once(run, store_root, chunk_volumes=8)
        messages.append(str(raised.value))
        assert list(store_root.iterdir()) == []  # nothing left behind
    # The sequential decoder has the last word: the error without rapidgzip.
    assert messages[0] == messages[1]
    assert f"damaged-{how}.nii.gz" in messages[0] and "Re-create or re-download" in messages[0]
    if how == "crc":
        assert "CRC mismatch" in messages[0]


_WITHOUT_RAPIDGZIP = textwrap.dedent(
    """
    import json, sys
    sys.modules["rapidgzip"] = None  # as if the fast extra lacked it
    import dask
    import daskmask as dm
    from daskmask.reading._decode import (
        DECODER_SETTING, PARALLEL_MIN_BYTES, decode_once, decoder_name, pass_decoder
    )
    out = {"auto": pass_decoder(PARALLEL_MIN_BYTES), "sequential": decoder_name()}
    path, store = sys.argv[1], sys.argv[2]
    decoded, mean = decode_once(dm.open_nifti(path), store, chunk_volumes=7)
    out["decoded_with"] = decoded.encoding["decoded_with"]
    out["sum"] = int(decoded.values.astype("int64").sum())
    try:
        with dask.config.set({DECODER_SETTING: "rapidgzip"}):
            pass_decoder(PARALLEL_MIN_BYTES)
    except ValueError as error:
        out["forced"] = str(error)
    print(json.dumps(out))
    """
)


def test_without_rapidgzip_the_sequential_decoder_decodes(tmp_path, payload):
    content, data = payload
    path = _write(tmp_path, "run.nii.gz", gzip.compress(content, compresslevel=1))
    completed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_RAPIDGZIP, str(path), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    assert out["auto"] == out["sequential"] == out["decoded_with"] != PARALLEL_DECODER
    assert out["sum"] == int(data.astype(np.int64).sum())
    assert "not installed" in out["forced"] and "daskmask[fast]" in out["forced"]


def test_forced_sequential_decoder_equals_the_parallel_one(tmp_path, payload):
    content, _ = payload
    path = _write(tmp_path, "run.nii.gz", gzip.compress(content, compresslevel=1))
    run = dm.open_nifti(path)
    results = {}
    for name in (PARALLEL_DECODER, "gzip"):
        with _forced(name):
            decoded, mean = decode_once(run, tmp_path, chunk_volumes=11)
        assert decoded.encoding["decoded_with"] == name
        results[name] = (decoded.values.tobytes(), mean.tobytes())
    assert results[PARALLEL_DECODER] == results["gzip"]


def test_measure_decoders_times_the_parallel_one_too(tmp_path, payload):
    content, _ = payload
    path = _write(tmp_path, "run.nii.gz", gzip.compress(content, compresslevel=1))
    speeds = measure_decoders(path, block=4 << 20)
    assert {PARALLEL_DECODER, decoder_name(), "gzip"} <= set(speeds)
    assert all(speed > 0 for speed in speeds.values())
