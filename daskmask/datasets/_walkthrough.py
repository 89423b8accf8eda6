"""The walkthrough's runs, built from real anatomy: raw EPI, skull-stripped, occipital cortex.

nilearn's NiftiMasker walkthrough teaches on two kinds of data: already-masked EPI (data on an
exact-zero background, for the ``background`` strategy; its sample is masked to the occipital
cortex) and raw EPI (a head with scalp on a noisy background, for the ``epi`` strategy), both
in MNI space with a hundred volumes or more. This module makes three runs from the MNI ICBM152
2009a templates that daskmask ships: the raw run, the same run skull-stripped (the whole brain
on an exact-zero background), and the skull-stripped run masked to the occipital cortex (the
posterior grey matter), like the walkthrough's already-masked sample:

* grey and white matter come from the template's probability maps, CSF fills the rest of the
  template's brain support (ventricles, sulci) plus a thin layer around it;
* the template is skull-stripped, so skull and scalp are grown outside the brain as shells of
  realistic thickness (by distance to the brain surface);
* the tissue fractions are brought to the EPI grid with partial-volume averaging, then the
  run is synthesised by the generator of :mod:`daskmask.datasets._generator`: EPI (T2*)
  contrast, coil bias, susceptibility dropout, drift, BOLD networks, physiology and thermal
  noise (Rician in the head, Rayleigh in the air of the raw run);
* the occipital run is the skull-stripped run, voxel for voxel, with exact zeros outside the
  occipital cortex (:func:`occipital_support`).

The runs are generated at first use into a cache folder (written atomically, keyed by
:data:`GENERATOR_VERSION`): only this generator and the templates ship with daskmask.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from daskmask.datasets._generator import (
    _ANATOMY_STREAM,
    _EpiModel,
    _stream,
    anatomy_maps,
)
from daskmask.datasets._phantom import (
    _BRAIN_SURFACE,
    Anatomy,
    _HeadParameters,
    _static_fields,
)
from daskmask.exceptions import StorageAccessError, StorageError
from daskmask.masking._templates import load_template
from daskmask.reading._writer import write_nifti_volumes

#: Bumped whenever the runs change: it names the cache folder, so old runs are never reused.
GENERATOR_VERSION = 2
#: Environment variable naming the folder where generated data are cached.
DATA_ENV_VAR = "DASKMASK_DATA"

#: The EPI grid: 4 mm voxels over the template's field of view (the walkthrough's
#: development fMRI runs are 4 mm MNI runs too).
VOXEL_SIZE_MM = 4.0
GRID_SHAPE: tuple[int, int, int] = (50, 59, 48)
GRID_ORIGIN_MM: tuple[float, float, float] = (-98.0, -134.0, -72.0)
N_VOLUMES = 150
T_R = 2.0
SEED = 2009

RAW_NAME = "sub-01_task-rest_space-MNI152NLin2009aSym_res-4mm_desc-raw_bold.nii.gz"
MASKED_NAME = "sub-01_task-rest_space-MNI152NLin2009aSym_res-4mm_desc-brain_bold.nii.gz"
OCCIPITAL_NAME = "sub-01_task-rest_space-MNI152NLin2009aSym_res-4mm_desc-occipital_bold.nii.gz"

# The occipital cortex of the occipital run: brain voxels at least this much grey matter
# (partial volume at 4 mm), behind the plane y = -60 mm (the parieto-occipital sulcus lies
# at y = -60..-70 in MNI space) and above z = -16 mm (below it, behind the tentorium, lies
# the cerebellum). About 2.6 % of the grid, as the walkthrough's occipital sample is a few
# percent of its image.
_OCCIPITAL_MIN_GREY = 0.3
_OCCIPITAL_MAX_Y_MM = -60.0
_OCCIPITAL_MIN_Z_MM = -16.0

# Shells grown outside the template's (skull-stripped) brain, as distances from its surface in
# mm: CSF between brain and skull, then the skull, then the scalp (skin, fat and muscle).
_CSF_SHELL_MM = 2.0
_SKULL_SHELL_MM = 10.0
_SCALP_SHELL_MM = 16.0
# The anatomy is built on a 2 mm grid (the 1 mm templates averaged 2x2x2): fine enough for
# 4 mm partial volumes, eight times cheaper than 1 mm for the distance transform.
_WORK_STEP = 2


@dataclass(frozen=True)
class WalkthroughRuns:
    """The paths of the walkthrough's three runs, and how they were made.

    Attributes
    ----------
    raw : pathlib.Path
        Raw EPI: the whole head (scalp, skull, brain) on a noisy Rayleigh background, int16.
        What ``mask_strategy="epi"`` is for.
    masked : pathlib.Path
        The same run skull-stripped: the whole brain on an exact-zero background, int16.
    occipital : pathlib.Path
        The skull-stripped run masked to the occipital cortex (exact zeros elsewhere), int16:
        already-masked data like the walkthrough's, what the default
        ``mask_strategy="background"`` is for.
    shape : tuple of int
        Spatial shape of the runs.
    n_volumes : int
        Number of volumes of each run.
    t_r : float
        Repetition time in seconds.

    """

    raw: Path
    masked: Path
    occipital: Path
    shape: tuple[int, int, int] = GRID_SHAPE
    n_volumes: int = N_VOLUMES
    t_r: float = T_R

    def __iter__(self) -> Iterator[Path]:
        """Unpack as ``raw, masked, occipital = load_walkthrough_runs()``."""
        return iter((self.raw, self.masked, self.occipital))


def grid_affine() -> np.ndarray:
    """Return the 4x4 affine of the walkthrough runs (4 mm, axis-aligned, MNI space)."""
    affine = np.diag([VOXEL_SIZE_MM] * 3 + [1.0])
    affine[:3, 3] = GRID_ORIGIN_MM
    return affine


def _world_coordinates() -> np.ndarray:
    """Return the ``(3, n_voxels)`` MNI coordinates (mm) of the grid, voxels in Fortran order."""
    voxels = np.indices(GRID_SHAPE).reshape(3, -1, order="F")
    return grid_affine()[:3, :3] @ voxels + grid_affine()[:3, 3:]


# -- anatomy ------------------------------------------------------------------------------


def _average_blocks(volume: np.ndarray, step: int) -> np.ndarray:
    """Average ``step**3`` blocks, zero-padded at the far edges: coarser partial volumes."""
    padded_shape = [-(-n // step) * step for n in volume.shape]
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[tuple(slice(0, n) for n in volume.shape)] = volume
    blocks = padded.reshape(
        padded_shape[0] // step, step, padded_shape[1] // step, step, padded_shape[2] // step, step
    )
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def _fine_fractions() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Tissue fractions on the 2 mm work grid, the brain-plus-CSF fraction, the grid's affine."""
    t1, template_affine = load_template("whole-brain")
    grey, _ = load_template("gm")
    white, _ = load_template("wm")
    step = _WORK_STEP
    hull = _average_blocks((t1 > 0).astype(np.float32), step)
    grey = np.minimum(_average_blocks(grey, step), hull)
    white = np.minimum(_average_blocks(white, step), hull - grey)
    # Distance (mm) from the brain support, zero inside: the shells are grown from it.
    distance = ndimage.distance_transform_edt(hull < 0.5, sampling=float(step)).astype(np.float32)

    def within(radius_mm: float) -> np.ndarray:
        # A one-voxel partial-volume ramp at each shell's outer surface.
        return np.clip(0.5 + (radius_mm - distance) / step, 0.0, 1.0).astype(np.float32)

    with_csf, with_skull, head = (
        np.maximum(within(r), hull) for r in (_CSF_SHELL_MM, _SKULL_SHELL_MM, _SCALP_SHELL_MM)
    )
    fractions = {
        "scalp": head - with_skull,
        "skull": with_skull - with_csf,
        # Ventricles and sulci inside the template's support, and the layer around it.
        "csf": np.clip(with_csf - grey - white, 0.0, 1.0),
        "gm": grey,
        "wm": white,
    }
    affine = template_affine.copy()
    affine[:3, :3] *= step
    # The centre of a 2x2x2 block is half a fine voxel past its first voxel.
    affine[:3, 3] += (step - 1) / 2.0
    return fractions, with_csf, affine


