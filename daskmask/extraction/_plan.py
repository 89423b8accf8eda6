"""Plan the reorganisation of masked time slabs into voxel blocks (pure, no I/O).

NIfTI runs are read as time slabs ``(x, y, z, t_chunk)``; signal cleaning
needs whole time series, i.e. blocks ``(all time, voxel_block)``. Every voxel
block depends on every time slab, so the transpose is an all-to-all exchange.
This module decides, from sizes alone, how to do it within a byte budget:

``"in-memory"``
    The whole masked run fits in the budget: dask rechunks it in the graph
    (the rechunk holds every slab until every block has its piece, so its
    memory is the whole run).
``"intermediate"``
    Otherwise, when every process that computes sees the client's scratch
    folder (dask's threads, a ``LocalCluster``, a cluster on a shared file
    system): stage 1 writes each masked slab as contiguous rows of a
    temporary raw ``(time, voxel)`` file; stage 2 reads one
    ``(all time, voxel_block)`` block per task. Each task then holds one slab
    or one block, never the run.
``"p2p"``
    Otherwise, on a distributed cluster whose workers do not see that folder
    (pods, nodes without a shared file system): dask's P2P rechunk
    (distributed's shuffle extension), which moves pieces of slabs between
    workers over the network and spills them to each worker's own disk.
    Each worker holds its share of pieces and its output blocks, not the run.

The masked values may be moved in a narrower dtype than the result's (an
int16 run's values for float32 signals) and cast once reorganised. A stage-2
read of the raw file casts piece by piece, into its result-sized block; the
two rechunks cast a whole narrow block, so the ``"p2p"`` plan sizes its
blocks for the narrow block and its cast together.

The facts (distributed or not, scratch shared or not) are inputs: the plan
does no I/O. ``dask.config.set({"daskmask.reorganise": ...})`` forces one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from daskmask._memory import as_bytes
from daskmask.reading._chunks import default_chunk_bytes

Strategy = Literal["in-memory", "intermediate", "p2p"]
StrategyRequest = Literal["auto", "in-memory", "intermediate", "p2p"]

_STRATEGIES = ("auto", "in-memory", "intermediate", "p2p")
#: Configuration key that forces a strategy (``"auto"`` by default).
STRATEGY_KEY = "daskmask.reorganise"


@dataclass(frozen=True)
class ExtractionPlan:
    """How masked time slabs become ``(all time, voxel_block)`` blocks.

    Built by :func:`plan_extraction`; consumed by the executors of
    :mod:`daskmask.extraction._apply_mask`.
    """

    #: ``"in-memory"`` (dask rechunk in the graph), ``"intermediate"`` (raw file in
    #: scratch) or ``"p2p"`` (distributed's P2P rechunk).
    strategy: Strategy
    #: Number of time points of the run.
    n_timepoints: int
    #: Number of voxels in the mask.
    n_voxels: int
    #: Bytes per value of the masked signals.
    itemsize: int
    #: Chunks along time of the masked slabs (stage 1), summing to ``n_timepoints``.
    time_chunks: tuple[int, ...]
    #: Voxels per output block (the last block holds the remainder).
    voxel_block: int
    #: The byte budget the plan was made for.
    block_bytes: int
    #: Bytes per value of the reorganised intermediate (at most ``itemsize``).
    intermediate_itemsize: int = 0

    def __post_init__(self) -> None:
        if not self.intermediate_itemsize:
            object.__setattr__(self, "intermediate_itemsize", self.itemsize)

    @property
    def voxel_chunks(self) -> tuple[int, ...]:
        """Chunks along the voxel axis of the result."""
        return split_evenly(self.n_voxels, self.voxel_block)

    @property
    def n_blocks(self) -> int:
        """Number of voxel blocks (stage-2 tasks)."""
        return len(self.voxel_chunks)

    @property
    def run_bytes(self) -> int:
        """Bytes of the whole masked run."""
        return self.n_timepoints * self.n_voxels * self.itemsize

    @property
    def block_nbytes(self) -> int:
        """Bytes of the largest output block ``(n_timepoints, voxel_block)``."""
        return self.n_timepoints * min(self.voxel_block, self.n_voxels) * self.itemsize


def split_evenly(total: int, block: int) -> tuple[int, ...]:
    """Split ``total`` into blocks of ``block`` plus a remainder.

    Parameters
    ----------
    total : int
        Length to split (0 gives ``(0,)``).
    block : int
        Block length, at least 1.

    Returns
    -------
    tuple of int
        ``(block, ..., block, remainder)``; sums to ``total``.

    """
    if total == 0:
        return (0,)
    n_full, remainder = divmod(total, block)
    return (block,) * n_full + ((remainder,) if remainder else ())


def resolve_block_bytes(block_bytes: int | str | None) -> int:
    """Return the byte budget: ``block_bytes`` parsed, or the task budget.

    Parameters
    ----------
    block_bytes : int, str or None
        Bytes, a size string such as ``"32MiB"``, or None for dask's default.

    Returns
    -------
    int
        A positive number of bytes.

    Raises
    ------
    ValueError
        If the budget is not positive or cannot be parsed.
    TypeError
        If it is of another type.

    """
    if block_bytes is None:
        return default_chunk_bytes()
    return as_bytes(block_bytes, "block_bytes")


def plan_slab_volumes(n_timepoints: int, bytes_per_timepoint: int, block_bytes: int) -> int:
    """Return how many volumes a stage-1 slab may hold within the budget.

    Parameters
    ----------
    n_timepoints : int
        Length of the run.
    bytes_per_timepoint : int
        Working memory of one time point in a stage-1 task (the volume as
        read, its float copy when smoothing or resampling, its masked row).
    block_bytes : int
        Byte budget per task.

    Returns
    -------
    int
        Between 1 and ``max(n_timepoints, 1)``.

    """
    per_slab = block_bytes // max(1, bytes_per_timepoint)
    return max(1, min(int(per_slab), max(n_timepoints, 1)))


def plan_extraction(
    n_timepoints: int,
    time_chunks: Sequence[int],
    n_voxels: int,
    itemsize: int,
    block_bytes: int | str | None = None,
    *,
    intermediate_itemsize: int | None = None,
    strategy: StrategyRequest = "auto",
    voxel_block: int | None = None,
    parallelism: int = 1,
    distributed: bool = False,
    scratch_shared: bool = True,
) -> ExtractionPlan:
    """Choose the voxel block size and the strategy of the time-to-voxel reorganisation.

    Parameters
    ----------
    n_timepoints : int
        Number of time points.
    time_chunks : sequence of int
        Chunks along time of the masked slabs (summing to ``n_timepoints``).
    n_voxels : int
        Number of voxels in the mask.
    itemsize : int
        Bytes per value of the masked signals.
    block_bytes : int, str or None, default=None
        Byte budget of one task; None means :func:`daskmask._memory.task_budget_bytes`.
    intermediate_itemsize : int or None, default=None
        Bytes per value of the reorganised intermediate, when the values
        move narrower than ``itemsize`` and are cast after; None: ``itemsize``.
        A ``"p2p"`` block then holds ``itemsize + intermediate_itemsize``
        bytes per value at its cast.
    strategy : {"auto", "in-memory", "intermediate", "p2p"}, default="auto"
        ``"auto"`` picks ``"in-memory"`` when the whole masked run fits in
        ``block_bytes``; otherwise ``"p2p"`` on a distributed cluster whose
        workers do not share the scratch folder, and ``"intermediate"``
        everywhere else. The others force it.
    voxel_block : int or None, default=None
        Voxels per block; None chooses the largest block of ``n_timepoints``
        values per voxel that fits in ``block_bytes`` (at least one voxel).
    parallelism : int, default=1
        Threads that will clean the blocks. When the run needs several
        blocks, their number is rounded up to a multiple of it (each block
        shrinks a little) so that the last round keeps every thread busy.
    distributed : bool, default=False
        Whether a ``distributed`` client will compute the graph (``"p2p"``
        needs one).
    scratch_shared : bool, default=True
        Whether every process that computes sees the client's scratch folder
        (:func:`daskmask._scratch.scratch_is_shared`).

    Returns
    -------
    ExtractionPlan
        The plan.

    Raises
    ------
    ValueError
        For negative sizes, chunks that do not sum to ``n_timepoints``, an
        unknown strategy, a non-positive ``voxel_block``, or ``"p2p"``
        without a distributed client.

    """
    budget = resolve_block_bytes(block_bytes)
    time_chunks = tuple(int(size) for size in time_chunks)
    narrow = itemsize if intermediate_itemsize is None else int(intermediate_itemsize)
    if n_timepoints < 0 or n_voxels < 0 or itemsize <= 0 or not 0 < narrow <= itemsize:
        raise ValueError(
            f"Sizes must be non-negative (itemsizes positive, the intermediate's at most the "
            f"result's); got n_timepoints={n_timepoints}, n_voxels={n_voxels}, "
            f"itemsize={itemsize}, intermediate_itemsize={intermediate_itemsize}."
        )
    if sum(time_chunks) != n_timepoints or any(size < 0 for size in time_chunks):
        raise ValueError(
            f"time_chunks {time_chunks} must be non-negative and sum to n_timepoints="
            f"{n_timepoints}."
        )
    if strategy not in _STRATEGIES:
        raise ValueError(
            f"The time-to-voxel reorganisation must be one of {_STRATEGIES} (argument "
            f"'strategy' or dask config '{STRATEGY_KEY}'); got {strategy!r}."
        )
    if strategy == "p2p" and not distributed:
        raise ValueError(
            "The 'p2p' reorganisation is distributed's P2P rechunk: it needs a "
            "distributed.Client (daskmask.connect()). Without one, use 'auto' "
            f"(dask config '{STRATEGY_KEY}')."
        )
    chosen: Strategy
    if strategy == "auto":
        fits = n_timepoints * n_voxels * itemsize <= budget
        if fits or n_voxels == 0 or n_timepoints == 0:
            chosen = "in-memory"
        elif distributed and not scratch_shared:
            chosen = "p2p"
        else:
            chosen = "intermediate"
    else:
        chosen = strategy
    if voxel_block is None:
        # A P2P block is cast whole (its narrow values and its cast at once); a
        # read of the raw file casts piecewise, and the in-graph rechunk holds the
        # whole run anyway (it fits the budget).
        held = itemsize + (narrow if chosen == "p2p" and narrow < itemsize else 0)
        per_voxel = max(1, n_timepoints * held)
        voxel_block = max(1, min(max(n_voxels, 1), budget // per_voxel))
        n_blocks = -(-n_voxels // voxel_block)
        if n_blocks > 1 and parallelism > 1:
            n_blocks = -(-n_blocks // parallelism) * parallelism
            voxel_block = max(1, -(-n_voxels // n_blocks))
    elif isinstance(voxel_block, bool) or int(voxel_block) <= 0:
        raise ValueError(f"voxel_block must be a positive int; got {voxel_block!r}.")
    voxel_block = int(voxel_block)
    return ExtractionPlan(
        strategy=chosen,
        n_timepoints=int(n_timepoints),
        n_voxels=int(n_voxels),
        itemsize=int(itemsize),
        time_chunks=time_chunks if time_chunks else (0,),
        voxel_block=voxel_block,
        block_bytes=budget,
        intermediate_itemsize=narrow,
    )


def n_stage_tasks(plan: ExtractionPlan) -> int:
    """Return the number of tasks the intermediate strategy adds to a graph.

    One preparation task, one write per time slab, one barrier and one read
    per voxel block: ``O(time slabs + voxel blocks)``.

    Parameters
    ----------
    plan : ExtractionPlan
        The plan.

    Returns
    -------
    int
        Task count.

    """
    return 1 + len(plan.time_chunks) + 1 + plan.n_blocks


__all__ = [
    "STRATEGY_KEY",
    "ExtractionPlan",
    "Strategy",
    "StrategyRequest",
    "n_stage_tasks",
    "plan_extraction",
    "plan_slab_volumes",
    "resolve_block_bytes",
    "split_evenly",
]
