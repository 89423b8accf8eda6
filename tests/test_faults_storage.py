"""Fault injection on results stores: deleted chunks, flipped bits, bad metadata, kills.

Every store here is written by ``dm.save`` from a real ``NiftiMasker`` run on
a generated EPI file. Damage is done to the real files on disk; kills are
real ``SIGKILL`` of a real ``save`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskmask as dm
from daskmask import _lease
from daskmask.datasets import generate_epi
from daskmask.exceptions import DaskmaskError
from daskmask.storage import (
    CorruptStoreError,
    IncompleteStoreError,
    NotAStoreError,
    StoreNotFoundError,
    open_results,
)

ARRAYS = ("signals", "mask", "mean_image", "time", "voxel", "i", "j", "k", "x", "y", "z")
#: Index coordinates: xarray loads them when the store is opened.
INDEXES = ("time", "voxel")
VOXEL_BLOCK = 1000


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    """A small generated EPI run (uncompressed NIfTI)."""
    folder = tmp_path_factory.mktemp("run")
    return Path(generate_epi(folder / "run.nii", shape=(20, 24, 16), n_timepoints=30, seed=3))


@pytest.fixture(scope="module")
def pristine(run_file, tmp_path_factory) -> Path:
    """A complete store of a real masker run, signals in several voxel chunks."""
    X = dm.NiftiMasker().fit_transform(run_file)
    X = X.chunk({"voxel": VOXEL_BLOCK})
    return dm.save(X, tmp_path_factory.mktemp("pristine") / "sub-01.zarr")


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    """A fresh copy of the pristine store, to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "sub-01.zarr"))


def read_everything(path: Path) -> dict[str, np.ndarray]:
    """Open the store and read every array the way a user would."""
    results = open_results(path)
    values = {
        "signals": results.signals.values,
        "mask": np.asarray(results.mask_img.dataobj),
        "mean_image": np.asarray(results.mean_img.dataobj),
    }
    for name in ("time", "voxel", "i", "j", "k", "x", "y", "z"):
        values[name] = results.signals[name].values
    return values


def chunk_files(store: Path, name: str) -> list[Path]:
    return sorted(p for p in (store / name / "c").rglob("*") if p.is_file())


def pick_chunk(store: Path, name: str) -> Path:
    """A chunk in the middle of the array (not always the first)."""
    files = chunk_files(store, name)
    return files[len(files) // 2]


def chunk_key(store: Path, name: str, file: Path) -> str:
    return file.relative_to(store / name).as_posix()


def test_pristine_store_reads_back(pristine):
    values = read_everything(pristine)
    assert len(chunk_files(pristine, "signals")) > 3
    assert np.isfinite(values["signals"]).all()
    assert values["mask"].sum() == values["signals"].shape[1]


# ------------------------------------------------------------ deleted chunks


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ARRAYS)
def test_deleted_chunk_is_refused_at_open(store, name):
    victim = pick_chunk(store, name)
    victim.unlink()
    with pytest.raises(CorruptStoreError, match=f"array '{name}'") as info:
        open_results(store)
    assert info.value.array == name
    assert info.value.chunk == chunk_key(store, name, victim)
    assert str(store) in str(info.value) and "overwrite=True" in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", [n for n in ARRAYS if n not in INDEXES])
def test_chunk_deleted_after_open_is_refused_at_read(store, name):
    """Zarr reads a missing chunk as the fill value (NaN, zeros): it must raise instead."""
    results = open_results(store)
    victim = pick_chunk(store, name)
    victim.unlink()
    with pytest.raises(CorruptStoreError, match="is missing") as info:
        if name == "signals":
            results.signals.compute()
        elif name == "mask":
            results.mask_img  # noqa: B018
        elif name == "mean_image":
            results.mean_img  # noqa: B018
        else:
            results.signals[name].compute()
    assert (info.value.array, info.value.chunk) == (name, chunk_key(store, name, victim))


# ------------------------------------------------------------ flipped bits


def flip_bit(file: Path, where: str) -> None:
    data = bytearray(file.read_bytes())
    position = {"first": 0, "middle": len(data) // 2, "checksum": len(data) - 2}[where]
    data[position] ^= 0x10
    file.write_bytes(bytes(data))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["first", "middle", "checksum"])
@pytest.mark.parametrize("name", ARRAYS)
def test_flipped_bit_is_refused(store, name, where):
    victim = pick_chunk(store, name)
    flip_bit(victim, where)
    with pytest.raises(CorruptStoreError, match="CRC-32C") as info:
        read_everything(store)
    assert (info.value.array, info.value.chunk) == (name, chunk_key(store, name, victim))


