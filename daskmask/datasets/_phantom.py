"""Static anatomy of the synthetic EPI head: tissue fractions, bias field, EPI artefacts.

The head is a set of nested ellipsoids (scalp, skull, CSF, cortex, white matter) with a
folded grey/white boundary, two lateral ventricles and two deep grey nuclei. Every surface
gets a one-voxel partial-volume ramp so that tissue maps are fractions in ``[0, 1]``, as a
real EPI voxel mixes tissues. All geometry is in millimetres around the grid centre, so the
same head is produced whatever the affine, and it is shrunk to fit grids whose field of
view is smaller than a real head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Semi-axes (x: left-right, y: posterior-anterior, z: inferior-superior) of an adult head in
# millimetres; used unless the field of view is too small to hold them.
_REAL_HEAD_SEMI_AXES_MM = np.array([74.0, 92.0, 78.0])
# The head never fills more than this fraction of the half field of view, so that a raw
# image always keeps some air around the head, as a scanner image does.
_MAX_FILL_OF_HALF_FOV = 0.86

# Radii of the nested surfaces as fractions of the head ellipsoid.
_SKULL_OUTER = 0.93
_BRAIN_SURFACE = 0.86  # inner table of the skull: everything inside is "brain"
_PIAL_SURFACE = 0.82  # between the brain surface and the pia lies sulcal CSF
_WHITE_SURFACE = 0.66  # mean radius of the folded grey/white boundary
_FOLD_DEPTH = 0.05
_FOLD_FREQUENCY = 9.0

# EPI (T2*-weighted) intensities of pure tissue: CSF brightest, then grey then white matter.
# Scalp fat and muscle are bright too; bone gives almost no signal.
TISSUE_INTENSITY: dict[str, float] = {
    "scalp": 900.0,
    "skull": 90.0,
    "csf": 1450.0,
    "gm": 1000.0,
    "wm": 720.0,
}
TISSUE_NAMES: tuple[str, ...] = tuple(TISSUE_INTENSITY)

# Voxels processed together while building the static fields: bounds the float64 working
# arrays (a few dozen of them) to a few MB whatever the grid size.
_BLOCK_VOXELS = 2**15


@dataclass(frozen=True)
class Anatomy:
    """Tissue fractions and static intensity fields on one grid, each flattened in F order.

    Attributes
    ----------
    shape : tuple of int
        The 3D grid shape.
    fractions : dict of str to numpy.ndarray
        Partial-volume fraction of each tissue in ``TISSUE_NAMES`` (float32, length
        ``prod(shape)``, Fortran order).
    brain : numpy.ndarray
        Boolean brain support (CSF, grey and white matter inside the skull): voxels whose
        brain fraction is at least one half.
    head : numpy.ndarray
        Boolean head support (voxels at least half inside the scalp surface).
    bias : numpy.ndarray
        Smooth multiplicative receive-coil non-uniformity (float32, around 1).
    dropout : numpy.ndarray
        Multiplicative susceptibility signal loss near the sinuses and ear canals
        (float32 in ``(0, 1]``).
    normalised_coordinates : numpy.ndarray
        ``(3, n_voxels)`` voxel-centre coordinates divided by the head semi-axes
        (float32); the brain-network maps are placed with them.

    """

    shape: tuple[int, int, int]
    fractions: dict[str, np.ndarray]
    brain: np.ndarray
    head: np.ndarray
    bias: np.ndarray
    dropout: np.ndarray
    normalised_coordinates: np.ndarray

    def intensity(self) -> np.ndarray:
        """Return the noise-free baseline EPI image (float32, flattened in F order)."""
        baseline = np.zeros(self.bias.shape, dtype=np.float32)
        for tissue, fraction in self.fractions.items():
            baseline += np.float32(TISSUE_INTENSITY[tissue]) * fraction
        baseline *= self.bias
        baseline *= self.dropout
        return baseline


def head_semi_axes_mm(
    shape: tuple[int, int, int], voxel_size: tuple[float, float, float]
) -> np.ndarray:
    """Return the head ellipsoid semi-axes in millimetres for a grid.

    A real adult head when it fits, otherwise shrunk axis by axis to fit the field of view.
    """
    half_fov_mm = np.asarray(shape, dtype=float) * np.asarray(voxel_size, dtype=float) / 2.0
    return np.minimum(_REAL_HEAD_SEMI_AXES_MM, _MAX_FILL_OF_HALF_FOV * half_fov_mm)


@dataclass(frozen=True)
class _HeadParameters:
    """The per-subject numbers drawn once from the seed."""

    semi_axes_mm: np.ndarray
    fold_phases: np.ndarray
    bias_coefficients: np.ndarray
    voxel_size_mm: np.ndarray
    voxel_width_mm: float


def build_anatomy(
    shape: tuple[int, int, int],
    voxel_size: tuple[float, float, float],
    rng: np.random.Generator,
) -> Anatomy:
    """Build the tissue fractions and static fields of the head on a grid.

    The fields are computed block of voxels by block of voxels, so the float64 working
    arrays never exceed a block whatever the grid size.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (3 positive ints).
    voxel_size : tuple of float
        Voxel edge lengths in millimetres.
    rng : numpy.random.Generator
        Source of the subject-specific variation (head size, folding pattern, bias field):
        the same generator state always gives the same anatomy.

    Returns
    -------
    Anatomy
        Fractions and fields flattened in Fortran order (the NIfTI on-disk order).

    """
    voxel_size_mm = np.asarray(voxel_size, dtype=float)
    parameters = _HeadParameters(
        # Subject variation: head up to a few percent smaller along each axis.
        semi_axes_mm=head_semi_axes_mm(shape, voxel_size) * rng.uniform(0.96, 1.0, size=3),
        fold_phases=rng.uniform(0.0, 2.0 * np.pi, size=3),
        bias_coefficients=rng.uniform(-1.0, 1.0, size=3),
        voxel_size_mm=voxel_size_mm,
        voxel_width_mm=float(np.exp(np.mean(np.log(voxel_size_mm)))),
    )
    n_voxels = int(np.prod(shape))
    fractions = {tissue: np.empty(n_voxels, dtype=np.float32) for tissue in TISSUE_NAMES}
    brain = np.empty(n_voxels, dtype=bool)
    head = np.empty(n_voxels, dtype=bool)
    bias = np.empty(n_voxels, dtype=np.float32)
    dropout = np.empty(n_voxels, dtype=np.float32)
    normalised = np.empty((3, n_voxels), dtype=np.float32)
    for start in range(0, n_voxels, _BLOCK_VOXELS):
        block = slice(start, min(start + _BLOCK_VOXELS, n_voxels))
        voxel_index = np.unravel_index(np.arange(block.start, block.stop), shape, order="F")
        # Voxel-centre coordinates in mm relative to the grid centre.
        coordinates_mm = np.stack(
            [
                (index - (size - 1) / 2.0) * width
                for index, size, width in zip(voxel_index, shape, voxel_size_mm, strict=True)
            ]
        )
        block_normalised = coordinates_mm / parameters.semi_axes_mm[:, None]
        block_fractions, in_brain, in_head = _tissue_fractions(block_normalised, parameters)
        for tissue, fraction in block_fractions.items():
            fractions[tissue][block] = fraction
        brain[block] = in_brain >= 0.5
        head[block] = in_head >= 0.5
        bias[block], dropout[block] = _static_fields(block_normalised, parameters)
        normalised[:, block] = block_normalised
    return Anatomy(
        shape=shape,
        fractions=fractions,
        brain=brain,
        head=head,
        bias=bias,
        dropout=dropout,
        normalised_coordinates=normalised,
    )


def _tissue_fractions(
    normalised: np.ndarray, parameters: _HeadParameters
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Return the tissue fractions, brain fraction and head fraction of some voxels."""
    semi_axes = parameters.semi_axes_mm
    voxel_width_mm = parameters.voxel_width_mm

    # Ellipsoidal radius (1 on the scalp surface) and its gradient norm, used to turn
    # radius differences into approximate distances in mm for the partial-volume ramps.
    radius = np.sqrt(np.sum(normalised**2, axis=0))
    safe_radius = np.maximum(radius, 1e-6)
    gradient_norm = np.sqrt(np.sum((normalised / semi_axes[:, None]) ** 2, axis=0)) / safe_radius
    gradient_norm = np.where(radius > 1e-6, gradient_norm, 1.0 / semi_axes.mean())

    def inside(surface_radius: np.ndarray | float) -> np.ndarray:
        signed_distance_mm = (radius - surface_radius) / gradient_norm
        return np.clip(0.5 - signed_distance_mm / voxel_width_mm, 0.0, 1.0)

    # Cortical folding: the grey/white boundary moves in and out with the direction.
    direction = normalised / safe_radius
    folding = np.prod(
        np.sin(_FOLD_FREQUENCY * direction + parameters.fold_phases[:, None]), axis=0
    ) * np.sqrt(8.0)
    white_surface = _WHITE_SURFACE + _FOLD_DEPTH * np.clip(folding, -1.0, 1.0)

    in_head = inside(1.0)
    in_skull = inside(_SKULL_OUTER)
    in_brain = inside(_BRAIN_SURFACE)
    in_pia = inside(_PIAL_SURFACE)
    in_white = np.minimum(inside(white_surface), in_pia)

    def in_ellipsoid(
        centre: tuple[float, float, float], axes: tuple[float, float, float]
    ) -> np.ndarray:
        # Small ellipsoids expressed in head-normalised coordinates.
        local = (normalised - np.asarray(centre)[:, None]) / np.asarray(axes)[:, None]
        local_radius = np.sqrt(np.sum(local**2, axis=0))
        scale = float(np.min(np.asarray(axes) * semi_axes))
        return np.clip(0.5 - (local_radius - 1.0) * scale / voxel_width_mm, 0.0, 1.0)

    ventricles = np.maximum(
        in_ellipsoid((-0.11, 0.02, 0.08), (0.07, 0.32, 0.14)),
        in_ellipsoid((0.11, 0.02, 0.08), (0.07, 0.32, 0.14)),
    )
    deep_grey = np.maximum(
        in_ellipsoid((-0.2, -0.08, -0.08), (0.1, 0.14, 0.1)),
        in_ellipsoid((0.2, -0.08, -0.08), (0.1, 0.14, 0.1)),
    )
    ventricles = np.minimum(ventricles, in_white)
    deep_grey = np.minimum(deep_grey, in_white - ventricles)

    fractions = {
        "scalp": in_head - in_skull,
        "skull": in_skull - in_brain,
        "csf": (in_brain - in_pia) + ventricles,
        "gm": (in_pia - in_white) + deep_grey,
        "wm": in_white - ventricles - deep_grey,
    }
    fractions = {tissue: np.clip(fraction, 0.0, 1.0) for tissue, fraction in fractions.items()}
    return fractions, in_brain, in_head


