"""One collection's directory: manifest, segment and tombstone files, write-ahead log.

Layout::

    manifest.json              the live version (see manifest.py)
    seg-<n>.arrow              immutable segments
    del-<n>.arrow              deleted ids of one segment, replaced as deletes accrue
    wal-<first seq>.log        the log of writes since the manifest's ``wal_seq``

A checkpoint writes new files, fsyncs them, swaps the manifest, starts a new log file,
and only then removes files that no manifest references any more. Each new file records
the manifest version meant to commit it and the last log record it covers, so opening
removes the files a crash left unlisted but refuses (DataLoss) to remove files newer
than the manifest, which an older manifest put back would otherwise delete.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from vecstore import rows
from vecstore.errors import DataLoss
from vecstore.storage import wal
from vecstore.storage.files import fsync_dir, remove_quietly
from vecstore.storage.manifest import (
    MANIFEST,
    Manifest,
    SegmentRecord,
    load_manifest,
    save_manifest,
)
from vecstore.storage.records import RecordCheck
from vecstore.storage.segment import (
    Origin,
    map_segment,
    read_origin,
    read_segment,
    read_tombstones,
    write_segment,
    write_tombstones,
)


@dataclass(frozen=True)
class LoadedSegment:
    """A verified segment: its manifest record, memory-mapped columns, metadata, deletions."""

    record: SegmentRecord
    columns: rows.Columns
    metadata: pa.Table
    deleted: np.ndarray


class CollectionStore:
    """Durable state of one collection. Not thread-safe: the collection serializes calls."""

    def __init__(self, directory: Path, manifest: Manifest, durability: str,
                 sync_interval: float):
        self.directory = directory
        self.manifest = manifest
        self.durability = durability
        self.sync_interval = sync_interval
        self.seq = manifest.wal_seq
        self._next_file = manifest.next_file
        self._writer: wal.WalWriter | None = None
        # Files written since open that no manifest has listed yet (a merge in progress
        # commits them later): commits leave them alone.
        self._pending: set[str] = set()
        self._files_lock = threading.Lock()

    # --- creation and loading -----------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, config: dict, durability: str,
               sync_interval: float) -> CollectionStore:
        """Create ``directory`` holding an empty collection, atomically (temp dir + rename)."""
        staging = directory.with_name(f".creating-{directory.name}-{uuid.uuid4().hex}")
        staging.mkdir()
        manifest = Manifest(config=config)
        save_manifest(staging, manifest)
        os.rename(staging, directory)
        fsync_dir(directory.parent)
        return cls(directory, manifest, durability, sync_interval)

    @classmethod
    def open(cls, directory: Path, durability: str, sync_interval: float
             ) -> tuple[CollectionStore, list[LoadedSegment], list[wal.WalRecord]]:
        """Load and verify a collection: its segments and the log records to replay.

        Raises DataLoss naming the first damaged file, or the log record the collection
        could not have written. Removes files that no manifest references (left by a
        crash mid-checkpoint) and cuts torn log tails, but removes nothing when such a
        file is newer than the manifest (then the manifest is the damage).
        """
        manifest = load_manifest(directory)
        check = RecordCheck(directory / MANIFEST, manifest.config, manifest.metadata_schema)
        segments = []
        for record in manifest.segments:
            columns, metadata = read_segment(directory / record.segment.file, record.segment,
                                             check.code_size)
            deleted = (read_tombstones(directory / record.tombstones.file, record.tombstones)
                       if record.tombstones else np.empty(0, dtype=np.int64))
            segments.append(LoadedSegment(record, columns, metadata, deleted))
        records = list(wal.read_wal(directory, manifest.wal_seq))
        check.check(records)
        store = cls(directory, manifest, durability, sync_interval)
        store.seq = records[-1].seq if records else manifest.wal_seq
        store._check_leftovers()
        store._remove_unreferenced()
        return store, segments, records

    def _check_leftovers(self) -> None:
        """DataLoss naming the manifest when an unreferenced file is newer than it: meant
        for a later manifest version, or covering log records the log no longer holds.
        A crash mid-checkpoint leaves files for the next version only, covering records
        the log still holds (it is fsynced before they are written and removed only
        after the manifest swap); a merge commits its files later, never earlier."""
        live = self.manifest.files()
        for path in sorted(self.directory.glob("*.arrow")):
            origin = None if path.name in live else read_origin(path)
            if origin is not None and (origin.version > self.manifest.version + 1
                                       or origin.seq > self.seq):
                raise DataLoss(
                    f"{self.directory / MANIFEST}: manifest version {self.manifest.version} "
                    f"(log replayable to record {self.seq}) is older than {path}, written "
                    f"for version {origin.version} after log record {origin.seq}; the "
                    "manifest was restored from an older copy, or newer manifests or log "
                    "records were lost. Nothing was removed"
                )

    # --- writes -------------------------------------------------------------------------

    def log(self, op: int, table: pa.Table) -> None:
        """Append one write to the log; durable (``sync``) or in the OS (``batch``) on return."""
        frame = wal.encode_record(self.seq + 1, op, table)
        if self._writer is None:
            self._writer = wal.WalWriter(self.directory / wal.wal_name(self.seq + 1),
                                         self.durability, self.sync_interval)
        self._writer.append(frame)
        self.seq += 1

    def _file_name(self, prefix: str) -> Path:
        """A new file's path, pending until a manifest lists it. Safe to call from a
        background merge while the collection writes."""
        with self._files_lock:
            name = f"{prefix}-{self._next_file:08d}.arrow"
            self._next_file += 1
            self._pending.add(name)
        return self.directory / name

    def _origin(self, path: Path) -> Origin:
        """The origin to record in a new file: the next manifest version and the last
        logged write, which is made durable first so the log always covers the file."""
        seq = self.seq
        self.sync()
        return Origin(self.manifest.version + 1, seq)

    def write_segment(self, columns: rows.Columns, metadata: pa.Table
                      ) -> tuple[rows.Columns, pa.Table, None, SegmentRecord]:
        """Seal rows into a new segment file. Returns its memory-mapped columns and
        metadata, no tombstones, and its manifest record; live once a ``commit`` lists it
        (which may follow other commits)."""
        path = self._file_name("seg")
        entry = write_segment(path, columns, metadata, self.manifest.config["codec"],
                              self._origin(path))
        return (*map_segment(path), None, SegmentRecord(entry))

    def write_tombstones(self, record: SegmentRecord, ids: np.ndarray) -> SegmentRecord:
        """Write a segment's deleted ids (m,) int64; the new record is live once a
        ``commit`` lists it."""
        path = self._file_name("del")
        return SegmentRecord(record.segment, write_tombstones(path, ids, self._origin(path)))

    def commit(self, segments: tuple[SegmentRecord, ...], *, next_id: int,
               metadata_schema: pa.Schema, config: dict | None = None) -> None:
        """Swap in a manifest covering every logged write, start a new log file, and
        remove the files the old manifest alone referenced. Files written but not yet
        listed by any manifest stay until a commit lists them or the next open."""
        manifest = self.manifest.evolve(
            config=config if config is not None else self.manifest.config,
            next_id=next_id, wal_seq=self.seq, next_file=self._next_file, segments=segments,
            metadata_schema=metadata_schema,
        )
        self._save(manifest)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._remove_unreferenced()

    def replace_segments(self, segments: tuple[SegmentRecord, ...]) -> None:
        """Swap in a manifest listing ``segments`` that covers the log no further than the
        current one (a merge: the memtable's rows stay in the log), and remove the files
        only the old manifest listed."""
        self._save(self.manifest.evolve(segments=segments, next_file=self._next_file))
        self._remove_unreferenced()

    def discard(self, record: SegmentRecord) -> None:
        """Remove the files of a segment no manifest will list (a merge given up)."""
        for entry in (record.segment, record.tombstones):
            if entry is not None:
                with self._files_lock:
                    self._pending.discard(entry.file)
                remove_quietly(self.directory / entry.file)

    def _save(self, manifest: Manifest) -> None:
        save_manifest(self.directory, manifest)
        self.manifest = manifest
        with self._files_lock:
            self._pending -= manifest.files()

    def _remove_unreferenced(self) -> None:
        """Delete files the manifest does not reference: replaced segments and tombstones,
        temp files, and (when no log file is open) logs the manifest fully covers."""
        # Listed before the pending names are read: a file is pending before it exists.
        paths = list(self.directory.iterdir())
        with self._files_lock:
            live = self.manifest.files() | self._pending
        for path in paths:
            name = path.name
            if name.endswith(".tmp") or (name.endswith(".arrow") and name not in live):
                remove_quietly(path)
        if self._writer is None and self.seq == self.manifest.wal_seq:
            for path in wal.wal_files(self.directory):
                remove_quietly(path)

    def sync(self) -> None:
        """fsync the log now (``batch`` durability syncs on its own every interval)."""
        if self._writer is not None:
            self._writer.sync()

    def close(self) -> None:
        """Sync and close the log; safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def remove_collection_dir(directory: Path) -> None:
    """Delete a collection directory: renamed away first, so a crash never leaves half."""
    doomed = directory.with_name(f".dropping-{directory.name}-{uuid.uuid4().hex}")
    os.rename(directory, doomed)
    fsync_dir(directory.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def is_collection_dir(path: Path) -> bool:
    """Whether ``path`` is a collection directory. Collections are created under a hidden
    temporary name and renamed into place with their manifest, so any other directory
    is a committed collection, even one whose manifest has since gone missing."""
    return path.is_dir() and not path.name.startswith(".")