@pytest.mark.timeout(60)
def test_corrupt_chunk_error_crosses_a_cluster(store):
    distributed = pytest.importorskip("distributed")
    victim = pick_chunk(store, "signals")
    flip_bit(victim, "middle")
    results = open_results(store)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with pytest.raises(CorruptStoreError) as info:
            client.compute(results.signals.data).result()
    assert (info.value.array, info.value.chunk) == ("signals", chunk_key(store, "signals", victim))


@pytest.mark.timeout(60)
def test_truncated_chunk_is_refused(store):
    victim = pick_chunk(store, "signals")
    victim.write_bytes(victim.read_bytes()[:2])
    with pytest.raises(CorruptStoreError, match="truncated|CRC-32C"):
        open_results(store).signals.compute()


# ------------------------------------------------------------ malformed metadata


def edit_json(file: Path, change) -> None:
    document = json.loads(file.read_text())
    result = change(document)
    file.write_text(json.dumps(document if result is None else result))


def set_attr(name, value):
    def change(doc):
        doc["attributes"][name] = value

    return change


def del_attr(name):
    def change(doc):
        del doc["attributes"][name]

    return change


def set_key(*keys, value):
    def change(doc):
        target = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


CORRUPT, INCOMPLETE, NOT_A_STORE = CorruptStoreError, IncompleteStoreError, NotAStoreError

