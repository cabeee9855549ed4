"""File-system primitives with the durability guarantees the storage layer relies on."""

from __future__ import annotations

import os
from pathlib import Path

import google_crc32c

from vecstore.errors import Locked

CRC_READ_BYTES = 8 << 20


def crc32c(data) -> int:
    """CRC32C (Castagnoli) of a bytes-like object."""
    return google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)


def file_crc32c(path: Path) -> int:
    """CRC32C of a whole file, read in 8 MiB blocks."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(CRC_READ_BYTES):
            crc = google_crc32c.extend(crc, block)
    return crc


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data) -> None:
    """Write every byte of ``data`` to ``fd`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_synced(path: Path, data: bytes) -> None:
    """Create or truncate ``path``, write ``data`` and fsync the file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` and fsync it and its directory."""
    _write_synced(path, data)
    fsync_dir(path.parent)


def replace_durable(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``: temp file, fsync, rename, fsync directory.

    A crash at any point leaves either the old or the new file, never a mix.
    """
    tmp = path.with_name(path.name + ".tmp")
    _write_synced(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_quietly(path: Path) -> None:
    """Unlink ``path`` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class DirectoryLock:
    """An exclusive advisory lock on ``directory/LOCK`` held for the object's lifetime.

    The kernel drops the lock when the process dies, so a crashed writer never leaves
    the directory locked.
    """

    def __init__(self, directory: Path):
        import fcntl

        self.path = directory / "LOCK"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise Locked(
                f"{directory} is already open for writing, by another process or another "
                f"Database object (lock file {self.path})"
            ) from None

    def release(self) -> None:
        """Release the lock; safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
