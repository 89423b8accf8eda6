"""Deterministic, realistic synthetic 4D EPI runs, generated and written volume by volume.

A run is the static head of :mod:`daskmask.datasets._phantom` modulated by the time courses
of :mod:`daskmask.datasets._timeseries`, plus thermal noise drawn from a generator seeded
by ``(seed, t)``: volume ``t`` is a pure function of the arguments and ``t``, so volumes can
be produced independently, in any order, and a file is byte-identical from run to run.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from daskmask.datasets._phantom import Anatomy, build_anatomy, build_modulation_maps
from daskmask.datasets._timeseries import TemporalModel, build_temporal_model
from daskmask.reading._writer import nifti_suffix, write_nifti_volumes

EpiKind = Literal["raw", "skull-stripped"]

EPI_KINDS: tuple[str, ...] = ("raw", "skull-stripped")
SUPPORTED_DTYPES: tuple[str, ...] = ("int16", "float32")
DEFAULT_VOXEL_SIZE: tuple[float, float, float] = (3.0, 3.0, 3.0)

_N_NETWORKS = 5
# Standard deviation of the thermal noise in each receive channel (real and imaginary), in
# image units: about 1.2 % of grey matter, a temporal SNR near 80 before BOLD and drift.
_THERMAL_NOISE_SIGMA = 12.0
# Nyquist (N/2) ghost of the raw magnitude image, as a fraction of the object.
_NYQUIST_GHOST_FRACTION = 0.02

# Independent random streams derived from the seed (numpy SeedSequence spawn keys).
_NOISE_STREAM = 0
_ANATOMY_STREAM = 1
_NETWORK_STREAM = 2
_TEMPORAL_STREAM = 3


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# -- argument validation ------------------------------------------------------------------


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(shape, np.ndarray):
        shape = tuple(shape.tolist())
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a sequence of 3 positive ints, got {shape!r}.")
    if len(shape) != 3:
        raise ValueError(
            f"shape must have 3 elements (x, y, z); got {len(shape)}: {tuple(shape)!r}. The "
            "number of volumes is given separately by n_timepoints."
        )
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(f"shape must contain ints, got {tuple(shape)!r}.")
        if size < 1:
            raise ValueError(f"shape must contain positive ints, got {tuple(shape)!r}.")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}.")
    return int(value)


def _check_positive_float(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}.")
    return float(value)


def _check_kind(kind: str) -> str:
    if kind not in EPI_KINDS:
        raise ValueError(f"kind must be one of {EPI_KINDS}, got {kind!r}.")
    return kind


def _check_dtype(dtype: DTypeLike) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(
            f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r} which is not a data type."
        ) from error
    if resolved.name not in SUPPORTED_DTYPES:
        raise ValueError(
            f"dtype must be one of {SUPPORTED_DTYPES} (what EPI runs are stored as), got "
            f"{resolved.name!r}."
        )
    return resolved


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative int, got {type(seed).__name__} {seed!r}.")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}.")
    return int(seed)


def _check_voxel_size(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    if isinstance(voxel_size, np.ndarray):
        voxel_size = tuple(voxel_size.tolist())
    if isinstance(voxel_size, (str, bytes)) or not isinstance(voxel_size, Sequence):
        raise TypeError(f"voxel_size must be a sequence of 3 numbers, got {voxel_size!r}.")
    if len(voxel_size) != 3:
        raise ValueError(f"voxel_size must have 3 elements, got {tuple(voxel_size)!r}.")
    sizes = tuple(_check_positive_float(size, "each voxel_size element") for size in voxel_size)
    return (sizes[0], sizes[1], sizes[2])


def _check_affine(affine: ArrayLike) -> np.ndarray:
    matrix = np.asarray(affine, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix, got shape {matrix.shape}.")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("affine must contain only finite values.")
    if not np.array_equal(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"The last row of affine must be [0, 0, 0, 1], got {matrix[3]}.")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError("affine must be invertible (its 3x3 part has a zero determinant).")
    return matrix


def _resolve_grid(
    shape: tuple[int, int, int],
    voxel_size: Sequence[float] | None,
    affine: ArrayLike | None,
) -> tuple[tuple[float, float, float], np.ndarray]:
    """Return (voxel size, affine): either may be implied by the other."""
    if affine is None:
        sizes = DEFAULT_VOXEL_SIZE if voxel_size is None else _check_voxel_size(voxel_size)
        return sizes, default_affine(shape, sizes)
    matrix = _check_affine(affine)
    implied = np.sqrt(np.sum(matrix[:3, :3] ** 2, axis=0))
    if voxel_size is not None:
        sizes = _check_voxel_size(voxel_size)
        if not np.allclose(sizes, implied, rtol=1e-5):
            raise ValueError(
                f"voxel_size {sizes} disagrees with the voxel size {tuple(implied.tolist())} of "
                "the affine; pass only the affine (voxel_size=None)."
            )
    implied_sizes = (float(implied[0]), float(implied[1]), float(implied[2]))
    return implied_sizes, matrix


def default_affine(
    shape: tuple[int, int, int], voxel_size: tuple[float, float, float]
) -> np.ndarray:
    """Return the default RAS+ affine: axis-aligned, world origin at the grid centre.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape.
    voxel_size : tuple of float
        Voxel edge lengths in millimetres.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64 affine.

    """
    sizes = np.asarray(voxel_size, dtype=float)
    affine = np.diag([*sizes, 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=float) - 1.0) / 2.0 * sizes
    return affine


# -- the generator core -------------------------------------------------------------------


class _EpiModel:
    """Everything about a run that does not change with time, and the per-volume recipe."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        n_timepoints: int,
        kind: str,
        dtype: np.dtype,
        voxel_size: tuple[float, float, float],
        t_r: float,
        seed: int,
        anatomy: Anatomy | None = None,
    ) -> None:
        self.shape = shape
        self.n_timepoints = n_timepoints
        self.kind = kind
        self.dtype = dtype
        self.seed = seed
        if anatomy is None:  # the walkthrough runs bring the MNI template's anatomy
            anatomy = build_anatomy(shape, voxel_size, _stream(seed, _ANATOMY_STREAM))
        self.temporal: TemporalModel = build_temporal_model(
            n_timepoints, t_r, _N_NETWORKS, _stream(seed, _TEMPORAL_STREAM)
        )
        baseline = anatomy.intensity()
        maps = build_modulation_maps(anatomy, _N_NETWORKS, _stream(seed, _NETWORK_STREAM))
        # Signal = drift * static + sum_k c_k(t) * baseline * map_k: pre-multiply the maps.
        modulation = maps
        modulation *= baseline
        if kind == "raw":
            baseline_3d = baseline.reshape(shape, order="F")
            ghost = np.roll(baseline_3d, shape[1] // 2, axis=1).ravel(order="F")
            self._static = baseline + np.float32(_NYQUIST_GHOST_FRACTION) * ghost
            self._modulation = modulation
            self._brain_index: np.ndarray | None = None
        else:
            # Only brain voxels are synthesised; everything else is an exact zero.
            self._brain_index = np.flatnonzero(anatomy.brain)
            self._static = baseline[self._brain_index]
            self._modulation = np.ascontiguousarray(modulation[:, self._brain_index])
        self._static.flags.writeable = False
        self._modulation.flags.writeable = False
        self._n_voxels = int(np.prod(shape))

    def volume(self, t: int) -> np.ndarray:
        """Return volume ``t`` (3D, Fortran-ordered, in the run's data type)."""
        temporal = self.temporal
        coefficients = np.concatenate(
            [temporal.network_signals(t), temporal.physiology_signals(t)]
        ).astype(np.float32)
        signal = self._modulation.T @ coefficients
        signal += np.float32(temporal.drift(t)) * self._static
        rng = _stream(self.seed, _NOISE_STREAM, t)
        sigma = np.float32(_THERMAL_NOISE_SIGMA)
        if self._brain_index is None:
            # Magnitude of a complex signal with Gaussian noise in both channels: Rician in
            # the head, Rayleigh (noisy, never zero) in the air around it.
            noise = rng.standard_normal((2, self._n_voxels), dtype=np.float32)
            noise *= sigma
            signal += noise[0]
            values = np.hypot(signal, noise[1], out=signal)
        else:
            # Preprocessed data: real-valued Gaussian noise, exact zeros outside the brain.
            signal += sigma * rng.standard_normal(signal.shape[0], dtype=np.float32)
            values = np.zeros(self._n_voxels, dtype=np.float32)
            values[self._brain_index] = signal
        if self.dtype.kind == "i":
            limits = np.iinfo(self.dtype)
            np.rint(values, out=values)
            np.clip(values, limits.min, limits.max, out=values)
        return values.astype(self.dtype).reshape(self.shape, order="F")


@functools.lru_cache(maxsize=2)
def _cached_model(
    shape: tuple[int, int, int],
    n_timepoints: int,
    kind: str,
    dtype_name: str,
    voxel_size: tuple[float, float, float],
    t_r: float,
    seed: int,
) -> _EpiModel:
    # Rebuilding the anatomy costs far more than a volume; generate_epi_volume called in a
    # loop reuses it. Two entries are enough for the usual raw/skull-stripped comparisons.
    return _EpiModel(shape, n_timepoints, kind, np.dtype(dtype_name), voxel_size, t_r, seed)


def _model_from_arguments(
    shape: Sequence[int],
    n_timepoints: int,
    kind: str,
    dtype: DTypeLike,
    voxel_size: Sequence[float] | None,
    affine: ArrayLike | None,
    t_r: float,
    seed: int,
) -> tuple[_EpiModel, np.ndarray]:
    grid_shape = _check_shape(shape)
    n_volumes = _check_positive_int(n_timepoints, "n_timepoints")
    sizes, matrix = _resolve_grid(grid_shape, voxel_size, affine)
    model = _cached_model(
        grid_shape,
        n_volumes,
        _check_kind(kind),
        _check_dtype(dtype).name,
        sizes,
        _check_positive_float(t_r, "t_r"),
        _check_seed(seed),
    )
    return model, matrix


def generate_epi_volume(
    t: int,
    shape: Sequence[int] = (64, 64, 32),
    n_timepoints: int = 100,
    *,
    kind: EpiKind = "raw",
    dtype: DTypeLike = "int16",
    voxel_size: Sequence[float] | None = None,
    affine: ArrayLike | None = None,
    t_r: float = 2.0,
    seed: int = 0,
) -> np.ndarray:
    """Return volume ``t`` of the synthetic run that :func:`generate_epi` would write.

    Parameters
    ----------
    t : int
        Volume index, ``0 <= t < n_timepoints``.
    shape, n_timepoints, kind, dtype, voxel_size, affine, t_r, seed
        As in :func:`generate_epi` (the affine only matters through its voxel size).

    Returns
    -------
    numpy.ndarray
        3D Fortran-ordered array of shape ``shape`` and data type ``dtype``, equal to
        ``nibabel.load(generate_epi(path, ...)).dataobj[..., t]``.

    """
    model, _ = _model_from_arguments(
        shape, n_timepoints, kind, dtype, voxel_size, affine, t_r, seed
    )
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"t must be an int volume index, got {type(t).__name__} {t!r}.")
    if not 0 <= t < model.n_timepoints:
        raise ValueError(
            f"t must be a volume index in [0, {model.n_timepoints}), got {t}; "
            "n_timepoints sets the run length."
        )
    return model.volume(int(t))