def _to_epi_grid(volume: np.ndarray, source_affine: np.ndarray) -> np.ndarray:
    """Partial-volume value of each 4 mm voxel: a Gaussian of the voxel's width, then sampled."""
    source_step = source_affine[0, 0]
    sigma = VOXEL_SIZE_MM / np.sqrt(8 * np.log(2)) / source_step
    smooth = ndimage.gaussian_filter(volume, sigma, mode="constant")
    target_to_source = np.linalg.solve(source_affine, grid_affine())
    coordinates = np.indices(GRID_SHAPE, dtype=np.float64).reshape(3, -1)
    coordinates = target_to_source[:3, :3] @ coordinates + target_to_source[:3, 3:]
    values = ndimage.map_coordinates(smooth, coordinates, order=1, mode="constant", cval=0.0)
    return np.clip(values, 0.0, 1.0).astype(np.float32)  # flat, C order of the grid


def build_walkthrough_anatomy() -> Anatomy:
    """Build the head of the walkthrough runs on their 4 mm grid.

    Returns
    -------
    Anatomy
        Tissue fractions, brain and head supports and static fields, flattened in Fortran
        order (the NIfTI on-disk order), as the generator's own phantom.

    """
    fine, fine_with_csf, fine_affine = _fine_fractions()

    def on_grid(volume: np.ndarray) -> np.ndarray:
        flat_c = _to_epi_grid(volume, fine_affine)
        return flat_c.reshape(GRID_SHAPE).ravel(order="F")

    fractions = {tissue: on_grid(volume) for tissue, volume in fine.items()}
    head = sum(fractions.values())
    brain = on_grid(fine_with_csf) >= 0.5
    # Normalised head coordinates as the phantom defines them (the brain surface at radius
    # _BRAIN_SURFACE), so that its bias field, dropout and network maps fall where a real
    # head has them.
    world = _world_coordinates()
    brain_world = world[:, brain]
    centre = (brain_world.max(axis=1) + brain_world.min(axis=1)) / 2.0
    semi_axes = (brain_world.max(axis=1) - brain_world.min(axis=1)) / 2.0 / _BRAIN_SURFACE
    normalised = ((world - centre[:, None]) / semi_axes[:, None]).astype(np.float32)
    rng = _stream(SEED, _ANATOMY_STREAM)
    parameters = _HeadParameters(
        semi_axes_mm=semi_axes,
        fold_phases=rng.uniform(0.0, 2.0 * np.pi, size=3),
        bias_coefficients=rng.uniform(-1.0, 1.0, size=3),
        voxel_size_mm=np.full(3, VOXEL_SIZE_MM),
        voxel_width_mm=VOXEL_SIZE_MM,
    )
    bias, dropout = _static_fields(normalised, parameters)
    return Anatomy(
        shape=GRID_SHAPE,
        fractions=fractions,
        brain=brain,
        head=head >= 0.5,
        bias=bias.astype(np.float32),
        dropout=dropout.astype(np.float32),
        normalised_coordinates=normalised,
    )


