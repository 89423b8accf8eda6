"""daskmask.signal.clean on dask arrays equals the numpy path, block by block."""

from __future__ import annotations

import threading
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from _signal_helpers import confounds, mirror_safe_mask, signals
from distributed import Client, LocalCluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskmask.signal import clean

BANDPASS = {"low_pass": 0.1, "high_pass": 0.01, "t_r": 2.0}


def assert_same(lazy: da.Array, eager: np.ndarray, scheduler="threads") -> None:
    """The dask result equals the numpy one (same dtype and shape).

    Tolerance relative to the signals' magnitude: 1e-6 for float64; 1e-5 for
    float32, whose cleaned values (differences of large numbers after
    filtering and confound regression) carry about 1e-6 of rounding that the
    block-wise and whole-array paths accumulate in different orders — the
    same tolerance as the float32 parity with nilearn.
    """
    assert isinstance(lazy, da.Array)
    assert lazy.dtype == eager.dtype
    assert lazy.shape == eager.shape
    result = lazy.compute(scheduler=scheduler)
    assert result.dtype == eager.dtype
    scale = float(np.nanmax(np.abs(eager))) if eager.size else 0.0
    tolerance = 1e-5 if eager.dtype == np.float32 else 1e-6
    np.testing.assert_allclose(result, eager, rtol=tolerance, atol=tolerance * scale)


OPTIONS = {
    "defaults": {},
    "psc": {"standardize": "psc"},
    "psc_no_detrend": {"standardize": "psc", "detrend": False},
    "bandpass_confounds": {**BANDPASS, "confounds": confounds(60)},
    "cosine_scrub": {
        "filter": "cosine",
        "high_pass": 0.01,
        "t_r": 2.0,
        "sample_mask": mirror_safe_mask(60),
        "confounds": confounds(60),
    },
    "butterworth_scrub_extrapolate": {
        **BANDPASS,
        "sample_mask": np.arange(3, 57),
        "extrapolate": True,
        "standardize": "psc",
    },
    "butterworth_scrub": {"low_pass": 0.1, "t_r": 2.0, "sample_mask": mirror_safe_mask(60)},
    "runs": {
        "runs": np.repeat([1, 0], 30),
        "confounds": confounds(60),
        "standardize": "psc",
        "sample_mask": [np.arange(30), np.arange(2, 30)],
    },
    "ensure_finite": {"ensure_finite": True, "standardize_confounds": False},
}


def _input(dtype=np.float32) -> np.ndarray:
    x = signals((60, 90), dtype)
    if dtype == np.float32:
        x[5, 3] = np.nan
        x[7, 40:44] = np.inf
    return x


@pytest.mark.parametrize("block", [1, 7, 32, 90])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_dask_equals_numpy(name, block):
    x = _input()
    kwargs = OPTIONS[name]
    if not kwargs.get("ensure_finite"):
        x = np.nan_to_num(x, posinf=0.0)
    eager = clean(x, **kwargs)
    lazy = clean(da.from_array(x, chunks=(60, block)), **kwargs)
    assert lazy.chunks[0] == (eager.shape[0],)
    assert lazy.chunks[1] == da.from_array(x, chunks=(60, block)).chunks[1]
    assert_same(lazy, eager)


def test_time_chunks_are_merged():
    x = _input()
    x = np.nan_to_num(x, posinf=0.0)
    lazy = clean(da.from_array(x, chunks=(7, 16)), **BANDPASS)
    assert lazy.chunks == ((60,), da.from_array(x, chunks=(7, 16)).chunks[1])
    assert_same(lazy, clean(x, **BANDPASS))


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.float64])
def test_dtypes(dtype):
    x = _input(dtype)
    assert_same(clean(da.from_array(x, chunks=(60, 13)), **BANDPASS), clean(x, **BANDPASS))


def test_nan_stays_in_its_block():
    x = np.nan_to_num(_input(), posinf=0.0)
    x[4, 3] = np.nan
    out = clean(da.from_array(x, chunks=(60, 10))).compute(scheduler="threads")
    assert np.isnan(out[:, 3]).all()
    assert np.isfinite(out[:, 10:]).all()