def iter_epi_volumes(
    shape: Sequence[int] = (64, 64, 32),
    n_timepoints: int = 100,
    *,
    kind: EpiKind = "raw",
    dtype: DTypeLike = "int16",
    voxel_size: Sequence[float] | None = None,
    affine: ArrayLike | None = None,
    t_r: float = 2.0,
    seed: int = 0,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield volumes ``start .. stop-1`` of a synthetic run, one at a time.

    Arguments are checked when this function is called, not at the first ``next``.

    Parameters
    ----------
    shape, n_timepoints, kind, dtype, voxel_size, affine, t_r, seed
        As in :func:`generate_epi`.
    start, stop : int
        Half-open range of volume indices (default: the whole run).

    Returns
    -------
    iterator of numpy.ndarray
        3D Fortran-ordered volumes, each as :func:`generate_epi_volume` returns it.

    """
    model, _ = _model_from_arguments(
        shape, n_timepoints, kind, dtype, voxel_size, affine, t_r, seed
    )
    stop = model.n_timepoints if stop is None else stop
    if not 0 <= start <= stop <= model.n_timepoints:
        raise ValueError(
            f"Need 0 <= start <= stop <= n_timepoints ({model.n_timepoints}), got "
            f"start={start}, stop={stop}."
        )
    return (model.volume(t) for t in range(start, stop))


def epi_tissue_maps(
    shape: Sequence[int] = (64, 64, 32),
    *,
    voxel_size: Sequence[float] | None = None,
    affine: ArrayLike | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Return the ground-truth anatomy behind :func:`generate_epi` with the same arguments.

    Parameters
    ----------
    shape, voxel_size, affine, seed
        As in :func:`generate_epi`.

    Returns
    -------
    dict of str to numpy.ndarray
        3D arrays of shape ``shape``: partial-volume fractions (float32 in ``[0, 1]``) for
        ``"scalp"``, ``"skull"``, ``"csf"``, ``"gm"`` and ``"wm"``; boolean ``"brain"``
        (the exact non-zero support of ``kind="skull-stripped"`` runs) and ``"head"``.

    """
    grid_shape = _check_shape(shape)
    sizes, _ = _resolve_grid(grid_shape, voxel_size, affine)
    anatomy = build_anatomy(grid_shape, sizes, _stream(_check_seed(seed), _ANATOMY_STREAM))
    return anatomy_maps(anatomy, grid_shape)


def anatomy_maps(anatomy: Anatomy, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Return an anatomy's tissue fractions and its brain and head supports as 3D arrays."""
    fractions = anatomy.fractions.items()
    maps = {name: fraction.reshape(shape, order="F") for name, fraction in fractions}
    maps["brain"] = anatomy.brain.reshape(shape, order="F")
    maps["head"] = anatomy.head.reshape(shape, order="F")
    return maps


def generate_epi(
    path: str | os.PathLike[str],
    shape: Sequence[int] = (64, 64, 32),
    n_timepoints: int = 100,
    *,
    kind: EpiKind = "raw",
    dtype: DTypeLike = "int16",
    voxel_size: Sequence[float] | None = None,
    t_r: float = 2.0,
    affine: ArrayLike | None = None,
    seed: int = 0,
    compresslevel: int = 1,
    chunk_volumes: int | None = None,
) -> Path:
    """Write a deterministic, realistic synthetic 4D EPI run, streaming it volume by volume.

    The head has a bright scalp, a dark skull, CSF, folded cortex, white matter, ventricles
    and deep grey nuclei with EPI contrast (CSF > grey > white matter), a smooth coil bias
    field and susceptibility dropout. Over time the signal carries a scanner drift (linear
    plus low-order cosines, 2-5 % over the run), BOLD fluctuations with 0.01-0.1 Hz time
    courses (a grey-matter-wide component at 1 % RMS plus four networks of bilateral
    blobs at 2 % RMS at their centres), aliased cardiac/respiratory fluctuations and
    thermal noise. Intensities sit around 500-1500, filling ``int16`` sensibly.

    Memory does not grow with ``n_timepoints``: volumes are generated one at a time and
    streamed to disk (see :func:`write_nifti_volumes`), so the peak is the static maps of
    the model (about twenty float32 volumes) plus a 16 MiB write buffer. The file only
    appears at ``path`` once complete.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, ``.nii`` (uncompressed) or ``.nii.gz``. Replaced if it exists.
    shape : sequence of 3 int
        Spatial shape.
    n_timepoints : int
        Number of volumes (at least 1).
    kind : {"raw", "skull-stripped"}
        ``"raw"``: a scanner magnitude image: the whole head on a noisy, non-zero
        (Rayleigh) background, with a faint Nyquist ghost. ``"skull-stripped"``: a
        preprocessed image: brain only, exact zeros outside the brain.
    dtype : {"int16", "float32"}
        Stored data type (``int16`` values are rounded).
    voxel_size : sequence of 3 float, optional
        Voxel size in mm. Default ``(3, 3, 3)``, or the voxel size of ``affine`` if given
        (a ``voxel_size`` inconsistent with ``affine`` is an error).
    t_r : float
        Repetition time in seconds, stored in ``pixdim[4]`` with time units "sec".
    affine : array-like, optional
        ``(4, 4)`` voxel-to-world affine (may be oblique). Default: axis-aligned RAS+ with
        the world origin at the grid centre. Stored as qform and sform (code 1).
    seed : int
        Non-negative seed. Same arguments give byte-identical files; volume ``t`` uses its
        own generator seeded by ``(seed, t)``.
    compresslevel : int
        gzip level 0-9 for ``.nii.gz``. Levels 1-3 use python-isal when it is installed
        (about three times faster), others the standard library; the gzip header has mtime 0
        and no file name, so the bytes do not depend on when or where the file was written.
    chunk_volumes : int, optional
        Volumes per write call (default: about 16 MiB worth).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        An argument out of range, or a file name not ending in ``.nii``/``.nii.gz``.
    TypeError
        An argument of the wrong type.

    See Also
    --------
    generate_epi_volume : one volume of the same run, in memory.
    epi_tissue_maps : the ground-truth tissue maps and brain support.

    """
    target = Path(path)
    nifti_suffix(target)
    grid_shape = _check_shape(shape)
    n_volumes = _check_positive_int(n_timepoints, "n_timepoints")
    sizes, matrix = _resolve_grid(grid_shape, voxel_size, affine)
    if isinstance(compresslevel, bool) or not isinstance(compresslevel, numbers.Integral):
        raise TypeError(f"compresslevel must be an int from 0 to 9, got {compresslevel!r}.")
    if not 0 <= compresslevel <= 9:
        raise ValueError(f"compresslevel must be an int from 0 to 9, got {compresslevel}.")
    if chunk_volumes is not None:
        chunk_volumes = _check_positive_int(chunk_volumes, "chunk_volumes")
    # Not the cached model: its static maps (about ten volumes' worth) are freed once the
    # file is written instead of staying alive in the cache.
    model = _EpiModel(
        grid_shape,
        n_volumes,
        _check_kind(kind),
        _check_dtype(dtype),
        sizes,
        _check_positive_float(t_r, "t_r"),
        _check_seed(seed),
    )
    return write_nifti_volumes(
        target,
        (model.volume(t) for t in range(model.n_timepoints)),
        shape=grid_shape,
        n_timepoints=model.n_timepoints,
        dtype=model.dtype,
        affine=matrix,
        t_r=model.temporal.t_r,
        compresslevel=int(compresslevel),
        chunk_volumes=chunk_volumes,
        description=f"daskmask synthetic EPI, kind={model.kind}, seed={model.seed}",
    )