def occipital_support(anatomy: Anatomy) -> np.ndarray:
    """Return the occipital cortex of the occipital run: its exact non-zero support.

    Parameters
    ----------
    anatomy : Anatomy
        The head of the walkthrough runs (:func:`build_walkthrough_anatomy`).

    Returns
    -------
    numpy.ndarray
        Boolean, flattened in Fortran order: brain voxels at least 30 % grey matter, behind
        y = -60 mm and above z = -16 mm, the largest face-connected part (one piece of
        cortex, as a region-of-interest mask is).

    """
    world = _world_coordinates()
    selected = (
        anatomy.brain
        & (anatomy.fractions["gm"] >= _OCCIPITAL_MIN_GREY)
        & (world[1] <= _OCCIPITAL_MAX_Y_MM)
        & (world[2] >= _OCCIPITAL_MIN_Z_MM)
    )
    labels, n_parts = ndimage.label(selected.reshape(GRID_SHAPE, order="F"))
    if n_parts > 1:
        largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        selected = (labels == largest).ravel(order="F")
    return selected


def walkthrough_tissue_maps() -> dict[str, np.ndarray]:
    """Return the ground truth behind the walkthrough runs.

    Returns
    -------
    dict of str to numpy.ndarray
        3D arrays of the runs' shape: partial-volume fractions (float32 in ``[0, 1]``) of
        ``"scalp"``, ``"skull"``, ``"csf"``, ``"gm"`` and ``"wm"``; boolean ``"brain"``
        (the exact non-zero support of the skull-stripped run), ``"occipital"`` (that of the
        occipital run) and ``"head"``.

    """
    anatomy = build_walkthrough_anatomy()
    maps = anatomy_maps(anatomy, GRID_SHAPE)
    maps["occipital"] = occipital_support(anatomy).reshape(GRID_SHAPE, order="F")
    return maps


