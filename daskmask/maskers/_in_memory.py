"""Lazy signals whose computation into memory fills one array, block by block.

``dask.compute`` of an array ends by concatenating its blocks: every block is
held until the last one is done, then copied into a fresh result. For the
signals of a run that is twice the result's size at the peak (the blocks and
the result), plus a single-threaded copy at the very end (2 s for the
648 MB of an HCP-sized run on the benchmark machine, issue 14).

:class:`InMemoryResult` is a :class:`dask.array.Array` with the same graph,
keys and chunks, so saving, slicing and every other dask operation see an
ordinary array. Only when it is itself computed (``.to_numpy()``,
``.values``, ``.compute()`` of the DataArray, ``dask.compute``) by dask's
threads or the synchronous scheduler in this process, its graph optimisation
adds one step per block: copy the block into a result allocated once for
this computation (``np.empty``, whose pages are touched only as blocks
land) and hand on a view of it. The final step finds that every block is a
view of that one array, in place, and returns it instead of concatenating.
Each cleaned block is freed once copied, so the peak is the result plus the
blocks in flight.

Any other scheduler (a distributed client, processes) computes the graph
unchanged. A copy of the graph sent to another process cannot share memory:
the result holder it carries then detaches, every block is returned as is,
and the blocks are concatenated as usual.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from itertools import product
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask._task_spec import GraphNode, Task, TaskRef, convert_legacy_graph
from dask.array.core import concatenate3
from dask.base import get_scheduler
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph
from dask.utils import ensure_dict

from daskmask._scratch import current_client

__all__ = ["InMemoryResult", "in_memory_result"]

#: The results made by :class:`_Result` and not yet handed out, by ``id``: the
#: final step returns only one of these, never another array the blocks view.
_MADE: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


class _Result:
    """The result array of one computation, allocated by the first block that lands.

    Pickled (sent to another process), it detaches: the blocks computed
    there are returned as they are.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape = shape
        self.dtype = dtype
        self.attached = True
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    def array(self) -> np.ndarray:
        with self._lock:
            if self._array is None:
                self._array = np.empty(self.shape, self.dtype)
                _MADE[id(self._array)] = self._array
            return self._array

    def __reduce__(self) -> tuple[Any, ...]:
        return (_detached, (self.shape, self.dtype))


def _detached(shape: tuple[int, ...], dtype: np.dtype) -> _Result:
    result = _Result(shape, dtype)
    result.attached = False
    return result


def _into_result(block: np.ndarray, result: _Result, where: tuple[slice, ...]) -> np.ndarray:
    """Copy ``block`` into its place in the result; return the view of that place."""
    if not result.attached or not isinstance(block, np.ndarray) or block.dtype != result.dtype:
        return block
    target = result.array()[where]
    if target.shape != block.shape:
        return block
    target[...] = block
    return target


def _finalize(results: Any, chunks: tuple[tuple[int, ...], ...]) -> Any:
    """Return the result every block was copied into, else concatenate the blocks."""
    blocks = list(flatten(results, container=list))
    base = getattr(blocks[0], "base", None) if blocks else None
    made = _MADE.get(id(base)) if isinstance(base, np.ndarray) else None
    if made is not None and made is base and _in_place(blocks, base, chunks):
        del _MADE[id(base)]  # handed out once: a second computation makes its own
        return base
    return concatenate3(results)


def _in_place(blocks: list[Any], base: np.ndarray, chunks: tuple[tuple[int, ...], ...]) -> bool:
    """Whether ``blocks`` (in key order) are exactly the views of ``base`` the chunks tile."""
    if base.shape != tuple(sum(sizes) for sizes in chunks):
        return False
    places = list(product(*(_slices(sizes) for sizes in chunks)))
    if len(places) != len(blocks):
        return False
    for block, where in zip(blocks, places, strict=True):
        expected = base[where]
        if not (
            isinstance(block, np.ndarray)
            and block.base is base
            and block.shape == expected.shape
            and block.strides == expected.strides
            and block.__array_interface__["data"][0] == expected.__array_interface__["data"][0]
        ):
            return False
    return True


