"""Merge benchmark: many small flushes into an on-disk collection, with background
size-tiered merges at several fanouts and with merges off, beside a compacted copy.

Each configuration writes ``flushes`` batches of ``rows`` rows (seeded generated vectors:
speed does not depend on realism, and recall is not measured here), flushing after
each, while a reader thread runs single-query searches. It records the segment count
after every flush, the reader's latencies, and the collection's write amplification;
then it times single-query searches of the merged collection and of a compacted copy
of the same rows, alternately in the same run.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import vecstore
from vecstore import TieredMergePolicy

COLLECTION = "bench"


def generated(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float32 standard normal rows."""
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


class Reader(threading.Thread):
    """Runs single-query searches until stopped; keeps each one's latency in seconds."""

    def __init__(self, collection, queries: np.ndarray, k: int):
        super().__init__(daemon=True)
        self.collection, self.queries, self.k = collection, queries, k
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            start = time.perf_counter()
            self.collection.search(self.queries[i % len(self.queries)], k=self.k)
            self.latencies.append(time.perf_counter() - start)
            i += 1
            time.sleep(0.002)


def median_latency(collection, queries: np.ndarray, k: int) -> float:
    """Median seconds of single-query searches over ``queries`` (m, d)."""
    times = []
    for q in queries:
        start = time.perf_counter()
        collection.search(q, k=k)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def side_by_side(first, second, queries: np.ndarray, k: int, rounds: int) -> tuple[float, float]:
    """Median single-query seconds of two collections, timed in alternating rounds."""
    a, b = [], []
    for _ in range(rounds):
        a.append(median_latency(first, queries, k))
        b.append(median_latency(second, queries, k))
    return float(np.median(a)), float(np.median(b))


def measure(directory: Path, fanout: int | None, *, flushes: int, rows: int, dim: int,
            codec: str, k: int, rounds: int, seed: int) -> dict:
    """One configuration (``fanout`` None: merges off); returns its result row."""
    shutil.rmtree(directory, ignore_errors=True)
    policy = None if fanout is None else TieredMergePolicy(fanout)
    x = generated(flushes * rows, dim, seed)
    queries = generated(64, dim, seed + 1)
    db = vecstore.open(directory / "merged", merge_policy=policy)
    collection = db.create_collection(COLLECTION, dim=dim, metric="ip", codec=codec)
    reader = Reader(collection, queries, k)
    reader.start()
    segments = []
    start = time.perf_counter()
    for i in tqdm(range(flushes), desc=f"flushes, fanout {fanout or 'off'}", unit="flush",
                  leave=False):
        collection.add(x[i * rows : (i + 1) * rows])
        collection.flush()
        segments.append(collection.stats()["segments"])
    write_s = time.perf_counter() - start
    at_last_flush = segments[-1]
    collection.wait_for_merges()
    reader.stop.set()
    reader.join()
    stats = collection.stats()
    reference_db = vecstore.open(directory / "compacted", merge_policy=None)
    reference = reference_db.create_collection(COLLECTION, dim=dim, metric="ip", codec=codec)
    reference.add(x)
    reference.compact()
    merged_s, compacted_s = side_by_side(collection, reference, queries, k, rounds)
    during = np.array(reader.latencies)
    row = {
        "bench": "merge", "fanout": fanout, "flushes": flushes, "rows_per_flush": rows,
        "dim": dim, "codec": codec, "k": k, "write_s": write_s,
        "segments_max": max(segments), "segments_at_last_flush": at_last_flush,
        "segments_settled": stats["segments"], "merges": stats["merges"],
        "write_amplification": stats["write_amplification"],
        "search_ms": merged_s * 1e3, "compacted_search_ms": compacted_s * 1e3,
        "latency_ratio": merged_s / compacted_s,
        "searches_during_writes": int(during.size),
        "search_during_writes_p50_ms": float(np.percentile(during, 50) * 1e3),
        "search_during_writes_p99_ms": float(np.percentile(during, 99) * 1e3),
    }
    db.close()
    reference_db.close()
    shutil.rmtree(directory, ignore_errors=True)
    return row
