"""A collection of coded vectors with exhaustive search, in memory or on disk.

Rows live in sealed segments (memory-mapped Arrow files on disk, arrays in memory) and
a growable in-memory buffer, the memtable. Writes go to the write-ahead log first when
the collection is on disk, then to the memtable; ``flush`` seals the memtable into a
segment and persists tombstones, ``compact`` rewrites segments without deleted rows.
Searches run over a snapshot of the parts in ``search/executor.py``.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Literal, NamedTuple

import numpy as np
import pyarrow as pa

from vecstore import _validate, metadata, rows
from vecstore.codecs.base import Codec
from vecstore.codecs.registry import codec_from_config
from vecstore.errors import AlreadyExists, Closed, DataLoss, InvalidArgument, NotFound
from vecstore.id_index import IdIndex
from vecstore.merge_policy import TieredMergePolicy
from vecstore.parts import Memtable, Part, Segment, gather, grow
from vecstore.search.device import SharedScanner
from vecstore.search.executor import SearchExecutor, Snapshot
from vecstore.storage.wal import OP_ADD, OP_DELETE, OP_UPSERT

Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[str, ...] = ("cosine", "ip", "l2")

INITIAL_CAPACITY = 1024
# The memtable is sealed into a segment once its rows take this many bytes.
DEFAULT_SEGMENT_BYTES = 64 << 20
# A segment is rewritten without its deleted rows once they outnumber the live ones.
COMPACT_DEAD_FRACTION = 0.5
# The largest id; automatic ids stop there.
MAX_ID = int(np.iinfo(np.int64).max)
# Explicit flushes wait for background merges while more segments than this are below
# full size (the policy keeps far fewer once merges settle).
MERGE_BACKLOG = 48
STORED_VECTOR_DTYPES = {"float16": np.float16, "float32": np.float32}


class SearchResult(NamedTuple):
    """Search output in FAISS order.

    distances : (nq, k) float32
        Similarities, best first, for ``ip`` and ``cosine``; squared Euclidean distances,
        smallest first, for ``l2``. Missing results are ``-inf`` (ip, cosine) or ``+inf`` (l2).
    ids : (nq, k) int64
        The ids found; -1 where fewer than k vectors match.
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
    to rerank candidates with ``search(..., rescore=r)``, and typed metadata columns to
    filter searches with. Methods are safe to call from several threads; a write is
    visible to searches as soon as it returns, and searches never wait for writes.
    """

    def __init__(self, name: str, codec: Codec, metric: Metric, *,
                 store_vectors: str | None = None, rescore_codec: Codec | None = None,
                 store=None, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 device: str = "auto", merge_policy: TieredMergePolicy | None = None,
                 gpu_scanner: SharedScanner | None = None):
        self.name = name
        self.codec = codec
        self.metric = metric
        self.dim = codec.dim
        self.store_vectors = store_vectors
        self.rescore_codec = rescore_codec
        self.segment_bytes = segment_bytes
        self.merge_policy = merge_policy
        self._lock = threading.RLock()
        self._executor = SearchExecutor(
            name, metric, rescore_column=_rescore_column(store_vectors, rescore_codec),
            device=device, gpu_scanner=SharedScanner() if gpu_scanner is None else gpu_scanner,
            lock=self._lock, memtable_serial=lambda: self._memtable.serial)
        self._store = store
        self._segments: list[Segment] = []
        self._memtable = self._new_memtable()
        self._schema = metadata.EMPTY_SCHEMA
        self._next_id = 0
        self._index = IdIndex()
        self._closed = False
        self._dropped = False
        self._merger: threading.Thread | None = None
        # The last snapshot and its key, reused while nothing changes.
        self._snapshot_cache: tuple = (None, None)
        self._merging = merge_policy is not None
        self._written = {"flushed": 0, "rewritten": 0, "merged": 0, "merges": 0}

    def __repr__(self) -> str:
        return (f"Collection(name={self.name!r}, dim={self.dim}, metric={self.metric!r}, "
                f"codec={self.codec.spec!r}, count={len(self)})")

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def __contains__(self, item) -> bool:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            return False
        self._check_open()
        with self._lock:
            return bool(self._index.lookup(np.array([item], dtype=np.int64))[0] >= 0)

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- description --------------------------------------------------------------------

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

    @property
    def metadata_schema(self) -> pa.Schema:
        """The Arrow schema of the metadata fields seen so far."""
        return self._schema

    @property
    def device(self) -> str:
        """Where searches run and vectors are encoded: "auto", "cpu" or "gpu"."""
        return self._executor.device

    @property
    def path(self):
        """The collection's directory, or None in memory."""
        return None if self._store is None else self._store.directory

    def config(self) -> dict:
        """The JSON-safe description a collection is rebuilt from (codec configs included)."""
        return {
            "name": self.name, "dim": self.dim, "metric": self.metric,
            "code_size": self.codec.code_size, "codec": self.codec.to_config(),
            "rescore_codec": self.rescore_codec.to_config() if self.rescore_codec else None,
            "store_vectors": self.store_vectors,
        }

    def stats(self) -> dict:
        """Counts: live ``rows``, ``segments``, ``memtable_rows``, ``deleted_rows`` not yet
        compacted away, and ``code_bytes`` (bytes of codes and rescoring data of live rows).

        Since the collection was opened: ``merges`` done in the background, and
        ``write_amplification``, the bytes of rows written to segments (flushes, rewrites
        by flush and compact, merges) over the bytes flushed from the memtable (1.0 until
        something is rewritten; 0.0 before the first flush)."""
        with self._lock:
            dead = sum(s.dead for s in self._segments) + self._memtable.dead
            written = self._written
            total = written["flushed"] + written["rewritten"] + written["merged"]
            return {
                "rows": len(self._index), "segments": len(self._segments),
                "memtable_rows": self._memtable.count - self._memtable.dead,
                "deleted_rows": dead, "code_bytes": len(self._index) * self.bytes_per_vector,
                "merges": written["merges"],
                "write_amplification": total / written["flushed"] if written["flushed"] else 0.0,
            }

    # --- lifecycle ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._dropped:
            raise NotFound(f"collection {self.name!r} was dropped")
        if self._closed:
            raise Closed(f"collection {self.name!r} is closed")

    def close(self) -> None:
        """Flush to disk (on-disk collections) and close. Safe to call more than once;
        the collection raises Closed afterwards. A merge in progress finishes first."""
        self._stop_merging()
        with self._lock:
            if self._closed:
                return
            try:
                if self._store is not None and self._needs_checkpoint():
                    self._checkpoint(merge=False)
            finally:
                self._closed = True
                self._executor.release()
                if self._store is not None:
                    self._store.close()

    def _abandon(self) -> None:
        """Close without flushing: the collection is being dropped, and calls on it raise
        NotFound from now on (never Closed, which a client would retry)."""
        self._stop_merging()
        with self._lock:
            self._dropped = True
            self._closed = True
            self._executor.release()
            if self._store is not None:
                self._store.close()

    # --- writes -------------------------------------------------------------------------

    def _new_memtable(self, capacity: int = INITIAL_CAPACITY) -> Memtable:
        columns = {
            rows.ID: np.empty(capacity, dtype=np.int64),
            rows.CODE: np.empty((capacity, self.codec.code_size), dtype=np.uint8),
            rows.NORM: np.empty(capacity, dtype=np.float32),
            "live": np.zeros(capacity, dtype=bool),
        }
        if self.store_vectors is not None:
            columns[rows.VECTOR] = np.empty(
                (capacity, self.dim), dtype=STORED_VECTOR_DTYPES[self.store_vectors])
        if self.rescore_codec is not None:
            columns[rows.RESCORE_CODE] = np.empty(
                (capacity, self.rescore_codec.code_size), dtype=np.uint8)
        return Memtable(columns)

    def _prepare_vectors(self, vectors, what: str, *,
                         precise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Validated (n, d) float32, normalized for cosine, and the norms (n,) as given
        (summed in float64 where ``precise``, as for stored vectors; in float32 for
        queries)."""
        x = _validate.as_matrix(vectors, self.dim, what, check_finite=precise)
        norms = _validate.row_norms(x, what, precise=precise)
        if self.metric == "cosine":
            zero = np.nonzero(norms == 0)[0]
            if zero.size:
                raise InvalidArgument(
                    f"{what} at rows {_preview(zero)} are zero; cosine needs non-zero vectors"
                )
            x = x / norms[:, None]
        return x, norms

    def add(self, vectors, ids=None, metadata=None) -> np.ndarray:
        """Add vectors (n, d) or (d,) with optional ids (n,) int; return the ids (n,) int64.

        Without ids, ids continue from the largest id ever used. ``metadata`` is a dict of
        n-long columns (or a pyarrow Table) stored as typed Arrow columns for filtering.
        Raises InvalidArgument for bad input and AlreadyExists for ids already present;
        either way nothing is added. On disk the write is in the log before this returns.
        """
        added = self._write(vectors, ids, metadata, upsert=False)
        self._executor.prepare(self._snapshot)
        return added

    def upsert(self, vectors, ids, metadata=None) -> np.ndarray:
        """Insert vectors (n, d), replacing any stored under the same ids (n,), atomically:
        a search sees all of the old rows or all of the new. Returns the ids."""
        if ids is None:
            raise InvalidArgument("upsert needs ids")
        written = self._write(vectors, ids, metadata, upsert=True)
        self._executor.prepare(self._snapshot)
        return written

    def _write(self, vectors, ids, meta, *, upsert: bool) -> np.ndarray:
        self._check_open()
        x, norms = self._prepare_vectors(vectors, "vectors")
        if self.store_vectors == "float16":
            _validate.fits_float16(x)
        if ids is not None:
            ids = _validate.as_ids(ids, x.shape[0])
            _validate.unique_ids(ids)
        meta = metadata.as_metadata(meta, x.shape[0])
        with self._lock:
            self._check_open()
            if meta is not None:
                metadata.merge_schema(self._schema, meta)
            self._train_if_needed(x)
            coders = self._codecs()
        # Rows are encoded outside the lock; a ``train`` that replaced a codec meanwhile
        # (possible while the collection is still empty) makes them encode again.
        while True:
            batch = self._encode_rows(x, norms, coders)
            with self._lock:
                self._check_open()
                if _same_codecs(coders, self._codecs()):
                    return self._append(batch, ids, meta, upsert=upsert)
                coders = self._codecs()

    def _encode_rows(self, x: np.ndarray, norms: np.ndarray, coders: list[Codec]) -> rows.Columns:
        """The stored columns but ids of rows x (n, d), encoded by ``coders`` (the codec,
        then the rescoring codec if any)."""
        batch = {rows.CODE: self._encode(coders[0], x), rows.NORM: norms}
        if self.store_vectors is not None:
            batch[rows.VECTOR] = x.astype(STORED_VECTOR_DTYPES[self.store_vectors])
        if self.rescore_codec is not None:
            batch[rows.RESCORE_CODE] = coders[1].encode(x)
        return batch

    def _append(self, batch: rows.Columns, ids: np.ndarray | None, meta: pa.Table | None, *,
                upsert: bool) -> np.ndarray:
        """Log and apply encoded rows (the lock is held); returns their ids."""
        n = batch[rows.NORM].shape[0]
        schema = self._schema
        if meta is not None:
            schema, meta = metadata.merge_schema(schema, meta)
        if ids is None:
            if self._next_id + n - 1 > MAX_ID:
                raise InvalidArgument(
                    f"collection {self.name!r} has no automatic ids left (the next would "
                    f"pass {MAX_ID}); pass ids explicitly")
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        elif not upsert:
            taken = ids[self._index.lookup(ids) >= 0]
            if taken.size:
                raise AlreadyExists(f"ids already in {self.name!r}: {_preview(taken)}")
        batch[rows.ID] = ids
        if self._store is not None:
            self._store.log(OP_UPSERT if upsert else OP_ADD, rows.to_table(batch, meta))
        if upsert:
            self._apply_delete(ids)
        self._apply_add(batch, meta, schema)
        self._flush_if_full()
        return ids.copy()

    def _encode(self, codec: Codec, x: np.ndarray) -> np.ndarray:
        """Codes (n, code_size) uint8 of unit-or-raw rows x (n, d) by ``codec``: on the GPU
        when the collection's device allows it and the codec has a GPU encoder (same bits)."""
        if self.device != "cpu":
            from vecstore.codecs.turboquant_gpu import encode_on_gpu, supports_gpu_encoding
            from vecstore.search import gpu

            if supports_gpu_encoding(codec) and gpu.unavailable_reason() is None:
                return encode_on_gpu(codec, x)
        return codec.encode(x)

    def delete(self, ids) -> int:
        """Delete the vectors with these ids; absent ids are ignored. Returns how many went."""
        self._check_open()
        ids = np.unique(_validate.as_ids(ids))
        with self._lock:
            self._check_open()
            present = ids[self._index.lookup(ids) >= 0]
            if present.size:
                if self._store is not None:
                    self._store.log(OP_DELETE, rows.to_table({rows.ID: present}))
                self._apply_delete(present)
                self._flush_if_full()
        if present.size:
            self._executor.prepare(self._snapshot)
        return int(present.size)

    def train(self, vectors) -> None:
        """Fit data-dependent codecs (PQ, MIB, PCA) on a sample (n, d) before adding.

        Without it the first ``add`` trains on its own rows; each codec draws its own
        bounded, seeded training sample (65,536 rows by default). A
        collection that already holds vectors keeps its codecs: retraining would
        invalidate the stored codes.
        """
        self._check_open()
        x, _ = self._prepare_vectors(vectors, "training vectors")
        with self._lock:
            self._check_open()
            if self._next_id or self._segments or self._memtable.count:
                raise InvalidArgument(
                    f"collection {self.name!r} already holds vectors; its codecs are fixed"
                )
            self._train(x, self._codecs())

    def _codecs(self) -> list[Codec]:
        return [c for c in (self.codec, self.rescore_codec) if c is not None]

    def _train_if_needed(self, x: np.ndarray) -> None:
        untrained = [c for c in self._codecs() if not getattr(c, "is_trained", True)]
        if untrained:
            self._train(x, untrained)

    def _train(self, x: np.ndarray, codecs: list[Codec]) -> None:
        """Train copies of ``codecs`` and install them only if all succeed, so a rejected
        sample leaves every codec as it was."""
        trained = {}
        for codec in codecs:
            fresh = codec_from_config(codec.to_config())
            fresh.train(x)
            trained[id(codec)] = fresh
        self.codec = trained.get(id(self.codec), self.codec)
        if self.rescore_codec is not None:
            self.rescore_codec = trained.get(id(self.rescore_codec), self.rescore_codec)
        self._persist_config()

    def _persist_config(self) -> None:
        """Record trained codecs in the manifest before any code they wrote is logged."""
        if self._store is not None:
            self._checkpoint(merge=False, config=self.config())

    def _apply_add(self, batch: rows.Columns, meta: pa.Table | None, schema: pa.Schema) -> None:
        """Append rows whose ids are all absent (the caller checked) to the memtable."""
        mem = self._memtable
        ids = batch[rows.ID]
        n = ids.shape[0]
        needed = mem.count + n
        capacity = mem.columns[rows.ID].shape[0]
        if needed > capacity:
            capacity = max(needed, 2 * capacity)
            mem.columns = {name: grow(column, capacity, mem.count)
                           for name, column in mem.columns.items()}
        for name, values in batch.items():
            mem.columns[name][mem.count : needed] = values
        mem.columns["live"][mem.count : needed] = True
        mem.metadata.append(meta)
        mem.sizes.append(n)
        first = self._memtable_offset() + mem.count
        self._index.insert(ids, np.arange(first, first + n, dtype=np.int64))
        mem.count = needed
        self._schema = schema
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def _apply_delete(self, ids: np.ndarray) -> None:
        """Tombstone the present ones of ``ids``; live masks are replaced, not modified,
        so running searches keep their view."""
        positions = np.sort(self._index.remove(ids))
        if not positions.size:
            return
        offset = 0
        for segment in self._segments:
            hit = positions[(positions >= offset) & (positions < offset + segment.rows)] - offset
            if hit.size:
                live = np.ones(segment.rows, bool) if segment.live is None else segment.live.copy()
                live[hit] = False
                segment.live = live
                segment.tombstones_changed = True
            offset += segment.rows
        hit = positions[positions >= offset] - offset
        if hit.size:
            mem = self._memtable
            live = mem.columns["live"].copy()
            live[hit] = False
            mem.columns = {**mem.columns, "live": live}
            mem.dead += hit.size

    def _memtable_offset(self) -> int:
        return sum(segment.rows for segment in self._segments)

    def _row_bytes(self) -> int:
        """Bytes of one row's fixed columns: codes, rescoring data, id and norm."""
        return self.bytes_per_vector + 12

    def _flush_if_full(self) -> None:
        """Checkpoint when the memtable is full or a segment is mostly deleted. The write
        that triggered it is already logged, so a failure here only warns."""
        mem = self._memtable
        if (mem.count * self._row_bytes() >= self.segment_bytes
                or (mem.dead > COMPACT_DEAD_FRACTION * mem.count and mem.count >= 4096)
                or any(s.dead > COMPACT_DEAD_FRACTION * s.rows for s in self._segments)):
            try:
                self._checkpoint(merge=False)
            except Exception as exc:  # the write stands; the next write retries the flush
                warnings.warn(f"collection {self.name!r}: automatic flush failed and will be "
                              f"retried on the next write: {exc}", RuntimeWarning, stacklevel=3)

    # --- flush and compaction -----------------------------------------------------------

    def flush(self) -> None:
        """Seal the memtable into a segment and persist deletions; on disk, the log is
        then empty. Segments mostly deleted are rewritten on the way. While background
        merges lag more than MERGE_BACKLOG small segments behind, it waits for them."""
        self._check_open()
        self._wait_for_merge_backlog()
        with self._lock:
            self._check_open()
            self._checkpoint(merge=False)
        self._executor.prepare(self._snapshot)

    def compact(self) -> None:
        """Rewrite every segment with deleted rows, and merge small segments, so that
        storage holds live rows only. Searches continue meanwhile; writes wait."""
        self._check_open()
        with self._lock:
            self._check_open()
            self._checkpoint(merge=True)
        self._executor.prepare(self._snapshot)

    def _needs_checkpoint(self) -> bool:
        return bool(self._memtable.count or any(s.tombstones_changed for s in self._segments))

    def _checkpoint(self, *, merge: bool, config: dict | None = None) -> None:
        """Seal the memtable, rewrite segments (all with deletions and the small ones when
        ``merge``, else only mostly-deleted ones), persist tombstones, swap the manifest."""
        small = self.segment_bytes // 2
        present = [s for s in self._segments if s.dead < s.rows]
        rewrite = [s for s in present
                   if s.dead > COMPACT_DEAD_FRACTION * s.rows
                   or merge and (s.dead or s.rows * self._row_bytes() < small)]
        if merge and len(rewrite) == 1 and not rewrite[0].dead and not self._memtable.count:
            rewrite = []
        keep = [s for s in present if not any(s is r for r in rewrite)]
        sources = [(s.columns, s.live, (s.metadata,), (s.rows,)) for s in rewrite]
        mem = self._memtable
        if mem.count:
            live = mem.columns["live"][: mem.count]
            columns = {n: c[: mem.count] for n, c in mem.columns.items() if n != "live"}
            sources.append((columns, live, tuple(mem.metadata), tuple(mem.sizes)))
        sealed = self._seal(sources)
        row_bytes = self._row_bytes()
        self._written["rewritten"] += sum(s.rows - s.dead for s in rewrite) * row_bytes
        self._written["flushed"] += (mem.count - mem.dead) * row_bytes
        for segment in keep:
            if segment.tombstones_changed and self._store is not None:
                deleted = segment.columns[rows.ID][~segment.live]
                segment.record = self._store.write_tombstones(segment.record, deleted)
            segment.tombstones_changed = False
        segments = keep + sealed
        if self._store is not None:
            self._store.commit(tuple(s.record for s in segments), next_id=self._next_id,
                               metadata_schema=self._schema, config=config)
        self._segments = segments
        self._memtable = self._new_memtable()
        self._rebuild_index()
        self._schedule_merge()

    # --- background merges --------------------------------------------------------------

    def _merge_plan(self) -> list[Segment]:
        """The segments the merge policy would merge next (the lock is held)."""
        if not self._merging or self._closed:
            return []
        row_bytes = self._row_bytes()
        sizes = [(s.rows - s.dead) * row_bytes for s in self._segments]
        return [self._segments[i] for i in self.merge_policy.plan(sizes, self.segment_bytes)]

    def _schedule_merge(self) -> None:
        """Start the merge thread when a merge is due and none runs (the lock is held)."""
        if self._merger is None and self._merge_plan():
            self._merger = threading.Thread(target=self._merge_loop, daemon=True,
                                            name=f"vecstore-merge {self.name}")
            self._merger.start()

    def _merge_loop(self) -> None:
        """Merge while the policy finds work. Sources are read and the merged segment
        written outside the lock, so searches and writes go on; only the swap locks."""
        while True:
            with self._lock:
                sources = self._merge_plan()
                if not sources:
                    self._merger = None
                    return
                lives = [s.live for s in sources]
            try:
                merged = self._seal([(s.columns, live, (s.metadata,), (s.rows,))
                                     for s, live in zip(sources, lives, strict=True)])
                with self._lock:
                    self._install_merge(sources, lives, merged)
                self._executor.prepare(self._snapshot)
            except Exception as exc:  # the segments stay as they are; a later flush retries
                warnings.warn(f"collection {self.name!r}: background merge failed: {exc}",
                              RuntimeWarning, stacklevel=1)
                with self._lock:
                    self._merger = None
                return

    def _install_merge(self, sources: list[Segment], lives: list, merged: list[Segment]
                       ) -> None:
        """Swap ``merged`` in for ``sources`` (the lock is held). Rows deleted since the
        sources were read become tombstones of the merged segment. Nothing is swapped, and
        the new files are removed, when a flush or compaction rewrote a source meanwhile."""
        if self._closed or not all(any(s is t for t in self._segments) for s in sources):
            if self._store is not None:
                for segment in merged:
                    self._store.discard(segment.record)
            return
        gone = [s.columns[rows.ID][(np.ones(s.rows, bool) if before is None else before)
                                   & ~s.live]
                for s, before in zip(sources, lives, strict=True) if s.live is not before]
        deleted = np.concatenate(gone) if gone else np.empty(0, dtype=np.int64)
        for segment in merged:
            live = ~np.isin(segment.columns[rows.ID], deleted)
            if not live.all():
                segment.live = live
                if self._store is not None:
                    segment.record = self._store.write_tombstones(
                        segment.record, segment.columns[rows.ID][~live])
        first = next(i for i, s in enumerate(self._segments) if s is sources[0])
        rest = [s for s in self._segments if not any(s is t for t in sources)]
        segments = rest[:first] + merged + rest[first:]
        if self._store is not None:
            self._store.replace_segments(tuple(s.record for s in segments))
        self._segments = segments
        self._rebuild_index()
        self._written["merged"] += sum(s.rows for s in merged) * self._row_bytes()
        self._written["merges"] += 1

    def _stop_merging(self) -> None:
        """Let a running merge finish and start no more (the lock is not held)."""
        with self._lock:
            self._merging = False
            merger = self._merger
        if merger is not None:
            merger.join()

    def _wait_for_merge_backlog(self) -> None:
        """Wait while a merge runs and more than MERGE_BACKLOG segments are below full size
        (the lock is not held), so that flushes faster than merges cannot pile up
        segments for every search to visit."""
        while True:
            with self._lock:
                merger = self._merger
                row_bytes = self._row_bytes()
                small = sum((s.rows - s.dead) * row_bytes < self.segment_bytes
                            for s in self._segments)
            if merger is None or small <= MERGE_BACKLOG:
                return
            merger.join(0.05)

    def wait_for_merges(self, timeout: float | None = None) -> bool:
        """Block until no background merge is due or running; False if ``timeout`` seconds
        passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                merger = self._merger
            if merger is None:
                return True
            merger.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if merger.is_alive():
                return False

    def _seal(self, sources) -> list[Segment]:
        """New segments holding the live rows of ``sources`` (columns, live mask, metadata
        batches, batch sizes), split evenly into pieces of about ``segment_bytes``."""
        batches, tables = [], []
        for columns, live, metas, sizes in sources:
            part = Part(columns, metas, sizes, live)
            table = part.metadata_table(self._schema)
            if live is not None:
                keep = np.nonzero(live)[0]
                columns, table = rows.take(columns, keep), table.take(keep)
            batches.append(columns)
            tables.append(table)
        if not batches:
            return []
        columns = rows.concat(batches) if len(batches) > 1 else batches[0]
        table = pa.concat_tables(tables)
        total = columns[rows.ID].shape[0]
        if not total:
            return []
        pieces = max(1, round(total * self._row_bytes() / self.segment_bytes))
        per_segment = -(-total // pieces)
        sealed = []
        for start in range(0, total, per_segment):
            piece = {n: c[start : start + per_segment] for n, c in columns.items()}
            piece_meta = table.slice(start, per_segment)
            if self._store is None:
                sealed.append(Segment(piece, piece_meta))
            else:
                sealed.append(Segment(*self._store.write_segment(piece, piece_meta)))
        return sealed

    def _rebuild_index(self) -> None:
        parts = self._parts()
        ids = np.concatenate([p.columns[rows.ID] for p in parts]) if parts else \
            np.empty(0, dtype=np.int64)
        live = np.concatenate([np.ones(p.rows, bool) if p.live is None else p.live
                               for p in parts]) if parts else np.empty(0, dtype=bool)
        positions = np.nonzero(live)[0]
        self._index.rebuild(ids[positions])
        self._index.rows = positions[self._index.rows]

    # --- loading from disk --------------------------------------------------------------

    def _load(self, segments, records) -> None:
        """Install verified segments and replay log records after the manifest."""
        manifest = self._store.manifest
        self._schema = manifest.metadata_schema
        self._next_id = manifest.next_id
        for loaded in segments:
            live = None
            if loaded.deleted.size:
                live = ~np.isin(loaded.columns[rows.ID], loaded.deleted)
            self._segments.append(Segment(loaded.columns, loaded.metadata, live, loaded.record))
        self._rebuild_index()
        if self._index.has_duplicates():
            raise DataLoss(f"{self._store.directory}: an id is stored in more than one row")
        for record in records:
            self._replay(record)
        with self._lock:
            self._schedule_merge()

    def _replay(self, record) -> None:
        batch, meta = rows.from_table(record.table)
        ids = batch[rows.ID]
        if record.op == OP_DELETE:
            self._apply_delete(ids)
            return
        if record.op == OP_UPSERT:
            self._apply_delete(ids)
        elif (self._index.lookup(ids) >= 0).any():
            raise DataLoss(f"{self._store.directory}: log record {record.seq} adds ids "
                           "that are already present")
        schema = self._schema
        if meta.num_columns:
            schema, meta = metadata.merge_schema(self._schema, meta)
        else:
            meta = None
        batch = {n: np.array(c) for n, c in batch.items()}
        self._apply_add(batch, meta, schema)

    # --- reads --------------------------------------------------------------------------

    def _parts(self) -> list[Part]:
        """Every segment and the memtable's filled rows, as of now. Later writes never
        modify the arrays these parts hold."""
        parts = [Part(s.columns, (s.metadata,), (s.rows,), s.live, s.serial)
                 for s in self._segments]
        mem = self._memtable
        if mem.count:
            columns = {n: c[: mem.count] for n, c in mem.columns.items() if n != "live"}
            live = mem.columns["live"][: mem.count] if mem.dead else None
            parts.append(Part(columns, tuple(mem.metadata), tuple(mem.sizes), live,
                               (mem.serial, mem.count), stream=mem.serial))
        return parts

    def _snapshot(self) -> Snapshot:
        """What a search sees as of now; the same objects until a write, delete, flush,
        merge or train changes it."""
        with self._lock:
            mem = self._memtable
            key = (tuple((s.serial, id(s.live)) for s in self._segments), mem.serial,
                   mem.count, mem.dead, id(self.codec), id(self.rescore_codec),
                   id(self._schema))
            cached_key, snapshot = self._snapshot_cache
            if cached_key != key:
                parts = self._parts()
                snapshot = Snapshot(parts, np.cumsum([0] + [p.rows for p in parts]),
                                    self._schema, self.codec, self.rescore_codec, {})
                self._snapshot_cache = (key, snapshot)
        return snapshot

    def _locate(self, ids: np.ndarray):
        """The snapshot and the positions (n,) of ``ids``; NotFound naming absent ones."""
        with self._lock:
            positions = self._index.lookup(ids)
            snapshot = self._snapshot()
        missing = ids[positions < 0]
        if missing.size:
            raise NotFound(f"ids not in {self.name!r}: {_preview(missing)}")
        return snapshot.parts, snapshot.offsets, snapshot.schema, positions

    def get(self, ids) -> np.ndarray:
        """The vectors (n, d) float32 for ``ids`` (n,): the stored originals when the
        collection keeps them, else decoded from the codes.

        Raises NotFound naming the ids that are absent.
        """
        self._check_open()
        ids = _validate.as_ids(ids)
        parts, offsets, _, positions = self._locate(ids)
        if self.store_vectors is not None:
            return gather(parts, offsets, positions, rows.VECTOR).astype(np.float32)
        return self.codec.decode(gather(parts, offsets, positions, rows.CODE))

    def get_metadata(self, ids) -> pa.Table:
        """The metadata rows of ``ids`` (n,) as a pyarrow Table with an ``id`` column first.

        Raises NotFound naming the ids that are absent.
        """
        self._check_open()
        ids = _validate.as_ids(ids)
        parts, offsets, schema, positions = self._locate(ids)
        which = np.searchsorted(offsets, positions, side="right") - 1
        tables, order = [metadata.conform(None, schema, 0)], [np.empty(0, dtype=np.int64)]
        for p in np.unique(which):
            at = np.nonzero(which == p)[0]
            tables.append(parts[p].metadata_table(schema).take(positions[at] - offsets[p]))
            order.append(at)
        table = pa.concat_tables(tables).take(np.argsort(np.concatenate(order)))
        columns = [pa.array(ids, type=pa.int64()), *table.columns]
        return pa.Table.from_arrays(columns, names=[rows.ID, *table.column_names])

    def search(self, queries, k: int = 10, *, rescore: int | None = None,
               filter=None, device: str | None = None) -> SearchResult:
        """The k nearest stored vectors to each query (nq, d) or (d,), by exhaustive scan.

        With ``rescore=r`` the scan fetches k * r candidates from the codes and reranks them
        with the stored vectors (or the rescoring codec) before keeping k. ``filter`` (a
        pyarrow compute expression or the dict form of ``vecstore.metadata``) restricts
        the search to matching rows before the top-k, so k results come back whenever k
        rows match. ``device`` ("auto", "cpu", "gpu") overrides the collection's device.
        """
        self._check_open()
        q, _ = self._prepare_vectors(queries, "queries", precise=False)
        k = _validate.as_k(k)
        _validate.check_search_size(q.shape[0], k, _validate.as_rescore(rescore))
        distances, ids = self._executor.search(q, k, rescore=rescore, filter=filter,
                                               device=device, snapshot=self._snapshot())
        return SearchResult(distances, ids)

    def search_device(self, k: int = 10) -> str:
        """Where a search of k results runs under the collection's device setting: "gpu"
        when the setting allows the GPU, CuPy sees one and the codec has a kernel for
        that k, else "cpu"."""
        return self._executor.device_for(k, self.codec)


def _same_codecs(first: list[Codec], second: list[Codec]) -> bool:
    return len(first) == len(second) and all(a is b for a, b in zip(first, second, strict=True))


def _rescore_column(store_vectors: str | None, rescore_codec: Codec | None) -> str | None:
    """The column rescoring reads: the stored vectors, else the rescoring codes, else None."""
    if store_vectors is not None:
        return rows.VECTOR
    return rows.RESCORE_CODE if rescore_codec is not None else None
