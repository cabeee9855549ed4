"""A hypothesis state machine driving a ``flat`` collection against an in-memory model.

Rules add (given and automatic ids, with and without metadata), add taken ids, upsert,
delete, search (with and without a metadata filter), flush, compact, close and reopen the
database (also with a second collection beside the first), and reopen what a crash would
leave (a copy of the open database's directory: its log is replayed). After every step
the collection must agree with the model: its count, the exact vectors and metadata of
every id, no id twice, no deleted id. Vectors and queries have small integer components, so
inner products are exact in float32 and search results must equal the model's brute
force exactly: ids, similarities, order (ties to the smaller id) and padding.

The same machine runs on disk (small segments, so that writes also flush on their own)
and in memory (where reopening is not a rule).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import vecstore
from tests.crash_image import settle_merges
from vecstore import AlreadyExists, Closed, InvalidArgument, NotFound

DIM = 8
# Small enough that ids are often reused, deleted and re-added.
ID_POOL = 48
# A flat row takes 4 * DIM + 12 = 44 bytes: the memtable seals every 23 rows.
SEGMENT_BYTES = 1024
TAGS = (0, 1, 2, 3)
MAX_BATCH = 6

MACHINE_SETTINGS = settings(
    max_examples=50, stateful_step_count=40, deadline=None, report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def int_vectors(n: int) -> st.SearchStrategy[np.ndarray]:
    """(n, DIM) float32 with integer components in -4..4: every inner product is exact."""
    return arrays(np.int8, (n, DIM), elements=st.integers(-4, 4)).map(
        lambda a: a.astype(np.float32))


def brute_force(model: dict[int, np.ndarray], queries: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact FAISS-order top-k by inner product over ``model`` (id -> vector): similarities
    best first, ties to the smaller id, -inf / -1 padding."""
    nq = queries.shape[0]
    distances = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    if not model:
        return distances, ids
    keys = np.array(sorted(model), dtype=np.int64)
    stored = np.stack([model[int(i)] for i in keys])
    scores = queries @ stored.T
    m = min(k, keys.size)
    for row in range(nq):
        order = np.lexsort((keys, -scores[row]))[:m]
        distances[row, :m] = scores[row, order]
        ids[row, :m] = keys[order]
    return distances, ids


def assert_search_matches(result, expected_distances, expected_ids, context: str) -> None:
    """Exact agreement, first on the similarities (which do not depend on how ties are
    broken), then on the ids."""
    assert result.distances.dtype == np.float32 and result.ids.dtype == np.int64
    assert result.ids.shape == expected_ids.shape, context
    np.testing.assert_array_equal(result.distances, expected_distances,
                                  err_msg=f"similarities differ: {context}")
    for row in range(result.ids.shape[0]):
        found = result.ids[row][result.ids[row] >= 0]
        assert np.unique(found).size == found.size, f"an id twice in one result: {context}"
    np.testing.assert_array_equal(result.ids, expected_ids,
                                  err_msg=f"ids differ (ties go to the smaller id): {context}")


