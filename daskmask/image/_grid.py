"""Plan the target grid of a resampling, without touching any voxel data.

Everything here works on shapes and affines only, so the masker can validate
``target_affine``/``target_shape`` and know the output grid before a single
byte of a 4-D run is read. The floating-point operations follow the order used
by nilearn 0.14.1 (``numpy.linalg.inv`` to locate the bounding box,
``scipy.linalg.inv`` for the sampling transform) so that the grids and the
interpolation coordinates are bitwise identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.linalg

from daskmask.exceptions import BoundingBoxError

Interpolation = Literal["continuous", "linear", "nearest"]

#: Spline order passed to :func:`scipy.ndimage.affine_transform` per method.
INTERPOLATION_ORDERS: dict[str, int] = {"continuous": 3, "linear": 1, "nearest": 0}


def check_resampling_inputs(
    target_affine: np.ndarray | Sequence | None,
    target_shape: Sequence[int] | np.ndarray | None,
    interpolation: str = "continuous",
) -> None:
    """Validate resampling parameters before any data is loaded.

    Parameters
    ----------
    target_affine : array-like or None
        Requested affine (3x3 or 4x4).
    target_shape : sequence of int or None
        Requested 3-D shape.
    interpolation : str, default="continuous"
        One of ``"continuous"``, ``"linear"``, ``"nearest"``.

    Raises
    ------
    ValueError
        If the shape is not 3-D, is given without an affine, is given with a
        3x3 affine, or if the interpolation is unknown.

    """
    if target_shape is not None:
        if len(target_shape) != 3:
            raise ValueError(
                "The shape specified should be the shape of the 3D grid, and thus of "
                f"length 3. {target_shape} was specified."
            )
        if target_affine is None:
            raise ValueError(
                "If target_shape is specified, target_affine should be specified too."
            )
        if np.shape(target_affine) == (3, 3):
            raise ValueError(
                "Given target shape without anchor vector: 'target_affine' shape "
                "should be (4, 4) and not (3, 3)"
            )
    if interpolation not in INTERPOLATION_ORDERS:
        raise ValueError(
            f"'interpolation' must be one of {tuple(INTERPOLATION_ORDERS)}.\n"
            f"'{interpolation}' was provided."
        )


def corner_bounds(shape: Sequence[int], affine: np.ndarray) -> list[tuple[np.float64, np.float64]]:
    """Return, per output axis, the extent of the centres of a grid's corner voxels.

    Parameters
    ----------
    shape : sequence of 3 int
        Grid shape.
    affine : numpy.ndarray
        4x4 affine mapping the grid's voxel indices to the output space.

    Returns
    -------
    list of (min, max) tuples
        One pair per axis of the output space.

    """
    last = [int(n) - 1 for n in shape[:3]]
    # The 8 corners in homogeneous coordinates, one per column.
    corners = np.array(
        [
            [0.0, 0, 0, 1],
            [last[0], 0, 0, 1],
            [0, last[1], 0, 1],
            [0, 0, last[2], 1],
            [last[0], last[1], 0, 1],
            [last[0], 0, last[2], 1],
            [0, last[1], last[2], 1],
            [last[0], last[1], last[2], 1],
        ]
    ).T
    mapped = np.dot(affine, corners)[:3]
    return list(zip(mapped.min(axis=-1), mapped.max(axis=-1), strict=True))


def needs_resampling(
    source_shape: Sequence[int],
    source_affine: np.ndarray,
    target_affine: np.ndarray | Sequence | None,
    target_shape: Sequence[int] | np.ndarray | None,
) -> bool:
    """Tell whether a resampling request changes the grid at all.

    Parameters
    ----------
    source_shape : sequence of int
        Shape of the source image (3-D or 4-D).
    source_affine : numpy.ndarray
        4x4 affine of the source image.
    target_affine : array-like or None
        Requested affine.
    target_shape : sequence of int or None
        Requested shape.

    Returns
    -------
    bool
        False when nothing is requested or when the source already has the
        requested affine (within ``numpy.allclose``) and shape.

    """
    if target_affine is None and target_shape is None:
        return False
    target_affine = np.asarray(target_affine)
    source_shape = tuple(source_shape)
    if (
        target_affine.shape == np.shape(source_affine)
        and np.allclose(target_affine, source_affine)
        and np.array_equal(np.asarray(target_shape), source_shape)
    ):
        return False
    # ``target_shape=None`` never equals a shape, which keeps the comparison
    # from broadcasting a 3x3 affine against a 4x4 one.
    same_shape = bool(np.all(np.array(target_shape) == source_shape[:3]))
    return not (same_shape and np.allclose(target_affine, source_affine))


def plan_target_grid(
    source_shape: Sequence[int],
    source_affine: np.ndarray,
    target_affine: np.ndarray | Sequence,
    target_shape: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Compute the full 4x4 affine and the 3-D shape of a resampling target.

    Parameters
    ----------
    source_shape : sequence of int
        Shape of the source image; only the first three entries are used.
    source_affine : numpy.ndarray
        4x4 affine of the source image.
    target_affine : array-like
        3x3 affine (the offset and the shape are then chosen so that the
        grid is the bounding box of the data plus one voxel) or 4x4 affine
        (the origin is kept; without ``target_shape`` the grid extends far
        enough to cover the data, plus one voxel).
    target_shape : sequence of 3 int or None
        Shape of the target grid, only with a 4x4 affine.

    Returns
    -------
    affine : numpy.ndarray
        4x4 float affine of the target grid.
    shape : tuple of int
        3-D shape of the target grid.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``target_affine`` is not an invertible square matrix.
    daskmask.exceptions.BoundingBoxError
        If the target grid lies entirely on the negative side of the data
        along an axis.

    """
    target_affine = np.asarray(target_affine)
    if target_affine.shape == (3, 3):
        missing_offset = True
        full_affine = np.eye(4)
        full_affine[:3, :3] = target_affine
    else:
        missing_offset = False
        full_affine = target_affine.copy()

    # Bounding box of the source grid expressed in target voxel indices.
    source_to_target = np.linalg.inv(full_affine).dot(source_affine)
    (xmin, xmax), (ymin, ymax), (zmin, zmax) = corner_bounds(source_shape[:3], source_to_target)

    if missing_offset:
        # Anchor the grid at the lower corner of the bounding box.
        full_affine[:3, 3] = full_affine[:3, :3].dot([xmin, ymin, zmin])
        xmax, ymax, zmax = xmax - xmin, ymax - ymin, zmax - zmin

    if target_shape is None:
        # Cover the data with a margin of one voxel.
        target_shape = (int(np.ceil(xmax)) + 1, int(np.ceil(ymax)) + 1, int(np.ceil(zmax)) + 1)

    if xmax < 0 or ymax < 0 or zmax < 0:
        raise BoundingBoxError(
            "The field of view given by the target affine does not contain any of the data"
        )

    if isinstance(target_shape, np.ndarray):
        target_shape = target_shape.tolist()
    return full_affine, tuple(int(n) for n in target_shape)


def sampling_transform(
    source_affine: np.ndarray, target_affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``(matrix, offset)`` mapping target voxels to source voxels.

    Parameters
    ----------
    source_affine : numpy.ndarray
        4x4 affine of the source grid.
    target_affine : numpy.ndarray
        4x4 affine of the target grid.

    Returns
    -------
    matrix : numpy.ndarray
        3x3 matrix, or its diagonal (shape ``(3,)``) when it is diagonal, which
        lets :func:`scipy.ndimage.affine_transform` use its faster zoom/shift
        path (and gives the same numbers as nilearn).
    offset : numpy.ndarray
        Translation, shape ``(3,)``.

    """
    if np.all(target_affine == source_affine):
        # Exactly the identity, free of inversion round-off.
        transform = np.eye(4)
    else:
        transform = np.dot(scipy.linalg.inv(source_affine), target_affine)
    matrix = transform[:3, :3]
    offset = transform[:3, 3]
    if np.all(np.diag(np.diag(matrix)) == matrix):
        matrix = np.diag(matrix)
    return matrix, offset
