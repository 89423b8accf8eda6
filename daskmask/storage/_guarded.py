"""A local Zarr store that never recreates a directory removed under it.

When a write fails, :func:`daskmask.storage.save` deletes the partial
directory at once, but tasks already running (in other threads of the local
scheduler, or on distributed workers) may still finish and write their
chunk. Zarr's ``LocalStore`` creates every missing parent directory on
write, so such a late chunk would bring the partial directory back. This
store creates only the directories *below* its root and fails the write
when the root is gone.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from zarr.abc.store import Store
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore


def _make_parents(root: Path, path: Path) -> None:
    """Create the directories between ``root`` (which must exist) and ``path``."""
    relative = path.parent.relative_to(root)
    current = root
    if not root.is_dir():
        raise FileNotFoundError(f"The store directory {root} no longer exists.")
    for part in relative.parts:
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            pass


def _put(root: Path, path: Path, value: Buffer, exclusive: bool = False) -> int:
    """Write ``value`` to ``path`` through a temporary file renamed into place."""
    _make_parents(root, path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "xb") as stream:
            written = stream.write(value.as_buffer_like())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return written


class GuardedLocalStore(LocalStore):
    """A :class:`zarr.storage.LocalStore` that never creates its root directory.

    The root must exist when the store is opened and when each key is
    written; otherwise the write raises ``FileNotFoundError``.
    """

    async def _open(self, *, mode: str | None = None) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} does not exist")
        await Store._open(self)

    def _ensure_open_sync(self) -> None:
        if not self._is_open:
            if not self.root.is_dir():
                raise FileNotFoundError(f"{self.root} does not exist")
            self._is_open = True

    def set_sync(self, key: str, value: Buffer) -> None:  # noqa: D102
        self._ensure_open_sync()
        self._check_writable()
        _put(self.root, self.root / key, value)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"Store values must be Buffer instances, got {type(value)}.")
        await asyncio.to_thread(_put, self.root, self.root / key, value, exclusive)
