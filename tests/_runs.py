"""Runs shared by the masker and parity tests: real samples and generated EPI.

Each builder writes (or locates) one 4D run and returns its path. The set
covers real scanner data (oblique affines, TR in ms, scaling factors),
generated raw and skull-stripped EPI, odd shapes, an oblique generated run
and NaNs, as the parity checks against nilearn require.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from daskmask.datasets import generate_epi


def real_sample(package: str, relative_path: str) -> Callable[[Path], Path]:
    """Return a builder that locates a real EPI run shipped by ``package``."""

    def locate(_: Path) -> Path:
        return Path(str(importlib.resources.files(package) / relative_path))

    return locate


def rotation_affine(voxel_size: float, shape: tuple[int, int, int], degrees: float) -> np.ndarray:
    """An oblique affine: voxels of ``voxel_size`` mm rotated about x and z."""
    theta = np.deg2rad(degrees)
    rot_x = np.array(
        [[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]]
    )
    rot_z = np.array(
        [
            [np.cos(theta / 2), -np.sin(theta / 2), 0],
            [np.sin(theta / 2), np.cos(theta / 2), 0],
            [0, 0, 1],
        ]
    )
    linear = rot_z @ rot_x * voxel_size
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ (np.array(shape) / 2)
    return affine


def generated(name: str, **kwargs: object) -> Callable[[Path], Path]:
    """Return a builder that writes a generated run ``name`` into a folder."""

    def build(folder: Path) -> Path:
        return generate_epi(folder / name, **kwargs)

    return build


def with_nans(folder: Path) -> Path:
    """A skull-stripped float32 run with NaNs in the border and inside the brain."""
    source = generate_epi(
        folder / "nan_source.nii",
        shape=(30, 34, 28),
        n_timepoints=12,
        kind="skull-stripped",
        dtype="float32",
        seed=11,
    )
    img = nib.load(source)
    data = np.asarray(img.dataobj).copy()
    rng = np.random.default_rng(5)
    inside = rng.integers(8, 20, size=(20, 3))
    data[inside[:, 0], inside[:, 1], inside[:, 2], :] = np.nan
    data[0, :3, :3, :] = np.nan
    path = folder / "with_nans.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    return path


#: name -> builder(folder) -> path of a 4D run.
RUNS: dict[str, Callable[[Path], Path]] = {
    "example4d": real_sample("nibabel", "tests/data/example4d.nii.gz"),
    "nitime-fmri1": real_sample("nitime", "data/fmri1.nii.gz"),
    "nipy-functional": real_sample("nipy", "testing/functional.nii.gz"),
    "generated-raw": generated(
        "raw.nii.gz", shape=(40, 48, 36), n_timepoints=20, kind="raw", seed=1
    ),
    "generated-skull-stripped": generated(
        "stripped.nii", shape=(40, 48, 36), n_timepoints=20, kind="skull-stripped", seed=2
    ),
    "odd-shape-float32": generated(
        "odd.nii", shape=(13, 17, 11), n_timepoints=7, kind="raw", dtype="float32", seed=3
    ),
    "oblique": generated(
        "oblique.nii.gz",
        shape=(36, 40, 30),
        n_timepoints=10,
        kind="raw",
        seed=4,
        affine=rotation_affine(3.0, (36, 40, 30), 12.0),
    ),
    "nans": with_nans,
}


def unseen_run(seed: int) -> Callable[[Path], Path]:
    """A run drawn at random from ``seed``: shape, kind, dtype, voxel size, rotation."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(12, 44, size=3))
    kind = str(rng.choice(["raw", "skull-stripped"]))
    dtype = str(rng.choice(["int16", "float32"]))
    voxel = float(rng.choice([2.0, 2.5, 3.0, 3.5, 4.0]))
    affine = rotation_affine(voxel, shape, float(rng.uniform(-20, 20)))
    suffix = str(rng.choice([".nii", ".nii.gz"]))
    return generated(
        f"unseen{seed}{suffix}",
        shape=shape,
        n_timepoints=int(rng.integers(3, 15)),
        kind=kind,
        dtype=dtype,
        seed=seed,
        affine=affine,
    )
