"""Whole reads and writes at offsets of raw files, with ``pread``/``pwrite``.

The scratch files of daskmask (the decoded copy of a ``.nii.gz``, the
time-to-voxel intermediate) are plain arrays on disk. They are read and
written with positioned system calls rather than memory maps: a map counts
every page it touches in the process's resident memory, which would hide the
bounded memory of the tasks behind the page cache, and positioned calls are
safe from several threads on one descriptor.
"""

from __future__ import annotations

import os


def read_exactly(fd: int, target: memoryview, offset: int) -> None:
    """Fill ``target`` with the bytes of the open file ``fd`` from ``offset``.

    Raises
    ------
    OSError
        If the file ends first.

    """
    while target:
        read = os.preadv(fd, [target], offset)
        if read == 0:
            raise OSError(f"the file ends before offset {offset + len(target)}")
        target, offset = target[read:], offset + read


def write_exactly(fd: int, source: memoryview, offset: int) -> None:
    """Write all of ``source`` at ``offset`` of the open file ``fd``."""
    while source:
        written = os.pwrite(fd, source, offset)
        source, offset = source[written:], offset + written
