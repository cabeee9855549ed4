"""The write-ahead log: framed, checksummed records appended before a write is acknowledged.

A log is a directory of files ``wal-<first seq>.log``; a new file starts at each
checkpoint, and files whose records all precede the manifest's ``wal_seq`` are deleted.

Frame layout (little-endian)::

    magic   4 bytes  b"VSWL"
    length  u32      payload bytes
    crc     u32      CRC32C of the payload
    hcrc    u32      CRC32C of the 12 bytes above
    payload          u64 sequence number, u8 operation, 7 zero bytes, then an Arrow IPC
                     stream of one batch (a multiple of 8 bytes, so every frame and every
                     Arrow buffer in the file stays 8-byte aligned)

Reading stops at the first frame that fails its checks. If no valid frame follows it,
it is a torn tail from a crash mid-append: the file is cut back to the last good frame
with a warning. If a valid frame does follow, records in the middle of the log were
damaged, and reading raises DataLoss naming the file.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from vecstore.errors import DataLoss
from vecstore.storage.files import crc32c, fsync_dir, write_all

MAGIC = b"VSWL"
HEADER = struct.Struct("<4sIII")
PREFIX = struct.Struct("<QB7x")
MAX_PAYLOAD = (1 << 32) - 1

OP_ADD, OP_UPSERT, OP_DELETE = 1, 2, 3
OPS = (OP_ADD, OP_UPSERT, OP_DELETE)


@dataclass(frozen=True)
class WalRecord:
    """One logged write: ``op`` is OP_ADD, OP_UPSERT or OP_DELETE; ``table`` its rows;
    ``path`` and ``offset`` where its frame starts, for error messages."""

    seq: int
    op: int
    table: pa.Table
    path: Path
    offset: int

    def where(self) -> str:
        """The record as error messages name it: its log file, sequence number and offset."""
        return f"{self.path}: log record {self.seq} at offset {self.offset}"


def wal_name(first_seq: int) -> str:
    return f"wal-{first_seq:016d}.log"


def wal_files(directory: Path) -> list[Path]:
    """The log files in ``directory``, oldest first."""
    return sorted(directory.glob("wal-*.log"))


def encode_record(seq: int, op: int, table: pa.Table) -> bytes:
    """The framed bytes of one record."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    payload = PREFIX.pack(seq, op) + sink.getvalue().to_pybytes()
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a log record holds at most 4 GiB, got {len(payload)} bytes")
    head = struct.pack("<4sII", MAGIC, len(payload), crc32c(payload))
    return head + struct.pack("<I", crc32c(head)) + payload


def _frame_at(data: memoryview, offset: int) -> int:
    """End offset of a valid frame starting at ``offset``, or -1."""
    if offset + HEADER.size > len(data):
        return -1
    magic, length, crc, hcrc = HEADER.unpack_from(data, offset)
    if magic != MAGIC or crc32c(data[offset : offset + 12]) != hcrc:
        return -1
    end = offset + HEADER.size + length
    if end > len(data) or crc32c(data[offset + HEADER.size : end]) != crc:
        return -1
    return end


def _valid_frame_after(raw: bytes, offset: int) -> int:
    """Offset of the first valid frame in ``raw`` after ``offset``, or -1."""
    data = memoryview(raw)
    start = offset + 1
    while (found := raw.find(MAGIC, start)) >= 0:
        if _frame_at(data, found) >= 0:
            return found
        start = found + 1
    return -1


def _decode(path: Path, offset: int, payload: memoryview) -> WalRecord:
    seq, op = PREFIX.unpack_from(payload, 0)
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(payload[PREFIX.size :]))
        table = reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataLoss(f"{path}: unreadable record at offset {offset}: {exc}") from exc
    if op not in OPS:
        raise DataLoss(f"{path}: unknown operation {op} at offset {offset}")
    return WalRecord(seq, op, table, path, offset)


def read_wal_file(path: Path, repair: bool = True) -> list[WalRecord]:
    """All records of one log file.

    A torn tail is cut off (the file truncated and fsynced when ``repair``) with a
    RuntimeWarning. Damage followed by valid records raises DataLoss naming the file.
    """
    raw = path.read_bytes()
    data = memoryview(raw)
    records, offset = [], 0
    while offset < len(data):
        end = _frame_at(data, offset)
        if end < 0:
            later = _valid_frame_after(raw, offset)
            if later >= 0:
                raise DataLoss(
                    f"{path}: damaged log record at offset {offset} with valid records "
                    f"after it (at offset {later}); acknowledged writes would be lost"
                )
            warnings.warn(
                f"{path}: dropping a torn tail of {len(data) - offset} bytes at offset "
                f"{offset} (an append interrupted by a crash; it was never acknowledged)",
                RuntimeWarning, stacklevel=2,
            )
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(offset)
                    os.fsync(f.fileno())
            break
        records.append(_decode(path, offset, data[offset + HEADER.size : end]))
        offset = end
    return records


def read_wal(directory: Path, after_seq: int, repair: bool = True) -> Iterator[WalRecord]:
    """Records with ``seq > after_seq`` from every log file, in order.

    Raises DataLoss when sequence numbers skip (a log file is missing or damaged).
    """
    expected = after_seq + 1
    for path in wal_files(directory):
        for record in read_wal_file(path, repair):
            if record.seq <= after_seq:
                continue
            if record.seq != expected:
                raise DataLoss(
                    f"{path}: log record {record.seq} found where {expected} was expected; "
                    "part of the log is missing"
                )
            expected += 1
            yield record


class WalWriter:
    """Appends records to one log file.

    ``durability="sync"`` fsyncs every append before returning. ``"batch"`` writes each
    record to the operating system before returning (so it survives the process dying)
    and fsyncs on a background thread every ``sync_interval`` seconds: a power loss or
    kernel crash can lose the writes of the last interval.
    """

    def __init__(self, path: Path, durability: str, sync_interval: float):
        self.path = path
        self.durability = durability
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:
            fsync_dir(path.parent)
        self._dirty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._syncer = None
        if durability == "batch":
            self._syncer = threading.Thread(target=self._sync_loop, args=(sync_interval,),
                                            name=f"vecstore-wal-sync {path.name}", daemon=True)
            self._syncer.start()

    def append(self, frame: bytes) -> None:
        """Write one framed record; durable on return under ``sync``."""
        with self._lock:
            write_all(self._fd, frame)
            if self.durability == "sync":
                os.fsync(self._fd)
            else:
                self._dirty = True

    def sync(self) -> None:
        """fsync anything written since the last sync."""
        with self._lock:
            if self._dirty and self._fd >= 0:
                os.fsync(self._fd)
                self._dirty = False

    def _sync_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sync()

    def close(self) -> None:
        """Sync and close; safe to call twice."""
        self._stop.set()
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join()
        self.sync()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