def _slices(sizes: tuple[int, ...]) -> list[slice]:
    edges = np.cumsum((0, *sizes))
    return [slice(int(edges[i]), int(edges[i + 1])) for i in range(len(sizes))]


def _runs_here() -> bool:
    """Whether the computation being optimised runs in this process's memory."""
    if current_client() is not None:
        return False
    scheduler = get_scheduler()
    return scheduler is None or scheduler in (dask.threaded.get, dask.local.get_sync)


class _FillOptimizer:
    """The graph optimisation of one :class:`InMemoryResult` (hashable by identity)."""

    def __init__(self, name: str, chunks: tuple[tuple[int, ...], ...], dtype: np.dtype) -> None:
        self.name = name
        self.chunks = chunks
        self.dtype = dtype

    def __call__(self, dsk: Any, keys: Sequence[Any], **kwargs: Any) -> Any:
        optimized = da.Array.__dask_optimize__(dsk, keys, **kwargs)
        own = [(self.name, *index) for index in product(*(range(len(c)) for c in self.chunks))]
        if not _runs_here():
            return optimized
        if isinstance(optimized, HighLevelGraph) and any(
            layer.annotations for layer in optimized.layers.values()
        ):
            return optimized  # annotations live on layers: keep the graph as it is
        graph = convert_legacy_graph(ensure_dict(optimized))
        if not _computes_only(graph, list(flatten(keys)), own):
            return optimized
        shape = tuple(sum(sizes) for sizes in self.chunks)
        result = _Result(shape, self.dtype)
        places = dict(zip(own, product(*(_slices(sizes) for sizes in self.chunks)), strict=True))
        for key in own:
            node = graph.pop(key)
            block_key = (f"daskmask-block-{self.name}", *key[1:])
            graph[block_key] = (
                node.substitute({}, key=block_key) if isinstance(node, GraphNode) else node
            )
            graph[key] = Task(key, _into_result, TaskRef(block_key), result, places[key])
        layer = f"daskmask-fill-{self.name}"
        return HighLevelGraph({layer: graph}, {layer: set()})


def _computes_only(graph: dict[Any, Any], keys: list[Any], own: list[Any]) -> bool:
    """Whether ``keys`` are this array's blocks, or one final step over exactly them.

    dask hands the optimisation either the array's own keys or, for
    ``compute``, the key of its final step (the concatenation); anything
    else (the array computed with others, a part of it) stays unchanged.
    """
    if keys == own:
        return True
    if len(keys) != 1 or not all(key in graph for key in own):
        return False
    final = graph.get(keys[0])
    return isinstance(final, GraphNode) and set(final.dependencies) == set(own)


class InMemoryResult(da.Array):
    """A dask array whose own computation fills one preallocated result.

    Build it with :func:`in_memory_result`; see the module docstring.
    """

    def __dask_postcompute__(self) -> tuple[Any, tuple[Any, ...]]:
        return _finalize, (self.chunks,)


def in_memory_result(array: da.Array) -> da.Array:
    """Return ``array`` (same graph, keys, chunks) computed into one preallocated result.

    Parameters
    ----------
    array : dask.array.Array
        The lazy signals.

    Returns
    -------
    dask.array.Array
        An :class:`InMemoryResult` over ``array``'s graph; ``array`` itself if
        it has no NumPy blocks (another chunk type).

    """
    if type(array._meta) is not np.ndarray:
        return array
    wrapped = InMemoryResult(array.dask, array.name, array.chunks, meta=array._meta)
    wrapped.__dict__["__dask_optimize__"] = _FillOptimizer(
        array.name, array.chunks, np.dtype(array.dtype)
    )
    return wrapped