def _static_fields(
    normalised: np.ndarray, parameters: _HeadParameters
) -> tuple[np.ndarray, np.ndarray]:
    """Return the coil bias field and the susceptibility dropout of some voxels."""
    x, y, z = normalised
    coefficients = parameters.bias_coefficients
    # Receive-coil non-uniformity: brighter towards the coil (the back and top of the
    # head) and a gentle left-right gradient, about +-10 %.
    bias = (
        1.0
        + 0.04 * coefficients[0] * x
        - 0.05 * y
        + 0.04 * z
        + 0.02 * coefficients[1] * x * y
        - 0.03 * (x**2 + y**2 + z**2)
        + 0.02 * coefficients[2] * z**2
    )
    # Susceptibility dropout in inferior frontal cortex and the inferior temporal lobes.
    dropout = 1.0 - 0.55 * np.exp(
        -(((x / 0.25) ** 2) + ((y - 0.62) / 0.18) ** 2 + ((z + 0.45) / 0.2) ** 2)
    )
    for side in (-1.0, 1.0):
        dropout -= 0.35 * np.exp(
            -(((x - side * 0.62) / 0.15) ** 2 + ((y - 0.05) / 0.2) ** 2 + ((z + 0.5) / 0.18) ** 2)
        )
    return bias, np.clip(dropout, 0.2, 1.0)


