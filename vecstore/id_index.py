"""Map from user ids (int64) to row positions, kept as two sorted arrays."""

from __future__ import annotations

import numpy as np


class IdIndex:
    """Sorted ids with their rows: O(log n) lookups, O(n + m log m) batched inserts.

    Stores 16 bytes per id, far less than a Python dict, and answers batches at numpy speed.
    """

    def __init__(self) -> None:
        self.ids = np.empty(0, dtype=np.int64)
        self.rows = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.ids.size

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows (m,) int64 of ``ids`` (m,) int64; -1 where an id is absent."""
        if self.ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
        return np.where(self.ids[pos] == ids, self.rows[pos], -1)

    def insert(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Add ``ids`` (m,) int64, none present yet, at ``rows`` (m,) int64."""
        order = np.argsort(ids, kind="stable")
        ids, rows = ids[order], rows[order]
        pos = np.searchsorted(self.ids, ids)
        self.ids = np.insert(self.ids, pos, ids)
        self.rows = np.insert(self.rows, pos, rows)

    def remove(self, ids: np.ndarray) -> np.ndarray:
        """Remove the present ones of ``ids``; return their rows (int64)."""
        rows = self.lookup(ids)
        present = rows >= 0
        if present.any():
            keep = ~np.isin(self.ids, ids[present])
            self.ids = self.ids[keep]
            self.rows = self.rows[keep]
        return rows[present]

    def rebuild(self, row_ids: np.ndarray) -> None:
        """Reset from ``row_ids`` (n,) int64: the id stored at each row."""
        order = np.argsort(row_ids, kind="stable")
        self.ids = row_ids[order]
        self.rows = order.astype(np.int64)

    def has_duplicates(self) -> bool:
        """Whether some id maps to more than one row (never true after ``insert``)."""
        return bool((self.ids[1:] == self.ids[:-1]).any())