ROOT_CASES = {
    "format_version-string": (set_attr("format_version", "2"), CORRUPT, "format_version"),
    "format_version-float": (set_attr("format_version", 2.0), CORRUPT, "format_version"),
    "format_version-bool": (set_attr("format_version", True), CORRUPT, "format_version"),
    "format_version-null": (set_attr("format_version", None), CORRUPT, "format_version"),
    "format_version-list": (set_attr("format_version", [2]), CORRUPT, "format_version"),
    "format_version-negative": (set_attr("format_version", -1), CORRUPT, "format_version"),
    "format_version-future": (set_attr("format_version", 99), NOT_A_STORE, "Upgrade"),
    "format_version-missing": (del_attr("format_version"), NOT_A_STORE, "not a daskmask"),
    "complete-string": (set_attr("complete", "true"), CORRUPT, "complete"),
    "complete-int": (set_attr("complete", 1), CORRUPT, "complete"),
    "complete-false": (set_attr("complete", False), INCOMPLETE, "incomplete"),
    "complete-missing": (del_attr("complete"), INCOMPLETE, "incomplete"),
    "affine-string": (set_attr("affine", "eye"), CORRUPT, "affine"),
    "affine-2x2": (set_attr("affine", [[1, 0], [0, 1]]), CORRUPT, "affine"),
    "affine-text-cell": (set_attr("affine", [[1, 0, 0, "a"]] * 4), CORRUPT, "affine"),
    "affine-null-cell": (set_attr("affine", [[1, 0, 0, None]] * 4), CORRUPT, "affine"),
    "affine-missing": (del_attr("affine"), CORRUPT, "affine"),
    "mask_shape-2d": (set_attr("mask_shape", [20, 24]), CORRUPT, "mask_shape"),
    "mask_shape-string": (set_attr("mask_shape", "20x24x16"), CORRUPT, "mask_shape"),
    "mask_shape-negative": (set_attr("mask_shape", [20, 24, -16]), CORRUPT, "mask_shape"),
    "mask_shape-float": (set_attr("mask_shape", [20.0, 24, 16]), CORRUPT, "mask_shape"),
    "mask_shape-missing": (del_attr("mask_shape"), CORRUPT, "mask_shape"),
    "masker_params-string": (set_attr("masker_params", "x"), CORRUPT, "masker_params"),
    "masker_params-list": (set_attr("masker_params", [1]), CORRUPT, "masker_params"),
    "provenance-int": (set_attr("provenance", 3), CORRUPT, "provenance"),
    "daskmask_version-int": (set_attr("daskmask_version", 3), CORRUPT, "daskmask_version"),
    "created-int": (set_attr("created", 5), CORRUPT, "created"),
    "affine-edited": (
        set_attr("affine", [[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]]),
        CORRUPT,
        "root attributes",
    ),
    "masker_params-edited": (set_attr("masker_params", {}), CORRUPT, "root attributes"),
    "manifest-missing": (del_attr("manifest"), CORRUPT, "manifest"),
    "manifest-empty": (set_attr("manifest", {}), CORRUPT, "manifest"),
    "manifest-string": (set_attr("manifest", "x"), CORRUPT, "manifest"),
    "manifest-arrays-list": (
        set_key("attributes", "manifest", "arrays", value=[]),
        CORRUPT,
        "manifest",
    ),
    "manifest-entry-string": (
        set_key("attributes", "manifest", "arrays", "signals", value="x"),
        CORRUPT,
        "manifest",
    ),
    "manifest-entry-n_chunks": (
        set_key("attributes", "manifest", "arrays", "signals", "n_chunks", value=1),
        CORRUPT,
        "manifest",
    ),
    "manifest-entry-shape": (
        set_key("attributes", "manifest", "arrays", "mask", "shape", value="big"),
        CORRUPT,
        "manifest",
    ),
    "manifest-without-signals": (
        lambda doc: doc["attributes"]["manifest"]["arrays"].pop("signals") and None,
        CORRUPT,
        "signals",
    ),
    "manifest-digest": (
        set_key("attributes", "manifest", "attributes_sha256", value="0" * 64),
        CORRUPT,
        "root attributes",
    ),
    "attributes-list": (set_key("attributes", value=[]), CORRUPT, "attributes"),
    "node-type-array": (set_key("node_type", value="array"), CORRUPT, "group"),
    "zarr-format-2": (set_key("zarr_format", value=2), CORRUPT, "group"),
    "document-list": (lambda doc: [doc], CORRUPT, "group"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(ROOT_CASES))
def test_malformed_root_metadata(store, case):
    change, error, match = ROOT_CASES[case]
    edit_json(store / "zarr.json", change)
    with pytest.raises(error, match=match) as info:
        read_everything(store)
    assert str(store) in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (lambda text: text[: len(text) // 2], CORRUPT),
        (lambda text: text.replace(b"{", b"[", 1), CORRUPT),
        (lambda text: b"\xff\xfe\x00" + text[3:], CORRUPT),
        (lambda text: b"", NOT_A_STORE),
        (lambda text: b"not json at all", NOT_A_STORE),
    ],
    ids=["truncated", "bracket", "binary", "empty", "text"],
)
def test_root_metadata_not_json(store, raw, error):
    file = store / "zarr.json"
    file.write_bytes(raw(file.read_bytes()))
    with pytest.raises(error) as info:
        open_results(store)
    assert str(store) in str(info.value)


ARRAY_CASES = {
    "shape-string": set_key("shape", value="abc"),
    "shape-other": set_key("shape", value=[1, 2]),
    "shape-missing": lambda doc: doc.pop("shape") and None,
    "shape-negative": set_key("shape", value=[-1]),
    "dtype-int": set_key("data_type", value=5),
    "dtype-other": set_key("data_type", value="int8"),
    "dtype-unknown": set_key("data_type", value="float128x"),
    "chunk_grid-missing": lambda doc: doc.pop("chunk_grid") and None,
    "chunk_grid-string": set_key("chunk_grid", value="regular"),
    "chunk_shape-zero": set_key("chunk_grid", "configuration", "chunk_shape", value=[0]),
    "chunk_key_encoding-v2": set_key("chunk_key_encoding", value={"name": "v2"}),
    "codecs-string": set_key("codecs", value="blosc"),
    "codecs-no-checksum": lambda doc: doc["codecs"].pop() and None,
    "endian-big": set_key("codecs", 0, "configuration", value={"endian": "big"}),
    "fill_value-text": set_key("fill_value", value="banana"),
    "dimension_names-int": set_key("dimension_names", value=5),
    "attributes-list": set_key("attributes", value=[1]),
    "node_type-group": set_key("node_type", value="group"),
    "zarr_format-2": set_key("zarr_format", value=2),
    "document-list": lambda doc: [doc],
    "document-null": lambda doc: "null",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(ARRAY_CASES))
@pytest.mark.parametrize("name", ["signals", "mask", "mean_image", "x"])
def test_malformed_array_metadata(store, name, case):
    change = ARRAY_CASES[case]
    if case == "document-null":
        (store / name / "zarr.json").write_text("null")
    else:
        edit_json(store / name / "zarr.json", change)
    with pytest.raises(CorruptStoreError, match=f"array '{name}'") as info:
        read_everything(store)
    assert info.value.array == name
    assert str(store) in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["signals", "mask", "i"])