def build_modulation_maps(
    anatomy: Anatomy, n_networks: int, rng: np.random.Generator
) -> np.ndarray:
    """Build the spatial maps that the time courses modulate.

    Rows ``0 .. n_networks-1`` are BOLD networks weighted by grey matter (white matter
    carries a quarter of the signal): first a brain-wide component at half amplitude (the
    "global signal" every grey-matter voxel shares), then a midline pair of blobs like the
    default-mode network, then pairs of smooth bilateral blobs. Row ``n_networks`` is CSF
    pulsation (CSF fraction), the last row the global respiratory fluctuation (all brain
    tissue).

    Parameters
    ----------
    anatomy : Anatomy
        The head on the grid.
    n_networks : int
        Number of BOLD networks.
    rng : numpy.random.Generator
        Source of the blob positions.

    Returns
    -------
    numpy.ndarray
        ``(n_networks + 2, n_voxels)`` float32, Fortran-ordered voxels.

    """
    fractions = anatomy.fractions
    blob_width = np.float32(0.3)
    centres_per_network: list[np.ndarray] = [
        # Posterior cingulate / precuneus and medial prefrontal cortex.
        np.array([[0.0, -0.45, 0.3], [0.0, 0.55, 0.1]], dtype=np.float32)
    ]
    for _ in range(2, n_networks):
        lateral = rng.uniform(0.3, 0.6)
        anterior = rng.uniform(-0.6, 0.6)
        superior = rng.uniform(-0.3, 0.5)
        centres_per_network.append(
            np.array([[side * lateral, anterior, superior] for side in (-1.0, 1.0)], np.float32)
        )

    n_voxels = anatomy.bias.shape[0]
    maps = np.empty((n_networks + 2, n_voxels), dtype=np.float32)
    for start in range(0, n_voxels, _BLOCK_VOXELS):
        block = slice(start, min(start + _BLOCK_VOXELS, n_voxels))
        coordinates = anatomy.normalised_coordinates[:, block]
        bold_weight = fractions["gm"][block] + np.float32(0.25) * fractions["wm"][block]
        maps[0, block] = np.float32(0.5) * bold_weight
        for network, centres in enumerate(centres_per_network, start=1):
            squared_distance = np.min(
                [np.sum((coordinates - centre[:, None]) ** 2, axis=0) for centre in centres],
                axis=0,
            )
            maps[network, block] = np.exp(-squared_distance / (2 * blob_width**2)) * bold_weight
        maps[n_networks, block] = fractions["csf"][block]
        maps[n_networks + 1, block] = (
            fractions["csf"][block] + fractions["gm"][block] + fractions["wm"][block]
        )
    return maps