class StorageMachine(RuleBasedStateMachine):
    """One ``flat`` ip collection ``c`` and its model: id -> (vector, tag or None)."""

    ON_DISK = True

    def __init__(self):
        super().__init__()
        self.path = Path(tempfile.mkdtemp(prefix="vecstore-sm-")) if self.ON_DISK else None
        self.db = self._open()
        self.c = self.db.create_collection("c", dim=DIM, metric="ip", codec="flat")
        self.vectors: dict[int, np.ndarray] = {}
        self.tags: dict[int, int | None] = {}
        self.gone: set[int] = set()        # ids once present, deleted since
        self.next_id = 0                   # one past the largest id ever stored
        self.has_tag = False               # whether the schema holds the ``tag`` field
        # The second collection (created by ``reopen_with_second``), and its model.
        self.other: dict[int, np.ndarray] = {}

    def _open(self, durability: str = "sync"):
        if self.path is None:
            return vecstore.open(segment_bytes=SEGMENT_BYTES)
        return vecstore.open(self.path, durability=durability, segment_bytes=SEGMENT_BYTES)

    def teardown(self):
        try:
            self.db.close()
        finally:
            self._remove_files()

    def _remove_files(self) -> None:
        if self.path is not None:
            # A crash copy lies in a temporary directory of its own.
            shutil.rmtree(self.path.parent if self.path.name == "db" else self.path,
                          ignore_errors=True)

    # --- helpers ------------------------------------------------------------------------

    def _free_ids(self) -> list[int]:
        return [i for i in range(ID_POOL) if i not in self.vectors]

    def _draw_metadata(self, data, n: int):
        """None, or a ``tag`` column of n ints with some nulls (typed, so that an
        all-null column still has a type)."""
        if not data.draw(st.booleans(), label="with_metadata"):
            return None, [None] * n
        tags = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(TAGS)),
                                  min_size=n, max_size=n), label="tags")
        return {"tag": pa.array(tags, type=pa.int64())}, tags

    def _store(self, ids, x: np.ndarray, tags, meta) -> None:
        for i, v, t in zip(ids, x, tags, strict=True):
            self.vectors[int(i)] = v.copy()
            self.tags[int(i)] = t
            self.gone.discard(int(i))
        self.next_id = max(self.next_id, int(max(ids)) + 1)
        if meta is not None:
            self.has_tag = True

    # --- writes -------------------------------------------------------------------------

    @rule(data=st.data())
    def add_new(self, data):
        n = data.draw(st.integers(1, MAX_BATCH), label="n")
        free = self._free_ids()
        auto = data.draw(st.booleans(), label="auto_ids") or not free
        if auto:
            ids = None
        else:
            ids = data.draw(st.lists(st.sampled_from(free), min_size=1,
                                     max_size=min(n, len(free)), unique=True), label="ids")
            n = len(ids)
        x = data.draw(int_vectors(n), label="vectors")
        meta, tags = self._draw_metadata(data, n)
        got = self.c.add(x, ids=ids, metadata=meta)
        expected = (np.arange(self.next_id, self.next_id + n) if auto
                    else np.array(ids, dtype=np.int64))
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)
        self._store(got, x, tags, meta)

    @precondition(lambda self: self.vectors)
    @rule(data=st.data())
    def add_taken(self, data):
        taken = data.draw(st.lists(st.sampled_from(sorted(self.vectors)), min_size=1,
                                   max_size=3, unique=True), label="taken")
        free = self._free_ids()
        fresh = data.draw(st.lists(st.sampled_from(free), max_size=3, unique=True)
                          if free else st.just([]), label="fresh")
        ids = data.draw(st.permutations(taken + fresh), label="ids")
        x = data.draw(int_vectors(len(ids)), label="vectors")
        meta, _ = self._draw_metadata(data, len(ids))
        count = len(self.c)
        with pytest.raises(AlreadyExists):
            self.c.add(x, ids=ids, metadata=meta)
        assert len(self.c) == count
        for i in fresh:
            assert i not in self.c

    @rule(data=st.data())
    def upsert(self, data):
        pool = sorted(set(range(ID_POOL)) | set(self.vectors))
        ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=MAX_BATCH,
                                 unique=True), label="ids")
        x = data.draw(int_vectors(len(ids)), label="vectors")
        meta, tags = self._draw_metadata(data, len(ids))
        got = self.c.upsert(x, ids=ids, metadata=meta)
        np.testing.assert_array_equal(got, np.array(ids, dtype=np.int64))
        self._store(got, x, tags, meta)

    @rule(data=st.data())
    def delete(self, data):
        pool = sorted(set(range(ID_POOL + 4)) | set(self.vectors))
        ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=MAX_BATCH),
                        label="ids")  # duplicates allowed
        present = {i for i in ids if i in self.vectors}
        assert self.c.delete(ids) == len(present)
        for i in present:
            del self.vectors[i]
            del self.tags[i]
            self.gone.add(i)

    # --- reads --------------------------------------------------------------------------

    @rule(data=st.data())
    def search(self, data):
        nq = data.draw(st.integers(1, 3), label="nq")
        queries = data.draw(int_vectors(nq), label="queries")
        k = data.draw(st.integers(1, len(self.vectors) + 3), label="k")
        result = self.c.search(queries, k)
        distances, ids = brute_force(self.vectors, queries, k)
        assert_search_matches(result, distances, ids, f"k={k}, rows={len(self.vectors)}")
        assert not set(result.ids.ravel().tolist()) & self.gone

    @rule(data=st.data())
    def search_filtered(self, data):
        queries = data.draw(int_vectors(data.draw(st.integers(1, 2), label="nq")),
                            label="queries")
        wanted = data.draw(st.one_of(st.sampled_from(TAGS).map(lambda t: (t,)),
                                     st.lists(st.sampled_from(TAGS), min_size=1, max_size=2,
                                              unique=True).map(tuple)), label="tags")
        dict_filter = {"tag": wanted[0]} if len(wanted) == 1 else {"tag": list(wanted)}
        if not self.has_tag:
            with pytest.raises(InvalidArgument):
                self.c.search(queries, 3, filter=dict_filter)
            return
        subset = {i: v for i, v in self.vectors.items() if self.tags[i] in wanted}
        k = data.draw(st.integers(1, len(subset) + 3), label="k")
        result = self.c.search(queries, k, filter=dict_filter)
        distances, ids = brute_force(subset, queries, k)
        assert_search_matches(result, distances, ids,
                              f"filter={dict_filter}, k={k}, matching rows={len(subset)}")

    # --- maintenance --------------------------------------------------------------------

    @rule()
    def flush(self):
        self.c.flush()
        assert self.c.wait_for_merges(30)   # files match the segments once merges settle
        stats = self.c.stats()
        assert stats["memtable_rows"] == 0
        if self.path is not None:
            directory = self.c.path
            assert not list(directory.glob("wal-*.log")), "flush left a log behind"
            assert len(list(directory.glob("seg-*.arrow"))) == stats["segments"]

    @rule()
    def compact(self):
        self.c.compact()
        assert self.c.wait_for_merges(30)
        stats = self.c.stats()
        assert stats["memtable_rows"] == 0
        assert stats["deleted_rows"] == 0
        if self.path is not None:
            directory = self.c.path
            assert not list(directory.glob("wal-*.log"))
            assert not list(directory.glob("del-*.arrow")), "compaction left tombstones"
            assert len(list(directory.glob("seg-*.arrow"))) == stats["segments"]

    def _reopen(self, durability: str) -> None:
        old = self.c
        self.db.close()
        with pytest.raises(Closed):
            old.search(np.ones(DIM, np.float32), 1)
        self.db = self._open(durability)
        assert self.db.damaged == {}
        self.c = self.db.get_collection("c")

    @precondition(lambda self: self.path is not None)
    @rule(durability=st.sampled_from(["sync", "batch"]))
    def reopen(self, durability):
        self._reopen(durability)

    @precondition(lambda self: self.path is not None)
    @rule(durability=st.sampled_from(["sync", "batch"]))
    def crash_and_reopen(self, durability):
        """Reopen what a crash now would leave: a copy of the directory taken while the
        database is open (every acknowledged write has reached the files), so the log
        since the last flush is replayed. Background merges settle first, since a copy,
        unlike a crash, is not one instant (the kill tests cover merges cut short)."""
        settle_merges(self.db)
        crashed = Path(tempfile.mkdtemp(prefix="vecstore-sm-crash-")) / "db"
        shutil.copytree(self.path, crashed)
        self.db.close()
        self._remove_files()
        self.path = crashed
        self.db = self._open(durability)
        assert self.db.damaged == {}
        self.c = self.db.get_collection("c")

    @precondition(lambda self: self.path is not None)
    @rule(data=st.data())
    def reopen_with_second(self, data):
        if "other" not in self.db:
            self.db.create_collection("other", dim=4, metric="l2", codec="flat")
        other = self.db.get_collection("other")
        n = data.draw(st.integers(1, 4), label="n_other")
        x = data.draw(arrays(np.int8, (n, 4), elements=st.integers(-4, 4)),
                      label="other_vectors").astype(np.float32)
        for i, v in zip(other.add(x), x, strict=True):
            self.other[int(i)] = v
        self._reopen("sync")
        assert self.db.list_collections() == ["c", "other"]
        other = self.db.get_collection("other")
        keys = sorted(self.other)
        assert len(other) == len(keys)
        np.testing.assert_array_equal(other.get(keys), np.stack([self.other[i] for i in keys]))

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def counts_agree(self):
        assert len(self.c) == len(self.vectors)
        assert self.c.stats()["rows"] == len(self.vectors)

    @invariant()
    def vectors_and_metadata_agree(self):
        if not self.vectors:
            return
        keys = sorted(self.vectors)
        np.testing.assert_array_equal(self.c.get(keys), np.stack([self.vectors[i] for i in keys]))
        table = self.c.get_metadata(keys)
        assert table.column("id").to_pylist() == keys
        if self.has_tag:
            assert table.column("tag").to_pylist() == [self.tags[i] for i in keys]
        else:
            assert "tag" not in table.column_names
        for i in keys[:: max(1, len(keys) // 8)]:
            assert i in self.c

    @invariant()
    def deleted_ids_are_gone(self):
        for i in self.gone:
            assert i not in self.c
        if self.gone:
            gone = sorted(self.gone)[:3]
            with pytest.raises(NotFound):
                self.c.get(gone)
            with pytest.raises(NotFound):
                self.c.get_metadata(gone)

    @invariant()
    def each_id_once(self):
        """A zero query ties every row at 0: with k past the count, the search returns
        every live id exactly once, in ascending order, then padding."""
        k = len(self.vectors) + 2
        result = self.c.search(np.zeros(DIM, np.float32), k)
        expected = sorted(self.vectors) + [-1, -1]
        assert result.ids[0].tolist() == expected
        assert result.distances[0].tolist() == [0.0] * len(self.vectors) + [-np.inf] * 2


class InMemoryMachine(StorageMachine):
    ON_DISK = False


TestOnDisk = StorageMachine.TestCase
TestOnDisk.settings = MACHINE_SETTINGS
TestInMemory = InMemoryMachine.TestCase
TestInMemory.settings = MACHINE_SETTINGS


def test_ties_at_the_kth_place_go_to_the_smaller_id():
    """Of rows tied at the k-th similarity, the search keeps those with the smaller ids,
    whatever order they were stored in."""
    with vecstore.open() as db:
        c = db.create_collection("c", dim=4, metric="ip", codec="flat")
        c.add(np.ones((20, 4), np.float32), ids=np.arange(119, 99, -1))
        result = c.search(np.ones(4, np.float32), 3)
        assert result.ids.tolist() == [[100, 101, 102]]
        c.add(np.ones((1, 4), np.float32), ids=[3])
        assert c.search(np.ones(4, np.float32), 3).ids.tolist() == [[3, 100, 101]]


def test_get_metadata_of_a_collection_without_metadata_fields():
    """Rows added without metadata still give a table: the ``id`` column alone."""
    with vecstore.open() as db:
        c = db.create_collection("c", dim=4, metric="ip", codec="flat")
        c.add(np.ones((2, 4), np.float32))
        table = c.get_metadata([1, 0])
        assert table.column_names == ["id"]
        assert table.column("id").to_pylist() == [1, 0]


@pytest.mark.parametrize("on_disk", [False, True])
def test_flush_and_compact_when_every_unflushed_row_is_deleted(on_disk, tmp_path):
    with vecstore.open(tmp_path if on_disk else None, segment_bytes=SEGMENT_BYTES) as db:
        c = db.create_collection("c", dim=4, metric="ip", codec="flat")
        c.add(np.ones((3, 4), np.float32))
        c.delete([0, 1, 2])
        c.flush()
        assert c.stats()["segments"] == 0 and len(c) == 0
        c.add(np.ones((1, 4), np.float32))
        c.delete([3])
        c.compact()
        assert c.stats() == {"rows": 0, "segments": 0, "memtable_rows": 0,
                             "deleted_rows": 0, "code_bytes": 0, "merges": 0,
                             "write_amplification": 0.0}
