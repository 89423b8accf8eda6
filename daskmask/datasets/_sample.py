"""Real EPI samples: the one bundled with daskmask and those shipped by optional packages."""

from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path

_SAMPLE_RESOURCE = ("data", "example4d.nii.gz")

# Real EPI runs shipped inside optional (test-extra) packages: name -> (package, path in it).
_OPTIONAL_SAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fmri1": ("nitime", ("data", "fmri1.nii.gz")),
    "functional": ("nipy", ("testing", "functional.nii.gz")),
}


def load_sample() -> Path:
    """Return the path of daskmask's bundled real EPI sample.

    The sample is ``example4d.nii.gz`` from nibabel's test data (MIT licence, see
    ``daskmask/datasets/data/NOTICE.md``): a real whole-brain EPI run of 128 x 96 x 24
    voxels and 2 volumes, with an oblique affine and a TR of 2000 (``pixdim[4]``; the
    header says seconds but the value is in milliseconds, as written by the scanner
    conversion).

    Returns
    -------
    pathlib.Path
        Absolute path of the ``.nii.gz`` file inside the installed package.

    Raises
    ------
    FileNotFoundError
        If the package data is missing (a broken or zipped installation).

    """
    resource = files("daskmask.datasets").joinpath(*_SAMPLE_RESOURCE)
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(
            f"daskmask's bundled sample {'/'.join(_SAMPLE_RESOURCE)} is not at {path}; "
            "reinstall daskmask from an unzipped wheel or source checkout."
        )
    return path


def _package_file(package: str, parts: tuple[str, ...]) -> Path | None:
    """Locate a data file of an installed package without importing the package.

    ``find_spec`` on a top-level name reads the import system's metadata only, so heavy
    packages (nipy, nitime pull in scipy and matplotlib) are not imported.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def sample_paths() -> dict[str, Path]:
    """Return the real EPI runs available on this installation.

    Returns
    -------
    dict of str to pathlib.Path
        ``"example4d"`` (always; see :func:`load_sample`), then, when the packages are
        installed (daskmask's ``test`` extra), ``"fmri1"``: nitime's ``data/fmri1.nii.gz``
        (10 x 10 x 18 voxels, 40 volumes) and ``"functional"``: nipy's
        ``testing/functional.nii.gz`` (17 x 21 x 3 voxels, 20 volumes). Missing ones are
        absent from the dictionary.

    """
    paths = {"example4d": load_sample()}
    for name, (package, parts) in _OPTIONAL_SAMPLES.items():
        path = _package_file(package, parts)
        if path is not None:
            paths[name] = path
    return paths
