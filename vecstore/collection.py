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
from vecstore.search.rescore import rerank
from vecstore.search.topk import TopK

Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[str, ...] = ("cosine", "ip", "l2")

INITIAL_CAPACITY = 1024
# Tombstoned rows are squeezed out once they outnumber the live ones.
COMPACT_DEAD_FRACTION = 0.5
STORED_VECTOR_DTYPES = {"float16": np.float16, "float32": np.float32}
MAX_RESCORE = 64


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
    vectors: ``get`` returns the normalized vectors. Optionally the collection also keeps
    the vectors themselves (``store_vectors``) or a finer second code (``rescore_codec``)
    to rerank candidates with ``search(..., rescore=r)``. Methods are safe to call from
    several threads; a write is visible to searches as soon as it returns.
    """

    def __init__(self, name: str, codec: Codec, metric: Metric, *,
                 store_vectors: str | None = None, rescore_codec: Codec | None = None):
        self.name = name
        self.codec = codec
        self.metric = metric
        self.dim = codec.dim
        self.store_vectors = store_vectors
        self.rescore_codec = rescore_codec
        self._lock = threading.RLock()
        # Row-aligned columns: each array's first axis is the row position.
        self._columns: dict[str, np.ndarray] = {
            "codes": np.empty((INITIAL_CAPACITY, codec.code_size), dtype=np.uint8),
            "row_ids": np.empty(INITIAL_CAPACITY, dtype=np.int64),
            "live": np.zeros(INITIAL_CAPACITY, dtype=bool),
        }
        if store_vectors is not None:
            self._columns["vectors"] = np.empty(
                (INITIAL_CAPACITY, self.dim), dtype=STORED_VECTOR_DTYPES[store_vectors]
            )
        if rescore_codec is not None:
            self._columns["rescore_codes"] = np.empty(
                (INITIAL_CAPACITY, rescore_codec.code_size), dtype=np.uint8
            )
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

    @property
    def bytes_per_vector(self) -> int:
        """Bytes kept per vector for search and rescoring (codes, stored vectors), ids excluded."""
        extra = 0
        if self.store_vectors is not None:
            extra += self.dim * np.dtype(STORED_VECTOR_DTYPES[self.store_vectors]).itemsize
        if self.rescore_codec is not None:
            extra += self.rescore_codec.code_size
        return self.codec.code_size + extra

    @property
    def can_rescore(self) -> bool:
        """Whether ``search(..., rescore=r)`` has finer vectors to rerank with."""
        return self.store_vectors is not None or self.rescore_codec is not None

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
        with self._lock:
            self._train_if_needed(x)
        new = {"codes": self.codec.encode(x)}
        if self.store_vectors is not None:
            new["vectors"] = x.astype(STORED_VECTOR_DTYPES[self.store_vectors])
        if self.rescore_codec is not None:
            new["rescore_codes"] = self.rescore_codec.encode(x)
        with self._lock:
            self._check_open()
            if ids is None:
                ids = np.arange(self._next_id, self._next_id + x.shape[0], dtype=np.int64)
            else:
                taken = ids[self._index.lookup(ids) >= 0]
                if taken.size:
                    raise AlreadyExists(f"ids already in {self.name!r}: {_preview(taken)}")
            self._append(new, ids)
        return ids.copy()

    def train(self, vectors) -> None:
        """Fit data-dependent codecs (PQ, MIB, PCA) on a sample (n, d) before adding.

        Without it the first ``add`` trains on its own rows; each codec draws its own
        bounded, seeded training sample (65,536 rows by default). A
        collection that already holds vectors keeps its codecs: retraining would
        invalidate the stored codes.
        """
        self._check_open()
        x = self._prepare_vectors(vectors, "training vectors")
        with self._lock:
            if self._rows:
                raise InvalidArgument(
                    f"collection {self.name!r} already holds vectors; its codecs are fixed"
                )
            for codec in self._codecs():
                codec.train(x)

    def _codecs(self) -> list[Codec]:
        return [c for c in (self.codec, self.rescore_codec) if c is not None]

    def _train_if_needed(self, x: np.ndarray) -> None:
        for codec in self._codecs():
            if not getattr(codec, "is_trained", True):
                codec.train(x)

    def _append(self, new: dict[str, np.ndarray], ids: np.ndarray) -> None:
        n = ids.shape[0]
        needed = self._rows + n
        capacity = self._columns["row_ids"].shape[0]
        if needed > capacity:
            capacity = max(needed, 2 * capacity)
            self._columns = {name: _grow(column, capacity, self._rows)
                             for name, column in self._columns.items()}
        rows = np.arange(self._rows, needed, dtype=np.int64)
        for name, values in new.items():
            self._columns[name][self._rows : needed] = values
        self._columns["row_ids"][self._rows : needed] = ids
        self._columns["live"][self._rows : needed] = True
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
                live = self._columns["live"].copy()
                live[rows] = False
                self._columns = {**self._columns, "live": live}
                self._dead += rows.size
                if self._dead > COMPACT_DEAD_FRACTION * self._rows:
                    self._compact()
        return int(rows.size)

    def _compact(self) -> None:
        """Drop tombstoned rows. Builds new arrays so running searches keep their snapshot."""
        keep = np.nonzero(self._columns["live"][: self._rows])[0]
        capacity = max(INITIAL_CAPACITY, keep.size)
        self._columns = {name: _grow(column[keep], capacity, keep.size)
                         for name, column in self._columns.items()}
        self._rows = keep.size
        self._dead = 0
        self._index.rebuild(self._columns["row_ids"][: keep.size])

    # --- reads -------------------------------------------------------------------------

    def get(self, ids) -> np.ndarray:
        """The vectors (n, d) float32 for ``ids`` (n,): the stored originals when the
        collection keeps them, else decoded from the codes.

        Raises NotFound naming the ids that are absent.
        """
        self._check_open()
        ids = _validate.as_ids(ids)
        with self._lock:
            rows = self._index.lookup(ids)
            missing = ids[rows < 0]
            if missing.size:
                raise NotFound(f"ids not in {self.name!r}: {_preview(missing)}")
            columns = self._columns
        if "vectors" in columns:
            return columns["vectors"][rows].astype(np.float32)
        return self.codec.decode(columns["codes"][rows])

    def _snapshot(self) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The filled part of every column, and the live mask (None when nothing is
        deleted), as of now. Later writes never modify these arrays."""
        with self._lock:
            n = self._rows
            live = self._columns["live"][:n] if self._dead else None
            return {name: column[:n] for name, column in self._columns.items()}, live

    def search(self, queries, k: int = 10, *, rescore: int | None = None) -> SearchResult:
        """The k nearest stored vectors to each query (nq, d) or (d,), by exhaustive scan.

        With ``rescore=r`` the scan fetches k * r candidates from the codes and reranks them
        with the stored vectors (or the rescoring codec) before keeping k.
        """
        self._check_open()
        q = self._prepare_vectors(queries, "queries")
        k = _validate.as_k(k)
        fetch = self._rescore_fetch(rescore)
        columns, live = self._snapshot()
        codes, row_ids = columns["codes"], columns["row_ids"]
        # No more than the stored rows can be found: scan for those, pad the rest.
        k_scan = max(1, min(k * (rescore or 1), codes.shape[0]))
        k_keep = min(k, k_scan)
        distances = np.full((q.shape[0], k), np.inf, dtype=np.float32)
        found = np.full((q.shape[0], k), -1, dtype=np.int64)
        for start in range(0, q.shape[0], cpu.QUERY_BLOCK):
            block = slice(start, start + cpu.QUERY_BLOCK)
            top = cpu.scan(self.codec, codes, q[block], k_scan, self.metric, live)
            if fetch is not None:
                top = TopK.of(*rerank(q[block], top.rows, lambda rows: fetch(columns, rows),
                                      self.metric, k_keep))
            distances[block, :k_keep], found[block, :k_keep] = top.sorted(row_ids)
        return SearchResult(cpu.keys_to_distances(distances, self.metric), found)

    def _rescore_fetch(self, rescore):
        """The function giving finer vectors for rows, or None when not rescoring."""
        if rescore is None:
            return None
        if isinstance(rescore, bool) or not isinstance(rescore, int | np.integer):
            raise InvalidArgument(f"rescore must be an integer, got {type(rescore).__name__}")
        if not 1 <= rescore <= MAX_RESCORE:
            raise InvalidArgument(f"rescore must be between 1 and {MAX_RESCORE}, got {rescore}")
        if "vectors" in self._columns:
            return lambda columns, rows: columns["vectors"][rows].astype(np.float32)
        if self.rescore_codec is not None:
            return lambda columns, rows: self.rescore_codec.decode(columns["rescore_codes"][rows])
        raise InvalidArgument(
            f"collection {self.name!r} keeps nothing to rescore with; create it with "
            "store_vectors='float16' or a rescore_codec"
        )


def _grow(array: np.ndarray, capacity: int, used: int) -> np.ndarray:
    """A new array of ``capacity`` rows holding the first ``used`` rows of ``array``."""
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown
