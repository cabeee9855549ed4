"""The manifest: the one file that says which segments make up a collection.

``manifest.json`` holds the collection's config (codec configs included), its live
segments with their tombstone files, row counts, sizes and checksums, and the last
log sequence number those files cover. It is replaced atomically (temp file, fsync,
rename, directory fsync), so a crash leaves the old or the new one. Its own CRC32C
guards against damage: a manifest that fails it raises DataLoss naming the file.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa

from vecstore.errors import DataLoss
from vecstore.storage.files import crc32c, replace_durable
from vecstore.storage.segment import FileEntry

MANIFEST = "manifest.json"
FORMAT = "vecstore-collection"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SegmentRecord:
    """A live segment and the file of its deleted ids (None when nothing is deleted)."""

    segment: FileEntry
    tombstones: FileEntry | None = None

    def to_json(self) -> dict:
        return {"segment": self.segment.to_json(),
                "tombstones": self.tombstones.to_json() if self.tombstones else None}

    @classmethod
    def from_json(cls, data: dict) -> SegmentRecord:
        tombstones = data.get("tombstones")
        return cls(FileEntry.from_json(data["segment"]),
                   FileEntry.from_json(tombstones) if tombstones else None)


@dataclass(frozen=True)
class Manifest:
    """One version of a collection's durable state."""

    config: dict
    version: int = 0
    next_id: int = 0
    wal_seq: int = 0
    next_file: int = 1
    segments: tuple[SegmentRecord, ...] = ()
    metadata_schema: pa.Schema = field(default_factory=lambda: pa.schema([]))

    def evolve(self, **changes) -> Manifest:
        """A copy with ``changes`` and the version bumped."""
        return replace(self, version=self.version + 1, **changes)

    def files(self) -> set[str]:
        """Names of every segment and tombstone file this manifest references."""
        names = set()
        for record in self.segments:
            names.add(record.segment.file)
            if record.tombstones:
                names.add(record.tombstones.file)
        return names

    def to_json(self) -> dict:
        schema = base64.b64encode(self.metadata_schema.serialize().to_pybytes()).decode()
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "version": self.version,
            "config": self.config, "next_id": self.next_id, "wal_seq": self.wal_seq,
            "next_file": self.next_file, "metadata_schema": schema,
            "segments": [record.to_json() for record in self.segments],
        }

    @classmethod
    def from_json(cls, body: dict) -> Manifest:
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(body["metadata_schema"])))
        return cls(
            config=body["config"], version=int(body["version"]), next_id=int(body["next_id"]),
            wal_seq=int(body["wal_seq"]), next_file=int(body["next_file"]),
            segments=tuple(SegmentRecord.from_json(s) for s in body["segments"]),
            metadata_schema=schema,
        )


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def save_manifest(directory: Path, manifest: Manifest) -> None:
    """Atomically replace ``directory/manifest.json``."""
    body = manifest.to_json()
    data = json.dumps({"crc32c": crc32c(_canonical(body)), "manifest": body}, indent=1)
    replace_durable(directory / MANIFEST, data.encode())


def load_manifest(directory: Path) -> Manifest:
    """Read and verify ``directory/manifest.json``; DataLoss if it is missing or damaged."""
    path = directory / MANIFEST
    try:
        wrapper = json.loads(path.read_bytes())
        body = wrapper["manifest"]
        intact = wrapper["crc32c"] == crc32c(_canonical(body))
    except FileNotFoundError:
        raise DataLoss(f"{path}: the collection's manifest is missing") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataLoss(f"{path}: manifest is unreadable: {exc}") from exc
    if not intact:
        raise DataLoss(f"{path}: manifest fails its CRC32C checksum")
    if body.get("format") != FORMAT or body.get("format_version") != FORMAT_VERSION:
        raise DataLoss(f"{path}: unknown manifest format {body.get('format')!r} "
                       f"version {body.get('format_version')!r}")
    try:
        return Manifest.from_json(body)
    except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise DataLoss(f"{path}: manifest is malformed: {exc}") from exc
