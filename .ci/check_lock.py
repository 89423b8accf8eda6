"""Check that a virtualenv holds exactly the versions that the lock file records.

Run by the Makefile after installing with ``-c requirements/lock.txt``: pip's constraints
only bound what it installs, so a package left over at another version (an older venv) or a
lock that no longer covers a dependency would otherwise go unnoticed.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name


def read_lock(path: Path) -> dict[str, str]:
    """Return ``{canonical name: version}`` from a ``name==version`` constraints file."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}: {line!r} is not a name==version pin")
        pins[canonicalize_name(name)] = version.strip()
    return pins


def main(argv: list[str]) -> int:
    """Compare the running interpreter's distributions with the lock; 1 on a mismatch."""
    lock = Path(argv[1] if len(argv) > 1 else "requirements/lock.txt")
    pins = read_lock(lock)
    wrong: list[str] = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pins and dist.version != pins[name]:
            wrong.append(f"{name} {dist.version} installed, {pins[name]} locked")
    if wrong:
        print(f"{lock}: the venv differs from the lock:", *wrong, sep="\n  ", file=sys.stderr)
        print("Run `make clean test`, or `make lock` to record a new set.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