@pytest.mark.parametrize(
    "raw",
    [lambda t: t[: len(t) // 2], lambda t: b"\x00" * 10, lambda t: b""],
    ids=["truncated", "zeros", "empty"],
)
def test_array_metadata_not_json(store, name, raw):
    file = store / name / "zarr.json"
    file.write_bytes(raw(file.read_bytes()))
    with pytest.raises(CorruptStoreError, match="not valid JSON") as info:
        open_results(store)
    assert info.value.array == name


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["signals", "mask", "x"])
def test_array_folder_missing(store, name):
    shutil.rmtree(store / name)
    with pytest.raises(CorruptStoreError, match=f"no array '{name}'"):
        open_results(store)


# any JSON value anywhere in the metadata: a typed error, or the data as written


def json_values():
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=6,
    )


def leaf_paths(document, prefix=()):
    """Every (path) to a value in a JSON document, containers included."""
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from leaf_paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from leaf_paths(value, (*prefix, index))


@pytest.mark.timeout(300)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    file=st.sampled_from(["zarr.json", "signals/zarr.json", "mask/zarr.json", "i/zarr.json"]),
    pick=st.integers(0, 10**6),
    value=json_values(),
)
def test_any_metadata_change_is_refused_or_harmless(pristine, tmp_path_factory, file, pick, value):
    store = Path(shutil.copytree(pristine, tmp_path_factory.mktemp("any") / "s.zarr"))
    expected = read_everything(pristine)
    document = json.loads((store / file).read_text())
    paths = [p for p in leaf_paths(document) if p]
    path = paths[pick % len(paths)]
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    (store / file).write_text(json.dumps(document))
    try:
        got = read_everything(store)
    except DaskmaskError as error:
        assert isinstance(error, CorruptStoreError | NotAStoreError | IncompleteStoreError)
        assert str(store) in str(error)
        return
    # accepted: only a change that does not alter what the store holds
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values)


# ------------------------------------------------------------ killed saves

#: What every subprocess runs first: a real masker run, signals in voxel chunks.
PRELUDE = """
import os, signal, sys
import dask
import daskmask as dm
from daskmask.storage import _commit

run, target = sys.argv[1], sys.argv[2]
X = dm.NiftiMasker(standardize="zscore_sample").fit_transform(run).chunk({"voxel": 1000})

def die():
    os.kill(os.getpid(), signal.SIGKILL)
"""


