"""Concurrency: searches and reads from several threads while one thread writes.

The writer works on batches of ``M`` ids. Every batch ``b`` is stored as ``M`` copies of
one of two directions of its own, ``OLD[b]`` or ``NEW[b]`` (an upsert switches between
them), so a search for that direction finds exactly those ``M`` rows at similarity 1 and
nothing else near it. The writer numbers its operations: it records an operation before
calling it (``started``) and counts it as acknowledged once the call has returned
(``acked``). A reader reads ``acked`` before a search and ``started`` after it: the
operations before the first must all be in the snapshot the search saw, those from the
second on cannot be, and each batch must show its state after the acknowledged ones or
after one of those in between, in full (never half a write).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import vecstore
from vecstore import NotFound

pytestmark = pytest.mark.usefixtures("one_blas_thread")

DIM = 64
M = 4                      # ids per batch
MAX_BATCHES = 400
# A flat row takes 4 * DIM + 12 = 268 bytes: segments of about 30 rows (7 batches).
SEGMENT_BYTES = 8192
HIT = 0.999                # similarity of a batch's rows to its own direction (1 +- 1e-6)
READERS = 4


def _directions(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions OLD[b], NEW[b] (MAX_BATCHES, DIM) float32, all far apart."""
    x = np.random.default_rng(seed).standard_normal((2 * MAX_BATCHES, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    gram = x @ x.T
    np.fill_diagonal(gram, 0)
    assert gram.max() < 0.9
    return x[:MAX_BATCHES], x[MAX_BATCHES:]


OLD, NEW = _directions(7)
ABSENT, OLD_STATE, NEW_STATE = "absent", "old", "new"


def batch_ids(b: int) -> np.ndarray:
    return np.arange(b * M, (b + 1) * M, dtype=np.int64)


def batch_vectors(b: int, state: str) -> np.ndarray:
    return np.repeat((OLD if state == OLD_STATE else NEW)[b][None, :], M, axis=0)


def batch_metadata(b: int, state: str) -> dict:
    return {"batch": [b] * M, "version": [int(state == NEW_STATE)] * M}


@dataclass
class Log:
    """The writer's operations: per batch, (seq, state after) in order; ``started`` and
    ``acked`` count operations begun and returned."""

    history: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    counts: list[int] = field(default_factory=list)    # rows stored after each operation
    started: int = 0
    acked: int = 0
    batches: int = 0        # batches ever begun: 0 .. batches - 1

    def states(self, b: int, acked_before: int, started_after: int) -> set[str]:
        """The states batch ``b`` may show to a read that began after ``acked_before``
        operations were acknowledged and ended before ``started_after`` had begun: its
        state after the acknowledged ones, or after any one of those in between."""
        state, possible = ABSENT, set()
        for seq, after in list(self.history.get(b, ())):
            if seq >= started_after:
                break
            if seq >= acked_before:
                possible.add(after)
            else:
                state = after
        return possible | {state}

    def lengths(self, acked_before: int, started_after: int) -> set[int]:
        """The row counts a read between the same two points may show."""
        before = self.counts[acked_before - 1] if acked_before else 0
        return {before, *self.counts[acked_before:started_after]}


class Writer:
    """Random adds, upserts (switching direction), deletes and re-adds of whole batches,
    with flushes and compactions, each recorded in ``log`` around the call."""

    def __init__(self, collection, log: Log, seed: int, ops: int,
                 flush_every: int = 15, compact_every: int = 40):
        self.c = collection
        self.log = log
        self.rng = np.random.default_rng(seed)
        self.ops = ops
        self.flush_every = flush_every
        self.compact_every = compact_every
        self.state: dict[int, str] = {}

    def _do(self, b: int, after: str, call) -> None:
        log = self.log
        seq = log.started
        rows = M * sum(s != ABSENT for s in {**self.state, b: after}.values())
        log.counts.append(rows)
        log.history.setdefault(b, []).append((seq, after))
        log.started = seq + 1
        call()
        log.acked = seq + 1
        self.state[b] = after

    def _add(self, b: int) -> None:
        def call():
            got = self.c.add(batch_vectors(b, OLD_STATE), ids=batch_ids(b),
                             metadata=batch_metadata(b, OLD_STATE))
            np.testing.assert_array_equal(got, batch_ids(b))
        self.log.batches = max(self.log.batches, b + 1)
        self._do(b, OLD_STATE, call)

    def _upsert(self, b: int, after: str) -> None:
        self._do(b, after, lambda: self.c.upsert(batch_vectors(b, after), ids=batch_ids(b),
                                                 metadata=batch_metadata(b, after)))

    def _delete(self, b: int) -> None:
        def call():
            # Absent ids beside the batch are ignored.
            extra = np.arange(MAX_BATCHES * M, MAX_BATCHES * M + 2)
            assert self.c.delete(np.concatenate([batch_ids(b), extra])) == M
        self._do(b, ABSENT, call)

    def step(self, i: int) -> None:
        present = [b for b, s in self.state.items() if s != ABSENT]
        absent = [b for b, s in self.state.items() if s == ABSENT]
        roll = self.rng.random()
        if len(present) < 3 or roll < 0.4:
            if self.log.batches < MAX_BATCHES:
                self._add(self.log.batches)
        elif roll < 0.65:
            b = int(self.rng.choice(present))
            self._upsert(b, NEW_STATE if self.state[b] == OLD_STATE else OLD_STATE)
        elif roll < 0.85:
            self._delete(int(self.rng.choice(present)))
        elif absent:
            self._upsert(int(self.rng.choice(absent)), OLD_STATE)
        if i % self.flush_every == self.flush_every - 1:
            self.c.flush()
        if i % self.compact_every == self.compact_every - 1:
            self.c.compact()

    def run(self) -> None:
        for i in range(self.ops):
            self.step(i)


def run_threads(writer_fn, reader_fn, readers: int = READERS, min_seconds: float = 0.0):
    """Run ``writer_fn()`` in this thread and ``reader_fn(reader, i)`` over and over
    (i = 0, 1, ...) in ``readers`` threads until the writer is done and at least
    ``min_seconds`` have passed; re-raise the first exception of any thread. Returns the
    number of calls of each reader."""
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = [0] * readers

    def guard(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            stop.set()

    def read_loop(r):
        while not stop.is_set():
            reader_fn(r, counts[r])
            counts[r] += 1

    threads = [threading.Thread(target=guard, args=(read_loop, r), daemon=True)
               for r in range(readers)]
    for t in threads:
        t.start()
    start = time.monotonic()
    try:
        guard(writer_fn)
        while not errors and time.monotonic() - start < min_seconds:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a reader hangs"
    if errors:
        raise errors[0]
    return counts


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    """Switch threads every 10 us instead of 5 ms: far more interleavings per second."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture
def collection(request):
    segment_bytes = getattr(request, "param", SEGMENT_BYTES)
    path = Path(tempfile.mkdtemp(prefix="vecstore-conc-"))
    db = vecstore.open(path, segment_bytes=segment_bytes)
    try:
        yield db, db.create_collection("c", dim=DIM, metric="ip", codec="flat"), path
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)


def check_final_state(c, writer: Writer) -> None:
    present = {b: s for b, s in writer.state.items() if s != ABSENT}
    assert len(c) == M * len(present)
    for b, s in writer.state.items():
        if s == ABSENT:
            assert not any(int(i) in c for i in batch_ids(b))
        else:
            np.testing.assert_array_equal(c.get(batch_ids(b)), batch_vectors(b, s))


def test_searches_during_writes_flushes_and_compaction(collection):
    db, c, path = collection
    log = Log()
    writer = Writer(c, log, seed=1, ops=300)

    def read(reader, i):
        rng = np.random.default_rng([reader, i])
        acked_before = log.acked
        begun = log.batches
        if begun == 0:
            return
        chosen = rng.choice(begun + 1, size=min(6, begun + 1), replace=False)
        chosen = chosen[chosen < MAX_BATCHES]
        n = chosen.size
        queries = np.concatenate([OLD[chosen], NEW[chosen]])
        filtered = i % 3 == 0 and acked_before > 0  # the first add brings the fields
        k = M + 2
        if filtered:
            result = c.search(queries, k, filter={"batch": [int(b) for b in chosen]})
        else:
            result = c.search(queries, k)
        started_after = log.started
        ids, sims = result.ids, result.distances

        for row in range(2 * n):
            found = ids[row][ids[row] >= 0]
            assert np.unique(found).size == found.size, "an id twice in one result"
            assert (ids[row][found.size:] == -1).all(), "padding before a result"
            assert (np.diff(sims[row][: found.size]) <= 0).all(), "results out of order"
            assert np.isneginf(sims[row][found.size:]).all()
        # No id of a batch known to be absent, in any row (deleted ids never come back).
        seen_batches = np.unique(ids[ids >= 0] // M)
        for bb in seen_batches:
            assert log.states(int(bb), acked_before, started_after) != {ABSENT}, (
                f"batch {bb} is deleted (or never added) yet found")
            if filtered:
                assert bb in chosen
        for j, b in enumerate(chosen):
            b = int(b)
            expected = set(batch_ids(b).tolist())
            hits_old = set(ids[j][sims[j] > HIT].tolist())
            hits_new = set(ids[n + j][sims[n + j] > HIT].tolist())
            # Atomicity: one snapshot shows all of a batch in one version, or none of it.
            assert (hits_old, hits_new) in [(set(), set()), (expected, set()),
                                            (set(), expected)], (
                f"batch {b}: half a write visible: old {hits_old}, new {hits_new}")
            seen = {(frozenset(), frozenset()): ABSENT,
                    (frozenset(expected), frozenset()): OLD_STATE,
                    (frozenset(), frozenset(expected)): NEW_STATE,
                    }[(frozenset(hits_old), frozenset(hits_new))]
            # Visibility: every write acknowledged before the search started is seen, and
            # only writes begun before it ended.
            possible = log.states(b, acked_before, started_after)
            assert seen in possible, f"batch {b} found {seen}, expected one of {possible}"
            if possible in ({OLD_STATE}, {NEW_STATE}):
                top = ids[j if seen == OLD_STATE else n + j][:M]
                assert set(top.tolist()) == expected

    counts = run_threads(writer.run, read, min_seconds=1.0)
    assert min(counts) > 0
    check_final_state(c, writer)
    # Everything acknowledged survives a reopen.
    db.close()
    db = vecstore.open(path, segment_bytes=SEGMENT_BYTES)
    try:
        check_final_state(db.get_collection("c"), writer)
    finally:
        db.close()


def test_get_len_and_contains_during_writes(collection):
    _, c, _ = collection
    log = Log()
    writer = Writer(c, log, seed=2, ops=300, flush_every=10, compact_every=25)

    def read(reader, i):
        if reader == 0:
            # Reader 0 only counts: ``len`` takes no lock, so it runs while writes do.
            for _ in range(100):
                acked_before = log.acked
                count = len(c)
                possible = log.lengths(acked_before, log.started)
                assert count in possible, f"len(c) is {count}, expected one of {possible}"
            return
        rng = np.random.default_rng([reader, i])
        begun = log.batches
        if begun == 0:
            return
        b = int(rng.integers(0, begun))
        ids = batch_ids(b)
        acked_before = log.acked
        try:
            vectors = c.get(ids)
        except NotFound:
            vectors = None
        try:
            table = c.get_metadata(ids)
        except NotFound:
            table = None
        contained = [int(i) in c for i in ids]
        started_after = log.started
        possible = log.states(b, acked_before, started_after)
        if vectors is None:
            seen = ABSENT
        elif np.array_equal(vectors, batch_vectors(b, OLD_STATE)):
            seen = OLD_STATE
        elif np.array_equal(vectors, batch_vectors(b, NEW_STATE)):
            seen = NEW_STATE
        else:
            raise AssertionError(f"batch {b}: get mixes versions or returns other rows")
        assert seen in possible, f"get: batch {b} is {seen}, expected one of {possible}"
        if table is None:
            seen = ABSENT
        else:
            assert table.column("id").to_pylist() == ids.tolist()
            assert table.column("batch").to_pylist() == [b] * M
            versions = set(table.column("version").to_pylist())
            assert len(versions) == 1, f"batch {b}: get_metadata mixes versions"
            seen = NEW_STATE if versions == {1} else OLD_STATE
        assert seen in possible, f"get_metadata: batch {b} is {seen}, expected {possible}"
        for i, inside in zip(ids, contained, strict=True):
            assert (inside and possible != {ABSENT}) or (not inside and ABSENT in possible), (
                f"{i} in c is {inside}, batch {b} may be {possible}")

    counts = run_threads(writer.run, read, min_seconds=1.0)
    assert min(counts) > 0
    check_final_state(c, writer)


def _exact_queries(stored: dict[int, np.ndarray], rng, nq: int, k: int) -> np.ndarray:
    """Integer-valued queries whose top k + 1 similarities over ``stored`` are distinct,
    so the expected results do not depend on how ties are broken."""
    keys = np.array(sorted(stored))
    x = np.stack([stored[int(i)] for i in keys])
    out = []
    while len(out) < nq:
        q = rng.integers(-50, 51, DIM).astype(np.float32)
        top = np.sort(x @ q)[::-1][: k + 1]
        if np.unique(top).size == top.size:
            out.append(q)
    return np.stack(out)


@pytest.mark.parametrize("collection", [64 << 10], indirect=True)
def test_searches_during_compaction_match_results_before_it(collection):
    """With no writes, searches before, during and after ``compact()`` return exactly the
    same results (integer vectors make every similarity exact)."""
    _, c, _ = collection
    rng = np.random.default_rng(3)
    n, k = 12000, 10
    x = rng.integers(-50, 51, (n, DIM)).astype(np.float32)
    c.add(x, metadata={"part": (np.arange(n) % 5).tolist()})
    stored = dict(enumerate(x))
    overlapping = [0]                   # reads that ran while a compaction did
    for _ in range(3):
        # Between rounds (readers stopped): delete some rows, leaving tombstones behind.
        doomed = rng.choice(sorted(stored), size=len(stored) // 4, replace=False)
        assert c.delete(doomed) == doomed.size
        for i in doomed:
            del stored[int(i)]
        c.flush()
        assert c.stats()["deleted_rows"] > 0
        queries = _exact_queries(stored, rng, 16, k)
        reference = c.search(queries, k)
        reference_filtered = c.search(queries, k, filter={"part": [1, 2]})
        sample = rng.choice(sorted(stored), size=50, replace=False)
        reference_get = c.get(sample)
        # The reference is itself the exact answer.
        keys = np.array(sorted(stored))
        scores = queries @ np.stack([stored[int(i)] for i in keys]).T
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(reference.ids, keys[best])
        window = []                     # [start, end] of the compaction

        def read(reader, i, queries=queries, reference=reference,
                 reference_filtered=reference_filtered, sample=sample,
                 reference_get=reference_get, window=window):
            began = time.monotonic()
            if i % 4 == 3:
                got = c.search(queries, k, filter={"part": [1, 2]})
                np.testing.assert_array_equal(got.ids, reference_filtered.ids)
                np.testing.assert_array_equal(got.distances, reference_filtered.distances)
            elif i % 4 == 2:
                np.testing.assert_array_equal(c.get(sample), reference_get)
            else:
                got = c.search(queries, k)
                np.testing.assert_array_equal(got.ids, reference.ids)
                np.testing.assert_array_equal(got.distances, reference.distances)
            ended = time.monotonic()
            bounds = list(window)
            if bounds and ended > bounds[0] and (len(bounds) == 1 or began < bounds[1]):
                overlapping[0] += 1

        def compact(window=window):
            time.sleep(0.1)
            window.append(time.monotonic())
            c.compact()
            window.append(time.monotonic())
            time.sleep(0.1)

        run_threads(compact, read, readers=3)
        stats = c.stats()
        assert stats["deleted_rows"] == 0 and stats["rows"] == len(stored)
        np.testing.assert_array_equal(c.search(queries, k).ids, reference.ids)
    assert overlapping[0] > 0, "no read overlapped a compaction"


def test_len_never_shows_an_upsert_half_done():
    """``upsert`` replaces rows atomically, so ``len`` never counts the old rows gone and
    the new ones not yet in (it reads without the lock, unlike ``search`` and ``get``)."""
    with vecstore.open() as db:
        c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
        c.add(np.ones((40, DIM), np.float32))
        seen = set()

        def upserts():
            for i in range(300):
                c.upsert(np.ones((M, DIM), np.float32), ids=batch_ids(i % 10))

        def count(reader, i):
            for _ in range(100):
                seen.add(len(c))
                seen.add(c.stats()["rows"])

        run_threads(upserts, count, readers=1)
        assert seen == {40}
