"""Where a store is written, how it replaces an old one, and what a killed save leaves.

A save writes into a hidden work folder beside the output::

    .<name>.partial-<token>/     the work folder, leased by the writing process
        <lease files>            lock + owner record (:mod:`daskmask._lease`)
        store/                   the Zarr store being written
        committing               only in the fallback replace, see below
        old/                     only in the fallback replace: the store replaced

The store is moved to ``path`` once complete:

* nothing at ``path``: one ``rename`` (``renameat2(RENAME_NOREPLACE)`` on
  Linux, so a store created meanwhile is never replaced);
* a store at ``path`` (``overwrite=True``): ``renameat2(RENAME_EXCHANGE)``
  swaps the two directories in one atomic step, so ``path`` always holds
  either the old complete store or the new one; the old one, now in the work
  folder, is then deleted;
* where the file system cannot exchange (not Linux, NFS, ...): the marker
  ``committing`` is written, the old store renamed to ``old/`` and the new
  one renamed to ``path``. A kill between the two renames leaves nothing at
  ``path``; the next ``open_results`` or ``save`` of that folder finds the
  work folder of a dead writer and finishes the move (the new store is
  complete), or puts ``old/`` back.

A work folder whose owner is certainly dead (its lease says so) is deleted by
the next save into the same folder; a folder whose owner may be alive (on
another host, in another PID namespace) is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from daskmask import _lease
from daskmask.storage import _layout as layout

#: Sub-folder of the work folder that holds the store.
STORE = "store"
#: Sub-folder of the work folder that holds a replaced store (fallback only).
OLD = "old"
#: Marker of a replace by two renames in progress (fallback only).
COMMITTING = "committing"

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
#: errno values meaning "this file system or kernel cannot do it": use the fallback.
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
_WORK_NAME = re.compile(r"^\.(?P<name>.+)\.partial-[0-9a-f]{8}$")


class _NotSupported(Exception):
    """``renameat2`` with this flag is not available here."""


def _renameat2_function():  # type: ignore[no-untyped-def]
    """Return libc's ``renameat2`` (glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_renameat2 = _renameat2_function()


def _rename2(source: Path, target: Path, flags: int) -> None:
    """Call ``renameat2(source, target, flags)``; raise _NotSupported where it cannot."""
    if _renameat2 is None:
        raise _NotSupported
    result = _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags)
    if result != 0:
        code = ctypes.get_errno()
        if code in _UNSUPPORTED:
            raise _NotSupported
        raise OSError(code, os.strerror(code), str(source), None, str(target))


def move_new(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, failing with FileExistsError if ``target`` exists."""
    try:
        _rename2(source, target, _RENAME_NOREPLACE)
    except _NotSupported:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", str(target)) from None
        os.rename(source, target)


def exchange(first: Path, second: Path) -> bool:
    """Swap two directories atomically; return False where the system cannot."""
    try:
        _rename2(first, second, _RENAME_EXCHANGE)
    except _NotSupported:
        return False
    return True


def remove_tree(path: Path, attempts: int = 20) -> None:
    """Delete the directory ``path``, retrying while late writers still add files to it."""
    for attempt in range(attempts):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


def new_work_folder(path: Path, token: str) -> tuple[Path, _lease.Lease]:
    """Create and lease the work folder of a save to ``path``; return it and its lease."""
    work = layout.sibling(path, "partial", token)
    work.mkdir()
    try:
        lease = _lease.Lease.acquire(work)
        (work / STORE).mkdir()
    except BaseException:
        remove_tree(work)
        raise
    return work, lease


def discard(work: Path, lease: _lease.Lease | None) -> None:
    """Delete a work folder: its contents first, the lease last (so it is never unowned)."""
    for name in (STORE, OLD):
        remove_tree(work / name)
    with contextlib.suppress(FileNotFoundError):
        (work / COMMITTING).unlink()
    if lease is not None:
        lease.release()
    remove_tree(work)


def replace(work: Path, path: Path) -> None:
    """Put the complete store ``work/store`` at ``path``, swapping out the store there."""
    if exchange(work / STORE, path):
        return
    # no atomic exchange here: two renames, recoverable (see recover_missing)
    marker = work / COMMITTING
    marker.write_text(json.dumps({"path": str(path)}))
    os.rename(path, work / OLD)
    os.rename(work / STORE, path)
    marker.unlink()


def _is_complete(store: Path) -> bool:
    """Tell whether ``store`` holds a completion marker (a parsable root with complete true)."""
    try:
        metadata = json.loads((store / "zarr.json").read_bytes())
        return metadata["attributes"][layout.COMPLETE] is True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _work_folders(path: Path) -> list[Path]:
    """Return the work folders of saves to ``path``."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    prefix = f".{path.name}.partial-"
    return [path.parent / n for n in sorted(names) if n.startswith(prefix) and _WORK_NAME.match(n)]


def _restore(work: Path, path: Path) -> bool:
    """Finish or undo the interrupted replace in ``work``: put a complete store at ``path``."""
    for name in (STORE, OLD):  # the new store first: it was complete when the move began
        candidate = work / name
        if candidate.is_dir() and _is_complete(candidate):
            try:
                move_new(candidate, path)
            except (FileExistsError, FileNotFoundError, OSError):
                # another process restored it first, or the source is gone
                return os.path.lexists(path)
            return True
    return False


def _take_over(work: Path) -> _lease.Lease | None:
    """Lease the work folder of a dead save, or return None if its owner may be alive.

    Holding the lease keeps every other cleaner or recoverer away while the
    folder is restored or deleted.
    """
    if not _lease.owner_is_dead(work):
        return None
    try:
        return _lease.Lease.acquire(work)
    except OSError:  # another process took it over first, or it is gone
        return None


def recover_missing(path: Path, wait: float = 2.0) -> bool:
    """Bring back the store at ``path`` after a save was killed in the middle of a replace.

    Only used when nothing is at ``path``. A work folder holding the marker
    ``committing`` whose owner is dead is restored; one whose owner is alive
    is still moving the store, so it is given up to ``wait`` seconds.

    Returns
    -------
    bool
        Whether something is at ``path`` now.

    """
    deadline = time.monotonic() + wait
    while True:
        live = False
        for work in _work_folders(path):
            if not (work / COMMITTING).exists():
                continue
            lease = _take_over(work)
            if lease is None:
                live = True
                continue
            try:
                if not os.path.lexists(path):
                    _restore(work, path)
            finally:
                discard(work, lease)
        if os.path.lexists(path):
            return True
        if not live or time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def remove_dead_work_folders(parent: Path) -> list[Path]:
    """Delete the work folders in ``parent`` left by saves whose process is dead.

    An interrupted replace is finished first (its store is put back at its
    path when nothing is there). Folders whose owner may be alive (another
    host, another boot, or a process holding the lease in any PID namespace
    of this kernel), folders without a lease, and anything not named like a
    work folder are left alone.

    Returns
    -------
    list of pathlib.Path
        The folders deleted.

    """
    removed: list[Path] = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return removed
    for name in names:
        match = _WORK_NAME.match(name)
        work = parent / name
        if match is None or work.is_symlink() or not work.is_dir():
            continue
        lease = _take_over(work)
        if lease is None:
            continue
        try:
            target = parent / match["name"]
            if (work / COMMITTING).exists() and not os.path.lexists(target):
                _restore(work, target)
        finally:
            discard(work, lease)
        removed.append(work)
    return removed
