"""Running top-k selection over chunks of candidate scores."""

from __future__ import annotations

import numpy as np


class TopK:
    """Keeps, for each of ``nq`` queries, the ``k`` candidates with the smallest keys.

    Keys are float32 where smaller is better (a distance, or a negated similarity);
    ``+inf`` marks an empty slot. Rows are int64 positions, -1 for empty slots.
    """

    def __init__(self, nq: int, k: int):
        self.k = k
        self.keys = np.full((nq, k), np.inf, dtype=np.float32)
        self.rows = np.full((nq, k), -1, dtype=np.int64)

    @classmethod
    def of(cls, keys: np.ndarray, rows: np.ndarray) -> TopK:
        """A TopK holding given keys (nq, k) float32 and rows (nq, k) int64."""
        top = cls(*keys.shape)
        top.keys, top.rows = keys, rows
        return top

    def push(self, keys: np.ndarray, first_row: int) -> None:
        """Merge a chunk of keys (nq, m) float32 for rows first_row .. first_row + m - 1."""
        m = keys.shape[1]
        if m > self.k:
            part = np.argpartition(keys, self.k - 1, axis=1)[:, : self.k]
            keys = np.take_along_axis(keys, part, axis=1)
            rows = part.astype(np.int64) + first_row
        else:
            rows = np.broadcast_to(np.arange(first_row, first_row + m, dtype=np.int64), keys.shape)
        all_keys = np.concatenate([self.keys, keys], axis=1)
        all_rows = np.concatenate([self.rows, rows], axis=1)
        best = np.argpartition(all_keys, self.k - 1, axis=1)[:, : self.k]
        self.keys = np.take_along_axis(all_keys, best, axis=1)
        self.rows = np.take_along_axis(all_rows, best, axis=1)

    def merge(self, other: TopK, rows: np.ndarray) -> None:
        """Merge ``other``'s candidates, renaming their rows through ``rows`` (other's row
        -> this one's row, int64)."""
        other_rows = np.where(other.rows >= 0, rows[np.maximum(other.rows, 0)], -1)
        all_keys = np.concatenate([self.keys, other.keys], axis=1)
        all_rows = np.concatenate([self.rows, other_rows], axis=1)
        best = np.argpartition(all_keys, self.k - 1, axis=1)[:, : self.k]
        self.keys = np.take_along_axis(all_keys, best, axis=1)
        self.rows = np.take_along_axis(all_rows, best, axis=1)

    def sorted(self, row_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys (nq, k) float32 ascending and their ids (nq, k) int64, ties to the smaller id.

        ``row_ids`` maps row positions to ids. Empty slots and rows whose key is not
        finite come back as id -1 and key +inf.
        """
        filled = self.rows >= 0
        ids = np.full(self.rows.shape, -1, dtype=np.int64)
        ids[filled] = row_ids[self.rows[filled]]
        return self.sorted_ids(ids)

    def sorted_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like ``sorted``, given the ids (nq, k) int64 of the current rows (-1 if empty)."""
        filled = np.isfinite(self.keys) & (self.rows >= 0)
        keys = np.where(filled, self.keys, np.float32(np.inf))
        ids = np.where(filled, ids, -1)
        tie_break = np.where(filled, ids, np.iinfo(np.int64).max)
        order = np.lexsort((tie_break, keys), axis=-1)
        return np.take_along_axis(keys, order, axis=1), np.take_along_axis(ids, order, axis=1)
