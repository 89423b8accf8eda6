"""The mean-over-time kernels shared by the mean reduction and the decode pass."""

from __future__ import annotations

import numpy as np
import pytest

from daskmask._folding import (
    accumulator_dtype,
    add_volumes,
    exact_sum_dtype,
    fold_volumes,
    mean_dtype,
)


def _volume_by_volume(blocks: list[np.ndarray]) -> np.ndarray:
    """The definition: float64 additions, one volume after the other."""
    total = blocks[0][..., 0].astype(np.float64)
    for block in blocks:
        for t in range(block.shape[-1]):
            if block is blocks[0] and t == 0:
                continue
            total += block[..., t]
    return total


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32])
@pytest.mark.parametrize("block_volumes", [1, 5, 18])
def test_integer_blocks_sum_exactly(dtype, block_volumes):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(block_volumes)
    # Extreme values: a narrow sum would wrap around.
    run = rng.choice([info.min, info.max, info.max - 1, 0], size=(4, 3, 2, 37)).astype(dtype)
    blocks = [run[..., i : i + block_volumes] for i in range(0, 37, block_volumes)]
    total = None
    for block in blocks:
        total = fold_volumes(total, block, accumulator_dtype(np.dtype(dtype)))
    assert total.dtype == np.float64 == mean_dtype(np.dtype(dtype))
    assert total.tobytes() == _volume_by_volume(blocks).tobytes()


@pytest.mark.parametrize("volumes", [1 << 15, (1 << 15) + 1])
def test_longest_int32_block_and_the_next_are_exact(volumes):
    # 2**15 volumes of 65535 (uint16) or -32768 (int16) are the largest sums
    # taken in int32; one more volume takes the int64 path.
    for dtype, value in ((np.uint16, 65535), (np.int16, -32768)):
        block = np.full((2, 1, 1, volumes), value, dtype=dtype)
        total = fold_volumes(None, block, np.dtype(np.float64))
        assert total.dtype == np.float64
        np.testing.assert_array_equal(total, np.full((2, 1, 1), float(value) * volumes))


def test_float_blocks_add_volume_by_volume():
    rng = np.random.default_rng(3)
    run = rng.normal(100, 30, (5, 4, 3, 23)).astype(np.float32)
    total = None
    for start in range(0, 23, 4):
        total = fold_volumes(total, run[..., start : start + 4], np.dtype(np.float32))
    expected = run[..., 0].copy()
    for t in range(1, 23):
        expected += run[..., t]
    assert total.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32])
@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_volumes_added_in_the_exact_dtype_equal_float64(dtype, byte_order):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    run = rng.choice([info.min, info.max, info.max - 1, 0], size=(37, 24)).astype(dtype)
    slab = run.astype(np.dtype(dtype).newbyteorder(byte_order))  # as it lies on disk
    total = np.zeros(24, exact_sum_dtype(slab.dtype, 37))
    for start in range(0, 37, 5):
        add_volumes(total, slab[start : start + 5])
    assert total.tobytes() == run.sum(axis=0, dtype=total.dtype).tobytes()
    np.testing.assert_array_equal(total.astype(np.float64), run.astype(np.float64).sum(axis=0))


def test_exact_sum_dtype_refuses_what_it_cannot_sum_exactly():
    assert exact_sum_dtype(np.dtype(">i2"), 1 << 15) == np.int32
    assert exact_sum_dtype(np.dtype(np.uint16), (1 << 15) + 1) == np.int64
    assert exact_sum_dtype(np.dtype(np.uint32), (1 << 21) - 1) == np.int64
    for dtype, volumes in ((np.uint32, 1 << 21), (np.int64, 2), (np.float32, 2)):
        assert exact_sum_dtype(np.dtype(dtype), volumes) is None
