"""Checks that the bytes read are the bytes of the file that was opened.

Three kinds of check live here, all cheap enough for the read path:

* **File identity.** Opening a file records its size, modification time and
  inode (:func:`file_identity`); every read of a chunk compares them with one
  ``stat`` (:func:`check_unchanged`), so a run replaced or rewritten after it
  was opened raises :class:`~daskmask.exceptions.InputChangedError` instead of
  mixing two versions, or reading data a mask was not made from.
* **gzip trailer.** The last 8 bytes of a gzip member hold the CRC32 and the
  size (mod 2**32) of its decoded bytes. A decoder that reads a whole stream
  checks them (Python's ``gzip``, ``isal.igzip``); a reader that decodes the
  stream in pieces, in any order (the lazy reader of :mod:`._array`), folds
  the CRC32 of each piece as it streams by and combines them with
  :func:`crc32_combine` once the pieces cover the whole data.
* **Size plausibility.** Deflate inflates at most 1032 bytes per compressed
  byte, so a header that promises more data than ``1032 x`` the size of its
  ``.gz`` is refused before anything is allocated (:data:`MAX_DEFLATE_RATIO`).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from typing import IO

from daskmask.exceptions import InputChangedError

try:  # isal's CRC32 runs at ~8 GB/s here, zlib's at ~2 GB/s
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is optional
    from zlib import crc32

__all__ = [
    "MAX_DEFLATE_RATIO",
    "check_object_unchanged",
    "check_unchanged",
    "crc32",
    "crc32_combine",
    "describe_change",
    "describe_object_change",
    "file_identity",
    "gzip_decoder",
    "verify_gzip_stream",
]

#: A deflate stream decodes to at most 1032 bytes per compressed byte (a
#: 258-byte match coded in 2 bits); a gzip file adds headers and trailers.
MAX_DEFLATE_RATIO = 1032

#: Decoders by documented speed (isal 0.5-0.8 GB/s, zlib-ng 0.4-0.9, stdlib 0.2).
GZIP_DECODERS = ("isal.igzip", "zlib_ng.gzip_ng", "gzip")

#: ``(st_size, st_mtime_ns, st_ino)`` of a file.
Identity = tuple[int, int, int]

#: Reversed CRC-32 polynomial (the one of gzip and zlib).
_POLYNOMIAL = 0xEDB88320


def file_identity(stat: os.stat_result) -> Identity:
    """Return what tells a version of a file: size, modification time (ns), inode.

    Parameters
    ----------
    stat : os.stat_result
        From :func:`os.stat` or :func:`os.fstat`.

    Returns
    -------
    tuple of (int, int, int)
        ``(st_size, st_mtime_ns, st_ino)``. Replacing a file (``os.replace``,
        a download tool renaming its temporary file) changes the inode;
        rewriting it in place changes the modification time and usually the
        size.

    """
    return int(stat.st_size), int(stat.st_mtime_ns), int(stat.st_ino)


def describe_change(path: str, recorded: Identity, current: Identity) -> str:
    """Return the message of :class:`InputChangedError` for ``path``.

    Parameters
    ----------
    path : str
        The file.
    recorded, current : tuple of (int, int, int)
        :func:`file_identity` when the file was opened, and now.

    Returns
    -------
    str

    """
    changes = []
    if recorded[2] != current[2]:
        changes.append(f"it was replaced by another file (inode {recorded[2]} -> {current[2]})")
    if recorded[0] != current[0]:
        changes.append(f"its size changed from {recorded[0]} to {current[0]} bytes")
    if recorded[1] != current[1]:
        changes.append(
            f"its modification time changed ({recorded[1]} -> {current[1]} ns since the epoch)"
        )
    return (
        f"'{path}' changed after it was opened: {'; '.join(changes)}. The data read now "
        "would not be the data this computation was planned from (its shape, mask, mean or "
        "decoded copy). Open the file again with open_nifti (and fit the masker again if "
        "it was fitted on the old version), then compute."
    )


def check_unchanged(path: str, recorded: Identity | None, stat: os.stat_result) -> None:
    """Raise :class:`InputChangedError` if ``stat`` is not the version ``recorded``.

    Parameters
    ----------
    path : str
        The file, for the message.
    recorded : tuple of (int, int, int) or None
        :func:`file_identity` at open; None skips the check.
    stat : os.stat_result
        The file's status now.

    Raises
    ------
    InputChangedError
        If size, modification time or inode differ.

    """
    if recorded is None:
        return
    current = file_identity(stat)
    if current != tuple(recorded):
        raise InputChangedError(describe_change(path, tuple(recorded), current))


#: ``(size, version)`` of an object: its size and the ETag or version id
#: (:attr:`daskmask._fs.FileStat.version`).
ObjectVersion = tuple[int, str]


def describe_object_change(url: str, recorded: ObjectVersion, current: ObjectVersion) -> str:
    """Return the message of :class:`InputChangedError` for an object at ``url``.

    Parameters
    ----------
    url : str
        The object.
    recorded, current : tuple of (int, str)
        Size and version (ETag, version id) when it was opened, and now.

    Returns
    -------
    str

    """
    changes = []
    if recorded[1] != current[1]:
        changes.append(f"it was replaced ({recorded[1]} -> {current[1]})")
    if recorded[0] != current[0]:
        changes.append(f"its size changed from {recorded[0]} to {current[0]} bytes")
    return (
        f"'{url}' changed after it was opened: {'; '.join(changes)}. The data read now "
        "would not be the data this computation was planned from (its shape, mask, mean or "
        "decoded copy). Open the file again with open_nifti (and fit the masker again if "
        "it was fitted on the old version), then compute."
    )


def check_object_unchanged(
    url: str, recorded: ObjectVersion | None, current: ObjectVersion
) -> None:
    """Raise :class:`InputChangedError` if an object is not the version ``recorded``.

    Parameters
    ----------
    url : str
        The object, for the message.
    recorded : tuple of (int, str) or None
        Size and version at open; None skips the check.
    current : tuple of (int, str)
        Size and version now (from a fresh HEAD request).

    Raises
    ------
    InputChangedError
        If size or version differ.

    """
    if recorded is not None and tuple(current) != tuple(recorded):
        raise InputChangedError(describe_object_change(url, tuple(recorded), tuple(current)))


def _multiply_mod_p(a: int, b: int) -> int:
    """Multiply two polynomials modulo the CRC-32 polynomial (zlib's ``multmodp``)."""
    m = 1 << 31
    product = 0
    while True:
        if a & m:
            product ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLYNOMIAL if b & 1 else b >> 1
    return product


def _powers_of_x() -> list[int]:
    """``x**(2**k)`` modulo the polynomial, k = 0..31 (zlib's ``x2n_table``)."""
    table = [1 << 30]  # x**1
    for _ in range(31):
        table.append(_multiply_mod_p(table[-1], table[-1]))
    return table


_X2N = _powers_of_x()


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """Return the CRC32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``.

    zlib's ``crc32_combine``, which Python's zlib does not expose: about 30
    polynomial products, so pieces of a stream checked in any order (by
    different tasks) combine into the CRC32 of the whole stream.

    Parameters
    ----------
    crc1, crc2 : int
        CRC32 of the first and second piece.
    length2 : int
        Length in bytes of the second piece.

    Returns
    -------
    int

    """
    power, n, k = 1 << 31, int(length2), 3  # x**(8 * length2): 2**3 bits per byte
    while n:
        if n & 1:
            power = _multiply_mod_p(_X2N[k & 31], power)
        n >>= 1
        k += 1
    return _multiply_mod_p(power, crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


def gzip_decoder() -> tuple[str, Callable[..., IO[bytes]]]:
    """Return the name and ``open`` of the fastest gzip decoder installed.

    Returns
    -------
    tuple of (str, callable)
        ``"isal.igzip"``, ``"zlib_ng.gzip_ng"`` or ``"gzip"`` and its ``open``
        (which takes a path or a binary file object). All of them check the
        CRC32 and size of every gzip member they read to its end.

    """
    for name in GZIP_DECODERS:
        if name == "gzip":
            return name, gzip.open
        try:
            module = __import__(name, fromlist=["open"])
        except ImportError:
            continue
        return name, module.open
    raise AssertionError("unreachable: the standard gzip module is always there")


def verify_gzip_stream(
    path: str,
    identity: Identity | None = None,
    block: int = 16 << 20,
    raw: IO[bytes] | None = None,
) -> None:
    """Decode a whole gzip file once, letting the decoder check every trailer.

    Only used when a cheaper check could not decide (the file holds several
    gzip members, or bytes after the NIfTI data): a second pass over the data.

    Parameters
    ----------
    path : str
        The ``.gz`` file.
    identity : tuple of (int, int, int), optional
        The version expected (:func:`file_identity`); checked on the opened file.
    block : int, default=16 MiB
        Bytes decoded per call.
    raw : binary file object, optional
        The compressed stream, already opened (an object in a store, whose
        version the caller checked); ``path`` then only names it.

    Raises
    ------
    OSError, EOFError, zlib.error
        If the stream is corrupt or truncated (the decoder's own errors).
    InputChangedError
        If the file is no longer the version ``identity``.

    """
    buffer = bytearray(block)
    _, opener = gzip_decoder()
    if raw is not None:
        with opener(raw, "rb") as stream:
            while stream.readinto(buffer):
                pass
        return
    with open(path, "rb") as raw:
        check_unchanged(path, identity, os.fstat(raw.fileno()))
        with opener(raw, "rb") as stream:
            while stream.readinto(buffer):
                pass
