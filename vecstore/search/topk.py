"""Running top-k selection over chunks of candidate scores, exact under ties."""

from __future__ import annotations

import numpy as np

EMPTY_TIE = np.iinfo(np.int64).max


def select(keys: np.ndarray, ties: np.ndarray, k: int) -> np.ndarray:
    """Columns (nq, k) of the k smallest ``keys`` (nq, m) per row, m > k, where equal
    keys go to the smaller ``ties`` value ((nq, m) or (m,) int64).

    A partition finds the k-th key; only rows where more keys equal it than fit are
    resolved by sorting their boundary candidates.
    """
    part = np.argpartition(keys, k - 1, axis=1)[:, :k]
    threshold = np.take_along_axis(keys, part, axis=1).max(axis=1)
    crowded = np.nonzero(((keys <= threshold[:, None]).sum(axis=1) > k)
                         & np.isfinite(threshold))[0]
    for row in crowded:
        candidates = np.nonzero(keys[row] <= threshold[row])[0]
        row_ties = ties[row] if ties.ndim == 2 else ties
        order = np.lexsort((row_ties[candidates], keys[row, candidates]))[:k]
        part[row] = candidates[order]
    return part


class TopK:
    """Keeps, for each of ``nq`` queries, the ``k`` candidates with the smallest keys.

    Keys are float32 where smaller is better (a distance, or a negated similarity);
    ``+inf`` marks an empty slot. Rows are int64 positions, -1 for empty slots. Ties are
    int64 values (the ids, or the rows) that decide between equal keys: smaller wins.
    """

    def __init__(self, nq: int, k: int):
        self.k = k
        self.keys = np.full((nq, k), np.inf, dtype=np.float32)
        self.rows = np.full((nq, k), -1, dtype=np.int64)
        self.ties = np.full((nq, k), EMPTY_TIE, dtype=np.int64)
        self.ordered = False

    @classmethod
    def of(cls, keys: np.ndarray, rows: np.ndarray, ties: np.ndarray,
           ordered: bool = False) -> TopK:
        """A TopK holding given keys (nq, k) float32, rows and ties (nq, k) int64;
        ``ordered`` says each query's candidates are already best first (by key, then
        tie) with empty slots (+inf, row -1) last and every other key finite."""
        top = cls.__new__(cls)
        top.k = keys.shape[1]
        top.keys, top.rows, top.ties, top.ordered = keys, rows, ties, ordered
        return top

    def push(self, keys: np.ndarray, first_row: int, ties: np.ndarray | None = None) -> None:
        """Merge a chunk of keys (nq, m) float32 for rows first_row .. first_row + m - 1.

        ``ties`` (m,) int64 ranks equal keys (default: the row numbers).
        """
        m = keys.shape[1]
        rows = np.arange(first_row, first_row + m, dtype=np.int64)
        ties = rows if ties is None else ties
        if m > self.k:
            part = select(keys, ties, self.k)
            keys = np.take_along_axis(keys, part, axis=1)
            rows, ties = rows[part], ties[part]
        else:
            rows = np.broadcast_to(rows, keys.shape)
            ties = np.broadcast_to(ties, keys.shape)
        self._keep(keys, rows, ties)

    def merge(self, other: TopK, rows: np.ndarray | None = None, offset: int = 0) -> None:
        """Merge ``other``'s candidates, renaming their rows through ``rows`` (other's row
        -> this one's row, int64), or else by adding ``offset``."""
        if rows is None:
            other_rows = np.where(other.rows >= 0, other.rows + offset, -1)
        else:
            other_rows = np.where(other.rows >= 0, rows[np.maximum(other.rows, 0)], -1)
        self._keep(other.keys, other_rows, other.ties)

    def _keep(self, keys: np.ndarray, rows: np.ndarray, ties: np.ndarray) -> None:
        all_keys = np.concatenate([self.keys, keys], axis=1)
        all_rows = np.concatenate([self.rows, rows], axis=1)
        all_ties = np.concatenate([self.ties, ties], axis=1)
        best = select(all_keys, all_ties, self.k)
        self.keys = np.take_along_axis(all_keys, best, axis=1)
        self.rows = np.take_along_axis(all_rows, best, axis=1)
        self.ties = np.take_along_axis(all_ties, best, axis=1)
        self.ordered = False

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
        if self.ordered:
            return self.keys, ids
        filled = np.isfinite(self.keys) & (self.rows >= 0)
        keys = np.where(filled, self.keys, np.float32(np.inf))
        ids = np.where(filled, ids, -1)
        tie_break = np.where(filled, ids, EMPTY_TIE)
        order = np.lexsort((tie_break, keys), axis=-1)
        return np.take_along_axis(keys, order, axis=1), np.take_along_axis(ids, order, axis=1)
