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

When the signals go through the extraction's raw intermediate (a scratch
file written by stage 1 and read back by stage 2, see
:mod:`daskmask.extraction._store`) and it has the result's shape and dtype,
the same optimisation keeps the intermediate in the result array instead:
stage 1 copies its rows there, stage 2 reads views of its columns, and each
cleaned block is copied back to the columns it was read from. That is safe
only if the block of every output key is computed from its own columns
alone, which the optimisation checks in the graph (otherwise the file is
used).

Any other scheduler (a distributed client, processes) computes the graph
unchanged. A copy of the graph sent to another process cannot share memory:
the result holder it carries then detaches, every block is returned as is,
and the blocks are concatenated as usual.
"""

from __future__ import annotations

import gc
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
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from dask.utils import ensure_dict

from daskmask._memory import small_pages
from daskmask._scratch import current_client
from daskmask.extraction import _store
from daskmask.signal._clean import clean_columns, clean_columns_in_place

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
                small_pages(self._array)
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
        # Materialising and rewriting the graph allocates tens of thousands of
        # tuples and task objects that live only until the computation ends:
        # a collection of the oldest generation falling due meanwhile walks
        # every object of the process (0.12 s for the HCP-like run, on the
        # critical path before the first task), though nothing here is cyclic
        # garbage. The collector pauses, and is then left as the caller had it.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._optimize(dsk, keys, **kwargs)
        finally:
            if collecting:
                gc.enable()

    def _optimize(self, dsk: Any, keys: Sequence[Any], **kwargs: Any) -> Any:
        own = [(self.name, *index) for index in product(*(range(len(c)) for c in self.chunks))]
        shape = tuple(sum(sizes) for sizes in self.chunks)
        result = _Result(shape, self.dtype)
        if _runs_here() and not _annotated(dsk):
            dsk = _intermediate_in_result(dsk, list(flatten(keys)), own, self.chunks, result)
        optimized = da.Array.__dask_optimize__(dsk, keys, **kwargs)
        if not _runs_here():
            return optimized
        if _annotated(optimized):
            return optimized  # annotations live on layers: keep the graph as it is
        graph = convert_legacy_graph(ensure_dict(optimized))
        if not _computes_only(graph, list(flatten(keys)), own):
            return optimized
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


def _annotated(dsk: Any) -> bool:
    """Whether a layer of ``dsk`` carries annotations (kept only if the layers are)."""
    return isinstance(dsk, HighLevelGraph) and any(
        layer.annotations for layer in dsk.layers.values()
    )


def _intermediate_in_result(
    dsk: Any,
    keys: list[Any],
    own: list[Any],
    chunks: tuple[tuple[int, ...], ...],
    result: _Result,
) -> Any:
    """Return ``dsk`` with the extraction's raw intermediate kept in ``result``, if safe.

    The intermediate's ``prepare`` task (the scratch file) becomes an
    :class:`~daskmask.extraction._store.InMemoryIntermediate` over the result
    array. Conditions, else ``dsk`` is returned unchanged: one intermediate,
    of the result's shape, read in the result's dtype (stage 1 may write
    narrower rows: they are cast as they are copied in), one chunk along
    time, and every output block computed from the stage-2 read of its own
    columns and no other (the cleaned block is copied over the columns it
    was read from, so a read of those columns after that copy would see
    cleaned values).
    """
    if not isinstance(dsk, HighLevelGraph) or len(chunks) != 2 or len(chunks[0]) != 1:
        return dsk
    found = [
        (name, key)
        for name, layer in dsk.layers.items()
        if isinstance(layer, MaterializedLayer) and name.startswith(_store.LAYER_PREFIX)
        for key, task in layer.items()
        if isinstance(task, tuple) and task and task[0] is _store.prepare_store
    ]
    if len(found) != 1:
        return dsk
    layer_name, prepare = found[0]
    _, _, shape, _ = dsk.layers[layer_name][prepare]
    if tuple(shape) != result.shape:
        return dsk
    graph = convert_legacy_graph(ensure_dict(dsk))
    if not _computes_only(graph, keys, own):
        return dsk
    reads = {
        (int(node.args[1]), int(node.args[2])): key
        for key, node in graph.items()
        if isinstance(node, Task) and node.func is _store.read_block
    }
    if any(np.dtype(graph[read].args[-1]) != result.dtype for read in reads.values()):
        return dsk
    columns = _slices(chunks[1])
    for key, where in zip(own, columns, strict=True):
        read = reads.get((where.start, where.stop))
        if read is None or _reads_reached(graph, key, set(reads.values())) != {read}:
            return dsk
    layers = dict(dsk.layers)
    mapping = dict(layers[layer_name])
    mapping[prepare] = _store.InMemoryIntermediate(result.array)
    layers[layer_name] = MaterializedLayer(mapping)
    cleaned = _cleaned_in_place(graph, own, columns, reads)
    if cleaned is not None and own[0][0] in layers and own[0][0] != layer_name:
        layers[own[0][0]] = MaterializedLayer(cleaned)
    return HighLevelGraph(layers, dsk.dependencies)


def _cleaned_in_place(
    graph: dict[Any, Any],
    own: list[Any],
    columns: list[slice],
    reads: dict[tuple[int, int], Any],
) -> dict[Any, Any] | None:
    """Return the output tasks with the cleaning done in the result's columns, or None.

    Each output block that is ``clean_columns`` of the stage-2 read of its own
    columns, and nothing else, gets those columns, a view of the result that
    no other task reads (checked by the caller), cleaned in place
    (:func:`~daskmask.signal.clean_columns_in_place`): the copy into the
    result that follows finds the block already there. None when a block is
    computed otherwise (the tasks stay as they are).
    """
    tasks = {}
    for key, where in zip(own, columns, strict=True):
        node = graph.get(key)
        read = reads[(where.start, where.stop)]
        if not (
            isinstance(node, Task)
            and node.func is clean_columns
            and len(node.args) == 1
            and isinstance(node.args[0], TaskRef)
            and node.args[0].key == read
            and set(node.kwargs) == {"plan"}
        ):
            return None
        tasks[key] = Task(key, clean_columns_in_place, node.args[0], **node.kwargs)
    if len(tasks) != sum(1 for key in graph if isinstance(key, tuple) and key[0] == own[0][0]):
        return None  # the layer holds other keys: leave it whole
    return tasks


def _reads_reached(graph: dict[Any, Any], key: Any, reads: set[Any]) -> set[Any]:
    """Return the stage-2 reads among the tasks ``key`` depends on (the search stops at them)."""
    reached: set[Any] = set()
    seen = {key}
    stack = [key]
    while stack:
        node = graph.get(stack.pop())
        for dependency in node.dependencies if isinstance(node, GraphNode) else ():
            if dependency in seen:
                continue
            seen.add(dependency)
            if dependency in reads:
                reached.add(dependency)
            else:
                stack.append(dependency)
    return reached


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