def run_killed(tmp_path: Path, body: str, run_file: Path, target: Path) -> None:
    """Run PRELUDE + body in a new interpreter; it must die of SIGKILL."""
    script = tmp_path / "killed.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    done = subprocess.run(
        [sys.executable, str(script), str(run_file), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def work_folders(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if ".partial-" in n or ".old-" in n)


@pytest.fixture(scope="module")
def new_values(run_file, tmp_path_factory) -> dict[str, np.ndarray]:
    """What the subprocess's save writes (PRELUDE's X), saved undisturbed elsewhere."""
    X = dm.NiftiMasker(standardize="zscore_sample").fit_transform(run_file)
    path = tmp_path_factory.mktemp("new") / "new.zarr"
    return read_everything(dm.save(X.chunk({"voxel": VOXEL_BLOCK}), path))


def assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


@pytest.mark.timeout(120)
def test_save_killed_mid_write_is_cleaned_by_the_next_save(tmp_path, run_file, pristine):
    out = tmp_path / "out"
    out.mkdir()
    # kill the writer once two chunks of the signals are on disk, others still to come
    run_killed(
        tmp_path,
        """
        from pathlib import Path
        folder = Path(target).parent

        def kill_mid_write(block):
            if len(list(folder.glob(".*.partial-*/store/signals/c/0/*"))) >= 2:
                die()
            return block

        X = X.copy(data=X.data.map_blocks(kill_mid_write, dtype=X.dtype))
        with dask.config.set(scheduler="threads", num_workers=1):
            dm.save(X, target)
        """,
        run_file,
        out / "sub-01.zarr",
    )
    (left,) = work_folders(out)
    assert left.startswith(".sub-01.zarr.partial-")
    assert len(list((out / left / "store" / "signals" / "c" / "0").iterdir())) >= 2
    assert _lease.owner_is_dead(out / left)
    with pytest.raises(StoreNotFoundError):
        open_results(out / "sub-01.zarr")
    # the next save into that folder, of any store, removes what the dead writer left
    dm.save(open_results(pristine).signals, out / "sub-02.zarr")
    assert work_folders(out) == []
    assert sorted(os.listdir(out)) == ["sub-02.zarr"]


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_live_writer_in_another_pid_namespace_is_left_alone(tmp_path, pristine):
    work = tmp_path / ".other.zarr.partial-0123abcd"
    (work / "store").mkdir(parents=True)
    holder = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            sys.executable,
            "-c",
            "import sys, time\n"
            "from daskmask._lease import Lease\n"
            "lease = Lease.acquire(sys.argv[1])\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n",
            str(work),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        record = _lease.read_record(work)
        # same host name, another PID namespace: its pid means nothing here
        assert record["pid_namespace"] != os.stat("/proc/self/ns/pid").st_ino
        signals = open_results(pristine).signals
        dm.save(signals, tmp_path / "sub-02.zarr")
        assert (work / "store").is_dir()
        assert work.name in work_folders(tmp_path)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # its owner gone (the kernel dropped the lock), the next save removes it
    deadline = time.monotonic() + 10
    while not _lease.owner_is_dead(work) and time.monotonic() < deadline:
        time.sleep(0.05)
    dm.save(signals, tmp_path / "sub-03.zarr")
    assert work_folders(tmp_path) == []


@pytest.mark.timeout(60)
def test_work_folder_of_another_host_is_left_alone(tmp_path, pristine):
    work = tmp_path / ".other.zarr.partial-0123abcd"
    (work / "store").mkdir(parents=True)
    _lease.Lease.acquire(work).release()  # its owner is gone...
    record = json.loads((work / _lease.RECORD_FILE).read_text())
    record["hostname"] = "another-node"  # ...but it was on another machine
    (work / _lease.RECORD_FILE).write_text(json.dumps(record))
    no_lease = tmp_path / ".older.zarr.partial-89abcdef"  # an older daskmask's partial store
    no_lease.mkdir()
    dm.save(open_results(pristine).signals, tmp_path / "sub-02.zarr")
    assert (work / "store").is_dir()
    assert no_lease.is_dir()


# kill at each step of an overwrite: the path then opens as the old store or the new one
KILLS = {
    "before-exchange": (
        """
        def exchange(first, second):
            die()
        _commit.exchange = exchange
        """,
        "old",
    ),
    "after-exchange": (
        """
        real_exchange = _commit.exchange
        def exchange(first, second):
            assert real_exchange(first, second)
            die()
        _commit.exchange = exchange
        """,
        "new",
    ),
}
#: A file system without RENAME_EXCHANGE: two renames, a kill before, between or after.
for _case, _calls, _expected in [
    ("fallback-after-marker", 0, "old"),
    ("fallback-between-renames", 1, "new"),
    ("fallback-after-both-renames", 2, "new"),
]:
    KILLS[_case] = (
        f"""
        real_rename = os.rename
        calls = []
        def rename(source, target):
            if {_calls} == 0:
                die()
            real_rename(source, target)
            calls.append(target)
            if len(calls) == {_calls}:
                die()
        def exchange(first, second):
            os.rename = rename  # from here on, the commit's renames
            return False
        _commit.exchange = exchange
        """,
        _expected,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("case", "recover_by"),
    [(case, "open") for case in KILLS] + [("fallback-between-renames", "save")],
)
def test_overwrite_killed_at_each_step(tmp_path, run_file, pristine, new_values, case, recover_by):
    body, expected = KILLS[case]
    out = tmp_path / "out"
    out.mkdir()
    target = Path(shutil.copytree(pristine, out / "sub-01.zarr"))
    old = read_everything(target)
    run_killed(
        tmp_path,
        textwrap.dedent(body) + "\ndm.save(X, target, overwrite=True)\n",
        run_file,
        target,
    )
    assert work_folders(out)  # the killed writer left its work folder
    if recover_by == "save":
        dm.save(open_results(pristine).signals, out / "sub-02.zarr")
        assert work_folders(out) == []
    got = read_everything(target)
    assert_same(got, old if expected == "old" else new_values)
    dm.save(open_results(pristine).signals, out / "sub-03.zarr", overwrite=True)
    assert work_folders(out) == []


@pytest.mark.timeout(60)
def test_format_1_store_still_opens(store):
    """Stores written before manifests and checksums (format 1) open as before, unchecked."""
    expected = read_everything(store)

    def to_format_1(doc):
        del doc["attributes"]["manifest"]
        doc["attributes"]["format_version"] = 1

    edit_json(store / "zarr.json", to_format_1)
    results = open_results(store)
    assert results.format_version == 1
    assert_same(read_everything(store), expected)