class _RecordingArray:
    """Array-like that records which column ranges are read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __getitem__(self, key):
        cols = key[1]
        if cols.stop != cols.start:  # dask reads an empty slice for its meta
            with self._lock:
                self.reads.append((cols.start, cols.stop))
        return self.data[key]


@pytest.mark.parametrize("standardize", ["zscore_sample", None])
def test_one_output_block_reads_one_input_block(standardize):
    # memory bound: an output block depends on its own input block only
    source = _RecordingArray(np.nan_to_num(_input(), posinf=0.0))
    lazy = clean(
        da.from_array(source, chunks=(60, 10), asarray=False),
        confounds=confounds(60),
        standardize=standardize,
        **BANDPASS,
    )
    lazy.blocks[0, 2].compute(scheduler="sync")
    assert source.reads == [(20, 30)]


def test_lazy_until_computed():
    source = _RecordingArray(np.nan_to_num(_input(), posinf=0.0))
    clean(da.from_array(source, chunks=(60, 10), asarray=False), **BANDPASS)
    assert source.reads == []


@pytest.fixture(scope="module")
def client():
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.mark.parametrize("name", ["bandpass_confounds", "runs", "cosine_scrub"])
def test_local_cluster(client, name):
    x = np.nan_to_num(_input(), posinf=0.0)
    kwargs = OPTIONS[name]
    lazy = clean(da.from_array(x, chunks=(60, 16)), **kwargs)
    result = client.compute(lazy).result()
    eager = clean(x, **kwargs)
    np.testing.assert_allclose(result, eager, rtol=1e-6, atol=1e-6 * np.abs(eager).max())


@st.composite
def cases(draw):
    n = draw(st.integers(36, 70))
    v = draw(st.integers(1, 30))
    block = draw(st.integers(1, v))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int16]))
    kwargs = {
        "detrend": draw(st.booleans()),
        "standardize": draw(st.sampled_from(["zscore_sample", "psc", None])),
        "standardize_confounds": draw(st.booleans()),
    }
    filt = draw(st.sampled_from(["none", "low", "high", "band", "cosine"]))
    kwargs.update(
        {
            "none": {},
            "low": {"low_pass": 0.1, "t_r": 2.0},
            "high": {"high_pass": 0.02, "t_r": 2.0},
            "band": BANDPASS,
            "cosine": {"filter": "cosine", "high_pass": 0.01, "t_r": 2.0},
        }[filt]
    )
    if draw(st.booleans()):
        kwargs["confounds"] = confounds(n, draw(st.integers(1, 4)), seed=draw(st.integers(0, 9)))
    if draw(st.booleans()):
        kept = draw(
            st.lists(st.integers(0, n - 1), min_size=n - 6, max_size=n, unique=True).map(sorted)
        )
        kwargs["sample_mask"] = np.array(kept)
        kwargs["extrapolate"] = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return signals((n, v), dtype, seed), block, kwargs


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
def test_hypothesis_dask_equals_numpy(case):
    x, block, kwargs = case
    lazy_input = da.from_array(x, chunks=(x.shape[0], block))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            eager = clean(x, **kwargs)
        except ValueError as error:  # e.g. too few samples left to filter
            with pytest.raises(type(error)) as ours:
                clean(lazy_input, **kwargs)
            assert str(ours.value) == str(error)
            return
        assert_same(clean(lazy_input, **kwargs), eager, scheduler="sync")


# The in-memory result cleans its blocks in the result's own columns
# (clean_columns_in_place): the same bits as clean_columns' copy, or a copy
# whenever the plan or the block does not allow it.


def _in_place_plan(n_rows: int, dtype=np.float32, **options):
    from daskmask.signal import make_plan

    options = {"detrend": True, "standardize": "zscore_sample", "filter": False, **options}
    return make_plan(n_rows, np.dtype(dtype), **options)


@pytest.mark.parametrize("standardize", ["zscore_sample", None])
@pytest.mark.parametrize("detrend", [True, False])
@pytest.mark.parametrize("width", [2, 3, 300, 301, 1500])
def test_in_place_cleaning_has_the_bits_of_the_copy(standardize, detrend, width) -> None:
    from daskmask.signal._clean import clean_columns, clean_columns_in_place

    rng = np.random.default_rng(width)
    # a result of several blocks; the block is a strided view of its columns
    result = (rng.standard_normal((700, width + 20)) * 30 + 900).astype(np.float32)
    result[:, 5] = 42.0  # a constant column: std below eps
    before = result.copy()
    plan = _in_place_plan(700, detrend=detrend, standardize=standardize)
    block = result[:, 3 : 3 + width]
    expected = clean_columns(block.copy(), plan)
    cleaned = clean_columns_in_place(block, plan)
    assert np.shares_memory(cleaned, result)
    np.testing.assert_array_equal(cleaned, expected)
    np.testing.assert_array_equal(result[:, 3 : 3 + width], expected)
    np.testing.assert_array_equal(result[:, :3], before[:, :3])  # other columns untouched
    np.testing.assert_array_equal(result[:, 3 + width :], before[:, 3 + width :])


def test_in_place_cleaning_zeroes_non_finite_values_as_the_copy() -> None:
    from daskmask.signal._clean import clean_columns, clean_columns_in_place

    rng = np.random.default_rng(1)
    block = rng.standard_normal((50, 40)).astype(np.float32)
    block[3, 4], block[7, 30] = np.nan, np.inf
    plan = _in_place_plan(50, ensure_finite=True)
    expected = clean_columns(block, plan)
    np.testing.assert_array_equal(clean_columns_in_place(block, plan), expected)
    assert np.isfinite(block).all()


@pytest.mark.parametrize(
    "case",
    ["confounds", "filter", "runs", "sample_mask", "psc", "float64", "one column", "read-only"],
)
def test_in_place_cleaning_copies_what_it_cannot_clean_in_place(case) -> None:
    from daskmask.signal._clean import clean_columns, clean_columns_in_place

    rng = np.random.default_rng(2)
    n_rows = 60
    block = (rng.standard_normal((n_rows, 8)) * 5 + 100).astype(np.float32)
    options = {
        "confounds": {"confounds": rng.standard_normal((n_rows, 2))},
        "filter": {"filter": "butterworth", "high_pass": 0.01, "t_r": 2.0},
        "runs": {"runs": np.repeat([0, 1], n_rows // 2)},
        "sample_mask": {"sample_mask": np.arange(2, n_rows)},
        "psc": {"standardize": "psc"},
    }.get(case, {})
    plan = _in_place_plan(n_rows, **options)
    if case == "float64":
        block = block.astype(np.float64)
        plan = _in_place_plan(n_rows, dtype=np.float32)
    if case == "one column":
        block = block[:, :1].copy()
    if case == "read-only":
        block.flags.writeable = False
    before = block.copy()
    expected = clean_columns(before.copy(), plan)  # what the copy gives
    cleaned = clean_columns_in_place(block, plan)
    assert not np.shares_memory(cleaned, block)
    np.testing.assert_array_equal(block, before)  # untouched
    np.testing.assert_array_equal(cleaned, expected)
