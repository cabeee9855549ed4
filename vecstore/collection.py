"""An in-memory collection of coded vectors with exhaustive search."""

from __future__ import annotations

import threading
from typing import Literal, NamedTuple

import numpy as np

from vecstore import _validate
from vecstore.codecs.base import Codec
from vecstore.errors import AlreadyExists, Closed, InvalidArgument, NotFound
from vecstore.id_index import IdIndex
from vecstore.search import cpu

Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[str, ...] = ("cosine", "ip", "l2")

INITIAL_CAPACITY = 1024
# Tombstoned rows are squeezed out once they outnumber the live ones.
COMPACT_DEAD_FRACTION = 0.5


class SearchResult(NamedTuple):
    """Search output in FAISS order.

    distances : (nq, k) float32
        Similarities, best first, for ``ip`` and ``cosine``; squared Euclidean distances,
        smallest first, for ``l2``. Missing results are ``-inf`` (ip, cosine) or ``+inf`` (l2).
    ids : (nq, k) int64
        The ids found; -1 where fewer than k vectors exist.
    """

    distances: np.ndarray
    ids: np.ndarray


def _preview(ids: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return shown + (f", … ({ids.size} in all)" if ids.size > limit else "")


class Collection:
    """Vectors of one dimension, coded by one codec, searched by one metric.

    Create it with ``Database.create_collection``. ``cosine`` collections store unit
    vectors: ``get`` returns the normalized (and, for lossy codecs, reconstructed) vectors.
    Methods are safe to call from several threads; a write is visible to searches as
    soon as it returns.
    """

    def __init__(self, name: str, codec: Codec, metric: Metric):
        self.name = name
        self.codec = codec
        self.metric = metric
        self.dim = codec.dim
        self._lock = threading.RLock()
        self._codes = np.empty((INITIAL_CAPACITY, codec.code_size), dtype=np.uint8)
        self._row_ids = np.empty(INITIAL_CAPACITY, dtype=np.int64)
        self._live = np.zeros(INITIAL_CAPACITY, dtype=bool)
        self._rows = 0
        self._dead = 0
        self._next_id = 0
        self._index = IdIndex()
        self._closed = False

    def __repr__(self) -> str:
        return (f"Collection(name={self.name!r}, dim={self.dim}, metric={self.metric!r}, "
                f"codec={self.codec.spec!r}, count={len(self)})")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item) -> bool:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            return False
        self._check_open()
        with self._lock:
            return bool(self._index.lookup(np.array([item], dtype=np.int64))[0] >= 0)

    @property
    def code_size(self) -> int:
        """Bytes of code stored per vector."""
        return self.codec.code_size

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"collection {self.name!r} is closed")

    def _close(self) -> None:
        self._closed = True

    def _prepare_vectors(self, vectors, what: str) -> np.ndarray:
        """Validated (n, d) float32, normalized for cosine."""
        x = _validate.as_matrix(vectors, self.dim, what)
        if self.metric == "cosine":
            norms = np.linalg.norm(x, axis=1)
            zero = np.nonzero(norms == 0)[0]
            if zero.size:
                raise InvalidArgument(
                    f"{what} at rows {_preview(zero)} are zero; cosine needs non-zero vectors"
                )
            x = x / norms[:, None].astype(np.float32)
        return x

    # --- writes ------------------------------------------------------------------------

    def add(self, vectors, ids=None) -> np.ndarray:
        """Add vectors (n, d) or (d,) with optional ids (n,) int; return the ids (n,) int64.

        Without ids, ids continue from the largest id seen so far. Raises InvalidArgument
        for bad input and AlreadyExists for ids already present; either way nothing is added.
        """
        self._check_open()
        x = self._prepare_vectors(vectors, "vectors")
        if ids is not None:
            ids = _validate.as_ids(ids, x.shape[0])
            _validate.unique_ids(ids)
        codes = self.codec.encode(x)
        with self._lock:
            self._check_open()
            if ids is None:
                ids = np.arange(self._next_id, self._next_id + x.shape[0], dtype=np.int64)
            else:
                taken = ids[self._index.lookup(ids) >= 0]
                if taken.size:
                    raise AlreadyExists(f"ids already in {self.name!r}: {_preview(taken)}")
            self._append(codes, ids)
        return ids.copy()

    def _append(self, codes: np.ndarray, ids: np.ndarray) -> None:
        n = codes.shape[0]
        needed = self._rows + n
        if needed > self._codes.shape[0]:
            capacity = max(needed, 2 * self._codes.shape[0])
            self._codes = _grow(self._codes, capacity, self._rows)
            self._row_ids = _grow(self._row_ids, capacity, self._rows)
            self._live = _grow(self._live, capacity, self._rows)
        rows = np.arange(self._rows, needed, dtype=np.int64)
        self._codes[self._rows : needed] = codes
        self._row_ids[self._rows : needed] = ids
        self._live[self._rows : needed] = True
        self._index.insert(ids, rows)
        self._rows = needed
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def delete(self, ids) -> int:
        """Delete the vectors with these ids; absent ids are ignored. Returns how many went."""
        self._check_open()
        ids = np.unique(_validate.as_ids(ids))
        with self._lock:
            self._check_open()
            rows = self._index.remove(ids)
            if rows.size:
                live = self._live.copy()
                live[rows] = False
                self._live = live
                self._dead += rows.size
                if self._dead > COMPACT_DEAD_FRACTION * self._rows:
                    self._compact()
        return int(rows.size)

    def _compact(self) -> None:
        """Drop tombstoned rows. Builds new arrays so running searches keep their snapshot."""
        keep = np.nonzero(self._live[: self._rows])[0]
        capacity = max(INITIAL_CAPACITY, keep.size)
        codes = np.empty((capacity, self.code_size), dtype=np.uint8)
        row_ids = np.empty(capacity, dtype=np.int64)
        live = np.zeros(capacity, dtype=bool)
        codes[: keep.size] = self._codes[keep]
        row_ids[: keep.size] = self._row_ids[keep]
        live[: keep.size] = True
        self._codes, self._row_ids, self._live = codes, row_ids, live
        self._rows = keep.size
        self._dead = 0
        self._index.rebuild(row_ids[: keep.size])

    # --- reads -------------------------------------------------------------------------

    def get(self, ids) -> np.ndarray:
        """The stored vectors (n, d) float32 for ``ids`` (n,), decoded from their codes.

        Raises NotFound naming the ids that are absent.
        """
        self._check_open()
        ids = _validate.as_ids(ids)
        with self._lock:
            rows = self._index.lookup(ids)
            missing = ids[rows < 0]
            if missing.size:
                raise NotFound(f"ids not in {self.name!r}: {_preview(missing)}")
            codes = self._codes[rows]
        return self.codec.decode(codes)

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Codes, row ids and live mask (None when nothing is deleted) as of now."""
        with self._lock:
            n = self._rows
            live = self._live[:n] if self._dead else None
            return self._codes[:n], self._row_ids[:n], live

    def search(self, queries, k: int = 10) -> SearchResult:
        """The k nearest stored vectors to each query (nq, d) or (d,), by exhaustive scan."""
        self._check_open()
        q = self._prepare_vectors(queries, "queries")
        k = _validate.as_k(k)
        codes, row_ids, live = self._snapshot()
        # No more than the stored rows can be found: scan for those, pad the rest.
        k_scan = max(1, min(k, codes.shape[0]))
        distances = np.full((q.shape[0], k), np.inf, dtype=np.float32)
        found = np.full((q.shape[0], k), -1, dtype=np.int64)
        for start in range(0, q.shape[0], cpu.QUERY_BLOCK):
            block = slice(start, start + cpu.QUERY_BLOCK)
            top = cpu.scan(self.codec, codes, q[block], k_scan, self.metric, live)
            distances[block, :k_scan], found[block, :k_scan] = top.sorted(row_ids)
        return SearchResult(cpu.keys_to_distances(distances, self.metric), found)


def _grow(array: np.ndarray, capacity: int, used: int) -> np.ndarray:
    """A new array of ``capacity`` rows holding the first ``used`` rows of ``array``."""
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown
