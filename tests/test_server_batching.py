"""Concurrent searches of one kind run as one batch, and each caller gets its own answer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import vecstore
from vecstore.collection import SearchResult

pytest.importorskip("grpc")
from vecstore.server.batching import SearchBatcher, SearchKind  # noqa: E402

DIM = 8


class GatedCollection:
    """Answers row i of the queries with distances queries[i, :k]; the first search waits
    for ``gate``. Records the number of queries of every search."""

    def __init__(self):
        self.gate = threading.Event()
        self.sizes: list[int] = []
        self._first = True

    def search(self, queries, k, *, rescore=None, filter=None, device=None):
        self.sizes.append(len(queries))
        if self._first:
            self._first = False
            self.gate.wait(10)
        if np.isnan(queries).any():
            raise vecstore.InvalidArgument("queries contain NaN")
        return SearchResult(queries[:, :k].copy(), np.tile(np.arange(k), (len(queries), 1)))


def run_calls(batcher, kind, blocker, calls):
    """Start one call that blocks in the first search, queue ``calls`` behind it, release
    it; the results (or errors) of the queued calls, in order."""
    results: dict[int, object] = {}

    def call(index, queries):
        try:
            results[index] = batcher.search(kind, queries, None)
        except vecstore.VecstoreError as exc:
            results[index] = exc

    first = threading.Thread(target=call, args=(-1, np.zeros((1, DIM), np.float32)))
    first.start()
    while not blocker.sizes:
        time.sleep(0.001)
    threads = [threading.Thread(target=call, args=(i, q)) for i, q in enumerate(calls)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(batcher._queued.get(kind, ())) < len(calls) and time.monotonic() < deadline:
        time.sleep(0.001)
    blocker.gate.set()
    for thread in [first, *threads]:
        thread.join(10)
    return [results[i] for i in range(len(calls))]


def queries_of(i: int, n: int = 1) -> np.ndarray:
    return np.full((n, DIM), i, dtype=np.float32) + np.arange(DIM, dtype=np.float32)


def test_calls_queued_behind_a_batch_run_together_and_get_their_own_rows():
    collection, batcher = GatedCollection(), SearchBatcher()
    kind = SearchKind(collection, 3, None, "", None)
    calls = [queries_of(i, n=1 + i % 3) for i in range(10)]
    results = run_calls(batcher, kind, collection, calls)
    assert collection.sizes == [1, sum(len(q) for q in calls)]
    for queries, result in zip(calls, results, strict=True):
        np.testing.assert_array_equal(result.distances, queries[:, :3])
        assert result.ids.shape == (len(queries), 3)


def test_a_bad_call_fails_alone():
    collection, batcher = GatedCollection(), SearchBatcher()
    kind = SearchKind(collection, 2, None, "", None)
    calls = [queries_of(i) for i in range(6)]
    calls[4] = np.full((1, DIM), np.nan, dtype=np.float32)
    results = run_calls(batcher, kind, collection, calls)
    assert collection.sizes == [1, 6, 1, 1, 1, 1, 1, 1]
    assert isinstance(results[4], vecstore.InvalidArgument)
    for i in (0, 1, 2, 3, 5):
        np.testing.assert_array_equal(results[i].distances, calls[i][:, :2])


def test_batches_hold_at_most_max_queries():
    collection, batcher = GatedCollection(), SearchBatcher(max_queries=5)
    kind = SearchKind(collection, 1, None, "", None)
    calls = [queries_of(i, n=2) for i in range(6)]
    results = run_calls(batcher, kind, collection, calls)
    assert collection.sizes == [1, 4, 4, 4]
    assert [r.distances[0, 0] for r in results] == [float(i) for i in range(6)]
    assert not batcher._queued


def test_batches_stay_within_one_search_result_limit(monkeypatch):
    """Stacked calls never ask one search for more than MAX_RESULTS (queries * k) slots,
    which a lone call of the same size would be allowed."""
    monkeypatch.setattr("vecstore.server.batching.MAX_RESULTS", 12)
    collection, batcher = GatedCollection(), SearchBatcher()
    kind = SearchKind(collection, 3, None, "", None)
    calls = [queries_of(i, n=2) for i in range(5)]
    results = run_calls(batcher, kind, collection, calls)
    assert collection.sizes == [1, 4, 4, 2]
    assert [r.distances[0, 0] for r in results] == [float(i) for i in range(5)]


def test_calls_of_different_kinds_never_share_a_batch():
    collection, batcher = GatedCollection(), SearchBatcher()
    blocked = SearchKind(collection, 1, None, "", None)
    other = SearchKind(GatedCollection(), 1, None, "", None)
    other.collection.gate.set()
    thread = threading.Thread(target=batcher.search,
                              args=(blocked, queries_of(0), None))
    thread.start()
    while not collection.sizes:
        time.sleep(0.001)
    result = batcher.search(other, queries_of(7), None)  # not queued behind `blocked`
    assert result.distances[0, 0] == 7.0 and other.collection.sizes == [1]
    collection.gate.set()
    thread.join(10)
    assert collection.sizes == [1]


def test_concurrent_batched_searches_equal_single_searches():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    q = rng.standard_normal((64, 32)).astype(np.float32)
    with vecstore.open() as db:
        c = db.create_collection("c", dim=32, metric="l2", codec="flat")
        c.add(x)
        expected = [c.search(q[i : i + 1], 5) for i in range(len(q))]
        batcher = SearchBatcher()
        kind = SearchKind(c, 5, None, "", None)
        found: dict[int, SearchResult] = {}

        def worker(first):
            for i in range(first, len(q), 8):
                found[i] = batcher.search(kind, q[i : i + 1], None)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    for i, result in enumerate(expected):
        np.testing.assert_array_equal(found[i].ids, result.ids)
        np.testing.assert_allclose(found[i].distances, result.distances, rtol=1e-5)


def test_queued_calls_learn_how_long_they_waited_and_searched():
    """A call queued behind a blocked batch waits at least as long as that batch was held,
    and shares its batch's search time with the calls batched with it."""
    collection, batcher = GatedCollection(), SearchBatcher()
    kind = SearchKind(collection, 2, None, "", None)
    times: dict[int, object] = {}

    def call(index):
        times[index] = batcher.timed_search(kind, queries_of(index), None)[1]

    first = threading.Thread(target=call, args=(0,))
    first.start()
    deadline = time.monotonic() + 10
    while not collection.sizes and time.monotonic() < deadline:
        time.sleep(0.001)
    queued = [threading.Thread(target=call, args=(i,)) for i in (1, 2)]
    for thread in queued:
        thread.start()
    deadline = time.monotonic() + 10
    while len(batcher._queued.get(kind, ())) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    held = 0.05
    time.sleep(held)
    collection.gate.set()
    for thread in [first, *queued]:
        thread.join(10)
    assert times[0].search_s >= held and times[0].queued_s < held
    assert times[1].queued_s >= held and times[2].queued_s >= held
    assert times[1].search_s == times[2].search_s < held
