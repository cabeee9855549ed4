"""Searches that arrive together run as one batch.

A scan costs about the same for one query as for dozens (the codes are read once per
batch; on the GPU, batches take the tensor-core path), so concurrent Search calls with the
same collection, k, rescore factor, filter and device are stacked into one
``Collection.search`` call and each caller gets its own rows back.

There is no waiting window and no thread of its own: the first caller of a kind leads and
runs what is queued; callers that arrive meanwhile queue, and when the leader's batch is
done the first of them is promoted to lead the next one. A lone call therefore runs at
once, exactly as it would unbatched. When a batch fails, its calls run one by one, so
each caller gets its own result or its own error.

Each call learns how long it queued (from its arrival to the start of the batch that ran
it) and how long that batch's search took, for the server's per-call latency breakdown.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from vecstore._validate import MAX_RESULTS
from vecstore.collection import Collection, SearchResult

# Most queries stacked into one search (the embedded search's own query block).
MAX_BATCH_QUERIES = 4096


@dataclass
class _Call:
    queries: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: SearchResult | None = None
    error: BaseException | None = None
    arrived: float = field(default_factory=time.perf_counter)
    queued_s: float = 0.0
    search_s: float = 0.0


class SearchTimes(NamedTuple):
    """Where one batched call spent its time: seconds queued before its batch started,
    and seconds of that batch's search."""

    queued_s: float
    search_s: float


@dataclass(frozen=True)
class SearchKind:
    """What calls must share to be batched: everything but the queries."""

    collection: Collection
    k: int
    rescore: int | None
    filter_json: str
    device: str | None


class SearchBatcher:
    """Runs concurrent searches of one kind as one batch (see the module docstring).

    ``search(kind, queries, filter)`` returns what ``kind.collection.search`` would
    return for ``queries`` (nq, d) float32 alone, or raises what it would raise.
    """

    def __init__(self, max_queries: int = MAX_BATCH_QUERIES):
        self.max_queries = max_queries
        self._lock = threading.Lock()
        # A kind is here exactly while one of its calls leads: it is added by the call that
        # finds it absent (and so leads) and removed by a leader that finds no call queued.
        self._queued: dict[SearchKind, list[_Call]] = {}

    def search(self, kind: SearchKind, queries: np.ndarray, filter) -> SearchResult:
        return self.timed_search(kind, queries, filter)[0]

    def timed_search(self, kind: SearchKind, queries: np.ndarray,
                     filter) -> tuple[SearchResult, SearchTimes]:
        """``search``, and where the call spent its time."""
        call = _Call(queries)
        with self._lock:
            call.lead = kind not in self._queued
            self._queued.setdefault(kind, []).append(call)
        if not call.lead:
            call.done.wait()
        if call.lead:
            self._lead(kind, filter)
        if call.error is not None:
            raise call.error
        return call.result, SearchTimes(call.queued_s, call.search_s)

    def _lead(self, kind: SearchKind, filter) -> None:
        """Run one batch of ``kind`` (the leader's call first), then hand the lead on."""
        with self._lock:
            queued = self._queued[kind]
            # A batch stays within one search's result limit (queries * k).
            limit = min(self.max_queries, max(1, MAX_RESULTS // max(1, kind.k)))
            taken, total = 0, 0
            while taken < len(queued) and (
                    taken == 0 or total + len(queued[taken].queries) <= limit):
                total += len(queued[taken].queries)
                taken += 1
            batch, queued[:taken] = queued[:taken], []
        started = time.perf_counter()
        self._run(kind, batch, filter)
        searched = time.perf_counter() - started
        for call in batch:
            call.queued_s, call.search_s = started - call.arrived, searched
        with self._lock:
            queued = self._queued[kind]
            if queued:
                queued[0].lead = True
                queued[0].done.set()
            else:
                del self._queued[kind]
        for call in batch:
            call.done.set()

    @staticmethod
    def _run(kind: SearchKind, batch: list[_Call], filter) -> None:
        """Fill each call's result or error."""

        def search(queries):
            return kind.collection.search(queries, kind.k, rescore=kind.rescore,
                                          filter=filter, device=kind.device)

        if len(batch) > 1:
            try:
                result = search(np.concatenate([call.queries for call in batch]))
            except Exception:  # some call is bad: each gets its own answer below
                pass
            else:
                start = 0
                for call in batch:
                    stop = start + len(call.queries)
                    call.result = SearchResult(result.distances[start:stop],
                                               result.ids[start:stop])
                    start = stop
                return
        for call in batch:
            try:
                call.result = search(call.queries)
            except Exception as exc:  # the caller's own error, raised in its thread
                call.error = exc