def _model(anatomy: Anatomy, kind: str) -> _EpiModel:
    return _EpiModel(
        anatomy.shape,
        N_VOLUMES,
        kind,
        np.dtype(np.int16),
        (VOXEL_SIZE_MM,) * 3,
        T_R,
        SEED,
        anatomy=anatomy,
    )


def _write_run(path: Path, volumes: Iterator[np.ndarray], kind: str) -> None:
    write_nifti_volumes(
        path,
        volumes,
        shape=GRID_SHAPE,
        n_timepoints=N_VOLUMES,
        dtype=np.int16,
        affine=grid_affine(),
        t_r=T_R,
        compresslevel=1,
        description=f"daskmask walkthrough run v{GENERATOR_VERSION}, {kind}, MNI152 2009a",
    )


# -- the cache ----------------------------------------------------------------------------


def data_home(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder where daskmask caches generated data.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Use this folder. Default: ``$DASKMASK_DATA``, else ``$XDG_CACHE_HOME/daskmask``,
        else ``~/.cache/daskmask``.

    Returns
    -------
    pathlib.Path
        The folder (not created here).

    """
    if path is not None:
        return Path(path).expanduser()
    configured = os.environ.get(DATA_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "daskmask"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (RAW_NAME, MASKED_NAME, OCCIPITAL_NAME))


def _generate_into(folder: Path) -> None:
    anatomy = build_walkthrough_anatomy()
    raw = _model(anatomy, "raw")
    _write_run(folder / RAW_NAME, (raw.volume(t) for t in range(N_VOLUMES)), "raw")
    del raw  # its static maps: about ten volumes of float32
    skull_stripped = _model(anatomy, "skull-stripped")
    occipital = occipital_support(anatomy).reshape(GRID_SHAPE, order="F")
    # The occipital run is the skull-stripped run cut to the cortex: its values are kept
    # while the skull-stripped run is written (a few hundred kB, not the 4D run) and put
    # back on the grid for the second file, so every volume is synthesised once.
    kept: list[np.ndarray] = []

    def skull_stripped_volumes() -> Iterator[np.ndarray]:
        for t in range(N_VOLUMES):
            volume = skull_stripped.volume(t)
            kept.append(volume[occipital])
            yield volume

    def occipital_volumes() -> Iterator[np.ndarray]:
        for values in kept:
            volume = np.zeros(GRID_SHAPE, dtype=np.int16, order="F")
            volume[occipital] = values
            yield volume

    _write_run(folder / MASKED_NAME, skull_stripped_volumes(), "skull-stripped")
    _write_run(folder / OCCIPITAL_NAME, occipital_volumes(), "occipital cortex")


def _publish(partial: Path, final: Path) -> None:
    """Rename the finished folder into place; another process that finished first wins."""
    if final.exists() and not _complete(final):
        # A folder left incomplete (files deleted by hand): set it aside, then replace it.
        stale = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.stale")
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(partial, final)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not _complete(final):
            raise
        shutil.rmtree(partial, ignore_errors=True)


def load_walkthrough_runs(
    data_dir: str | os.PathLike[str] | None = None, *, verbose: bool = False
) -> WalkthroughRuns:
    """Return the walkthrough's three runs (raw, skull-stripped, occipital), made at first use.

    Three deterministic 4D EPI runs in MNI space (4 mm, 50 x 59 x 48 voxels, 150 volumes,
    TR 2 s, int16), built from the MNI ICBM152 2009a templates that daskmask ships:

    * ``raw``: the whole head on a noisy (Rayleigh) background: bright scalp, dark skull,
      EPI (T2*) contrast inside the brain (CSF brightest, white matter darker than grey
      matter), coil bias and susceptibility dropout, a Nyquist ghost; over time a scanner
      drift, BOLD networks, cardiac and respiratory fluctuations and thermal noise;
    * ``masked``: the same run skull-stripped, the whole brain (with its CSF) on an
      exact-zero background: its ``background`` mask is the brain, about 22 % of the grid;
    * ``occipital``: the skull-stripped run masked to the occipital cortex (grey matter
      behind y = -60 mm and above z = -16 mm), exact zeros elsewhere: already-masked data
      like the walkthrough's (its sample is masked to the occipital cortex), whose
      ``background`` mask is a few percent of the image (about 2.6 %).

    The first call writes the three (about 27, 7 and 1 MB, a few seconds) to
    ``<data_dir>/walkthrough-v<GENERATOR_VERSION>/``; later calls return them at once. The
    folder appears only once every file is complete (written to a hidden folder, then
    renamed), so an interrupted or concurrent first call never leaves a half-written run.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Cache folder. Default: ``$DASKMASK_DATA``, else ``$XDG_CACHE_HOME/daskmask``, else
        ``~/.cache/daskmask``.
    verbose : bool
        Print one line when the runs are generated.

    Returns
    -------
    WalkthroughRuns
        ``.raw``, ``.masked`` and ``.occipital`` paths
        (``raw, masked, occipital = load_walkthrough_runs()`` unpacks).

    Raises
    ------
    StorageAccessError
        The cache folder cannot be written (the message names it and ``DASKMASK_DATA``).
    StorageError
        Another failure to write the cache folder (a full disk, for instance).

    See Also
    --------
    walkthrough_tissue_maps : the ground-truth tissues, brain and occipital supports.
    load_sample : nibabel's real two-volume EPI run.

    """
    root = data_home(data_dir)
    final = root / f"walkthrough-v{GENERATOR_VERSION}"
    runs = WalkthroughRuns(
        raw=final / RAW_NAME, masked=final / MASKED_NAME, occipital=final / OCCIPITAL_NAME
    )
    if _complete(final):
        return runs
    if verbose:
        print(f"Generating the walkthrough runs (first use) into {final}", flush=True)
    partial = root / f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
    try:
        root.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        try:
            _generate_into(partial)
            _publish(partial, final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    except PermissionError as error:
        raise StorageAccessError(
            f"Cannot write daskmask's data cache {root}: {error.strerror or error}. Set "
            f"{DATA_ENV_VAR} (or pass data_dir=) to a folder you can write."
        ) from error
    except OSError as error:
        if isinstance(error, StorageError):
            raise
        raise StorageError(
            f"Cannot write the walkthrough runs to {root}: {error}. Free some space there or "
            f"set {DATA_ENV_VAR} (or pass data_dir=) to another folder."
        ) from error
    return runs
