"""The rows a collection holds, as searches see them: sealed segments, the memtable, and
snapshot parts, plus helpers to gather rows across parts."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vecstore import metadata, rows

_serials = itertools.count()


@dataclass
class Segment:
    """A sealed run of rows. ``live`` is replaced (never modified) when rows are deleted;
    ``record`` is its manifest record on disk (None in memory)."""

    columns: rows.Columns
    metadata: pa.Table | None
    live: np.ndarray | None = None
    record: object = None
    tombstones_changed: bool = False
    serial: int = field(default_factory=lambda: next(_serials))

    @property
    def rows(self) -> int:
        return self.columns[rows.ID].shape[0]

    @property
    def dead(self) -> int:
        return 0 if self.live is None else int(self.rows - np.count_nonzero(self.live))


@dataclass(frozen=True)
class Part:
    """Rows as one search sees them: columns, metadata batches and the live mask.

    ``key`` names the rows for caches (a segment's serial); a ``stream`` part (the
    memtable) holds the first rows of an append-only stream named ``stream``, whose rows
    never change once written.
    """

    columns: rows.Columns
    metadata: tuple[pa.Table | None, ...]
    sizes: tuple[int, ...]
    live: np.ndarray | None
    key: object = None
    stream: object = None

    @property
    def rows(self) -> int:
        return self.columns[rows.ID].shape[0]

    def metadata_table(self, schema: pa.Schema) -> pa.Table:
        tables = [metadata.conform(t, schema, n) for t, n in zip(self.metadata, self.sizes,
                                                                 strict=True)]
        return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


@dataclass
class Memtable:
    """Rows written since the last flush, in preallocated arrays that grow by doubling."""

    columns: rows.Columns
    metadata: list[pa.Table | None] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    count: int = 0
    dead: int = 0
    serial: int = field(default_factory=lambda: next(_serials))


def search_masks(parts: list[Part], expression, schema: pa.Schema) -> list[np.ndarray | None]:
    """Per part, the rows (n,) bool a search may return, or None for all. The filter is
    evaluated once over every part's metadata (its fixed cost is paid once a search)."""
    if expression is None:
        return [part.live for part in parts]
    tables = [part.metadata_table(schema) for part in parts]
    match = metadata.filter_mask(expression, pa.concat_tables(tables)) if tables else None
    masks, start = [], 0
    for part in parts:
        rows_match = match[start : start + part.rows]
        start += part.rows
        masks.append(rows_match if part.live is None else rows_match & part.live)
    return masks


def gather(parts: list[Part], offsets: np.ndarray, positions: np.ndarray,
            column: str) -> np.ndarray:
    """Values of ``column`` at global ``positions`` (m,), across parts."""
    which = np.searchsorted(offsets, positions, side="right") - 1
    first = parts[0].columns[column] if parts else np.empty(0)
    out = np.empty((positions.size, *first.shape[1:]), dtype=first.dtype)
    for p in np.unique(which):
        at = which == p
        out[at] = parts[p].columns[column][positions[at] - offsets[p]]
    return out


def grow(array: np.ndarray, capacity: int, used: int) -> np.ndarray:
    """A new array of ``capacity`` rows holding the first ``used`` rows of ``array``."""
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown
