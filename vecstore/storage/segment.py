"""Immutable Arrow IPC files: sealed segments of rows and their tombstone sets.

A segment holds one record batch of the columns in ``vecstore.rows``; its schema
metadata carries the format version and the codec config as JSON (never pickle).
Segment and tombstone files also record their ``Origin``: the manifest version meant to
commit them and the last log sequence number their rows cover, so that opening can tell
a file a crash left behind from one a newer manifest committed.
Segments are memory-mapped for search, and verified when opened: size and CRC32C
against the manifest, then Arrow's full validation. Any mismatch raises DataLoss
naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from vecstore import rows
from vecstore.errors import DataLoss
from vecstore.storage.files import crc32c, file_crc32c, write_durable

FORMAT_VERSION = "1"
FORMAT_KEY = "vecstore.format"
CODEC_KEY = "vecstore.codec"
KIND_KEY = "vecstore.kind"
VERSION_KEY = "vecstore.manifest_version"
SEQ_KEY = "vecstore.log_seq"


@dataclass(frozen=True)
class Origin:
    """Where a file comes from: the manifest ``version`` meant to commit it and the log
    ``seq`` its rows cover. A later commit may list it (merges write, then commit)."""

    version: int
    seq: int

    def to_metadata(self) -> dict[str, str]:
        return {VERSION_KEY: str(self.version), SEQ_KEY: str(self.seq)}


@dataclass(frozen=True)
class FileEntry:
    """A file as the manifest records it."""

    file: str
    rows: int
    bytes: int
    crc32c: int

    def to_json(self) -> dict:
        return {"file": self.file, "rows": self.rows, "bytes": self.bytes, "crc32c": self.crc32c}

    @classmethod
    def from_json(cls, data: dict) -> FileEntry:
        return cls(str(data["file"]), int(data["rows"]), int(data["bytes"]), int(data["crc32c"]))


def _write_table(path: Path, table: pa.Table) -> FileEntry:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))
    data = sink.getvalue()
    write_durable(path, data)
    return FileEntry(path.name, table.num_rows, data.size, crc32c(data))


def _read_table(path: Path, entry: FileEntry, kind: str) -> pa.Table:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataLoss(f"{path}: {kind} file listed in the manifest is missing") from None
    if size != entry.bytes:
        raise DataLoss(f"{path}: {kind} file has {size} bytes, the manifest says {entry.bytes}")
    if file_crc32c(path) != entry.crc32c:
        raise DataLoss(f"{path}: {kind} file fails its CRC32C checksum")
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataLoss(f"{path}: {kind} file is not valid Arrow IPC: {exc}") from exc
    meta = table.schema.metadata or {}
    if meta.get(FORMAT_KEY.encode()) != FORMAT_VERSION.encode():
        raise DataLoss(f"{path}: unknown {kind} format {meta.get(FORMAT_KEY.encode())!r}")
    if meta.get(KIND_KEY.encode()) != kind.encode() or table.num_rows != entry.rows:
        raise DataLoss(f"{path}: expected a {kind} file of {entry.rows} rows")
    return table


def read_origin(path: Path) -> Origin | None:
    """The origin a segment or tombstone file records, read from its schema alone; None
    for files without one (older versions, or cut short while being written)."""
    try:
        with pa.memory_map(str(path)) as source:
            meta = pa.ipc.open_file(source).schema.metadata or {}
        return Origin(int(meta[VERSION_KEY.encode()]), int(meta[SEQ_KEY.encode()]))
    except (pa.ArrowException, OSError, KeyError, ValueError):
        return None


def write_segment(path: Path, columns: rows.Columns, metadata: pa.Table,
                  codec_config: dict, origin: Origin) -> FileEntry:
    """Seal rows into a new segment file, fsynced; returns its manifest entry."""
    table = rows.to_table(columns, metadata, {
        FORMAT_KEY: FORMAT_VERSION, KIND_KEY: "segment",
        CODEC_KEY: json.dumps(codec_config, sort_keys=True), **origin.to_metadata(),
    })
    return _write_table(path, table)


def map_segment(path: Path) -> tuple[rows.Columns, pa.Table]:
    """Memory-mapped columns and metadata of a segment file this process just wrote (its
    checksum was computed from the bytes written, so it is not read back to verify)."""
    return rows.from_table(pa.ipc.open_file(pa.memory_map(str(path))).read_all())


def read_segment(path: Path, entry: FileEntry, code_size: int) -> tuple[rows.Columns, pa.Table]:
    """Verified, memory-mapped columns and metadata of a segment file."""
    table = _read_table(path, entry, "segment")
    if table.schema.field(rows.CODE).type.byte_width != code_size:
        raise DataLoss(f"{path}: codes are {table.schema.field(rows.CODE).type.byte_width} "
                       f"bytes wide, the collection's codec writes {code_size}")
    return rows.from_table(table)


def write_tombstones(path: Path, ids: np.ndarray, origin: Origin) -> FileEntry:
    """Write the deleted ids (m,) int64 of one segment, fsynced."""
    table = pa.table({rows.ID: pa.array(np.sort(ids), type=pa.int64())})
    return _write_table(path, table.replace_schema_metadata(
        {FORMAT_KEY: FORMAT_VERSION, KIND_KEY: "tombstones", **origin.to_metadata()}))


def read_tombstones(path: Path, entry: FileEntry) -> np.ndarray:
    """The verified deleted ids (m,) int64 of one segment."""
    return _read_table(path, entry, "tombstones").column(rows.ID).to_numpy().astype(np.int64)
