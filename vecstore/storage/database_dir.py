"""A database directory: a marker file, a lock file, and one directory per collection.

Layout::

    VECSTORE                   marks the directory as a vecstore database (format version)
    LOCK                       held (flock) by the one process that has it open
    collections/<name>/        one collection (see collection_store.py)

Collections are created in a temporary directory renamed into place and dropped by a
rename before deletion, so a crash never leaves half a collection under its name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa

from vecstore.errors import DataLoss, InvalidArgument
from vecstore.storage.collection_store import (
    CollectionStore,
    is_collection_dir,
    remove_collection_dir,
)
from vecstore.storage.files import DirectoryLock, fsync_dir, replace_durable
from vecstore.storage.manifest import MANIFEST

MARKER = "VECSTORE"
MARKER_CONTENT = {"format": "vecstore-database", "format_version": 1}


class DatabaseDir:
    """The files of an open on-disk database, locked against other processes."""

    def __init__(self, path: Path, lock: DirectoryLock):
        self.path = path
        self.collections = path / "collections"
        self._lock = lock

    @classmethod
    def open(cls, path: Path) -> DatabaseDir:
        """Open or create the database at ``path`` and take its lock."""
        if path.exists() and not path.is_dir():
            raise InvalidArgument(f"{path} is a file, not a database directory")
        path.mkdir(parents=True, exist_ok=True)
        marker = path / MARKER
        if not marker.exists() and not _unfinished_creation(path):
            raise InvalidArgument(
                f"{path} holds files but is not a vecstore database (no {MARKER} file)"
            )
        lock = DirectoryLock(path)
        try:
            if not marker.exists():
                (path / "collections").mkdir(exist_ok=True)
                replace_durable(marker, json.dumps(MARKER_CONTENT).encode())
            _check_marker(marker)
            database = cls(path, lock)
            database._remove_leftovers()
        except BaseException:
            lock.release()
            raise
        return database

    def _remove_leftovers(self) -> None:
        self.collections.mkdir(exist_ok=True)
        for entry in self.collections.iterdir():
            if entry.name.startswith((".creating-", ".dropping-")):
                shutil.rmtree(entry, ignore_errors=True)

    def collection_dirs(self) -> list[tuple[str, Path]]:
        """(name, directory) of every committed collection, sorted by name."""
        return sorted((p.name, p) for p in self.collections.iterdir() if is_collection_dir(p))

    def load_collection(self, directory: Path, build, durability: str, sync_interval: float):
        """Open a collection directory: ``build(config, store)`` makes the collection, then
        its segments are installed and its log replayed. Raises DataLoss naming a damaged
        file: the manifest when its config cannot be built, the log when a record cannot
        be replayed."""
        store, segments, records = CollectionStore.open(directory, durability, sync_interval)
        try:
            collection = _build(build, store)
            _install(collection, segments, records, directory)
        except BaseException:
            store.close()
            raise
        return collection

    def create_collection(self, name: str, config: dict, durability: str,
                          sync_interval: float) -> CollectionStore:
        """The store of a new, empty collection directory."""
        return CollectionStore.create(self.collections / name, config, durability,
                                      sync_interval)

    def drop_collection(self, name: str) -> None:
        """Delete a collection's directory."""
        directory = self.collections / name
        if directory.exists():
            remove_collection_dir(directory)
            fsync_dir(self.collections)

    def close(self) -> None:
        """Release the lock; safe to call twice."""
        self._lock.release()


def _build(build, store: CollectionStore):
    """The collection ``build`` makes from the manifest's config; DataLoss naming the
    manifest when this version of vecstore cannot."""
    try:
        return build(store.manifest.config, store)
    except (KeyError, ValueError, TypeError) as exc:
        raise DataLoss(f"{store.directory / MANIFEST}: the collection cannot be rebuilt from "
                       f"its config by this version of vecstore: {exc}") from exc


def _install(collection, segments, records, directory: Path) -> None:
    """Install verified segments and replay log records; DataLoss naming the log files
    when a record passed the checks at open but cannot be replayed."""
    try:
        collection._load(segments, records)
    except (KeyError, ValueError, TypeError, pa.ArrowException) as exc:
        files = sorted({str(record.path) for record in records}) or [str(directory)]
        raise DataLoss(f"{', '.join(files)}: a log record cannot be replayed into the "
                       f"collection: {exc}") from exc


def _unfinished_creation(path: Path) -> bool:
    """Whether ``path`` holds nothing but what creating a database writes before its
    marker (so a creation cut short by a crash is finished, not refused)."""
    for entry in path.iterdir():
        if entry.name == "collections" and entry.is_dir():
            if any(entry.iterdir()):
                return False
        elif entry.name not in ("LOCK", MARKER + ".tmp"):
            return False
    return True


def _check_marker(marker: Path) -> None:
    try:
        content = json.loads(marker.read_bytes())
    except ValueError as exc:
        raise DataLoss(f"{marker}: unreadable database marker: {exc}") from exc
    if content != MARKER_CONTENT:
        raise InvalidArgument(f"{marker}: unsupported database format {content!r}")
