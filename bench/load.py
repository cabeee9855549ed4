"""Load test of the gRPC server: insert throughput, then single-query searches from many
client processes at once.

The base set is tiled to ``n`` rows with a little seeded noise (``bench.storage``), so
recall is measured against exact inner-product neighbours of those very rows, computed
here for the first ``recall_queries`` queries. At each concurrency level, that many worker
processes (each with its own client and channel) search one query per call for
``duration`` seconds; every search counts towards QPS, the latency percentiles and recall.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import vecstore
from bench.datasets import CACHE_DIR, REPO_ROOT, Dataset
from bench.storage import tiled_batch

K = 10
# The parts of a call's time the server reports (wire.ServerTiming), in its order.
BREAKDOWN = ("decode", "queue", "search", "encode")
GT_CHUNK = 100_000
SERVER_START_S = 120


def collection_name(dataset: str, n: int, codec: str) -> str:
    return f"load-{dataset}-{n}-{codec}"


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(120)


def load_collection(client, dataset: Dataset, *, n: int, codec: str, batch: int) -> dict:
    """Create the collection and insert n tiled rows, unless it already holds them.

    Returns the insert measurements (empty when the collection was reused)."""
    name = collection_name(dataset.name, n, codec)
    if name in client.list_collections():
        collection = client.get_collection(name)
        if len(collection) == n:
            return {"reused": True}
        client.drop_collection(name)
    collection = client.create_collection(name, dim=dataset.dim, metric="ip", codec=codec)
    add_s = 0.0
    for start in tqdm(range(0, n, batch), desc="insert", unit="batch", file=sys.stderr,
                      leave=False):
        x = tiled_batch(dataset.base, start, min(n, start + batch))
        t0 = time.perf_counter()
        collection.add(x, ids=np.arange(start, start + x.shape[0]))
        add_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    collection.flush()
    flush_s = time.perf_counter() - t0
    return {"reused": False, "insert_batch": batch, "add_s": add_s, "flush_s": flush_s,
            "insert_vectors_per_s": n / (add_s + flush_s)}


def exact_neighbours(dataset: Dataset, queries: np.ndarray, n: int) -> np.ndarray:
    """Ids (nq, K) int64 of the exact inner-product top-K among the n tiled rows, cached."""
    cache = CACHE_DIR / f"load-gt-{dataset.name}-{n}-{queries.shape[0]}.npy"
    if cache.exists():
        return np.load(cache)
    best_scores = np.full((queries.shape[0], K), -np.inf, dtype=np.float32)
    best_ids = np.full((queries.shape[0], K), -1, dtype=np.int64)
    for start in range(0, n, GT_CHUNK):
        x = tiled_batch(dataset.base, start, min(n, start + GT_CHUNK))
        scores = np.concatenate([best_scores, queries @ x.T], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(start, start + x.shape[0]),
                                                        (queries.shape[0], x.shape[0]))], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        best_scores = np.take_along_axis(scores, top, axis=1)
        best_ids = np.take_along_axis(ids, top, axis=1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, best_ids)
    return best_ids


def _search_worker(url, api_key, name, queries, offset, duration, ready, out):
    """One client process: single-query searches for ``duration`` seconds once every
    worker has connected (``ready``, a barrier); puts (latencies, query indices, found ids,
    error names, the server's (decode, queue, search, encode) seconds per call) on ``out``."""
    latencies, asked, found, errors, server = [], [], [], [], []
    with vecstore.Client(url, api_key=api_key) as client:
        collection = client.get_collection(name)
        collection.search(queries[offset % len(queries)], k=K)  # connect and warm up
        ready.wait()
        stop_at = time.perf_counter() + duration
        i = offset
        while time.perf_counter() < stop_at:
            q = i % len(queries)
            t0 = time.perf_counter()
            try:
                result, timings = collection.search_timed(queries[q], k=K)
            except vecstore.VecstoreError as exc:
                errors.append(type(exc).__name__)
            else:
                latencies.append(time.perf_counter() - t0)
                asked.append(q)
                found.append(result.ids[0])
                if timings[0] is not None:
                    server.append(tuple(timings[0]))
            i += 1
    out.put((latencies, asked, found, errors, server))


def measure_level(url: str, api_key: str | None, name: str, queries: np.ndarray,
                  truth: np.ndarray, *, concurrency: int, duration: float) -> dict:
    """QPS, latency percentiles, errors and recall@10 with ``concurrency`` client processes."""
    context = mp.get_context("spawn")
    out = context.Queue()
    ready = context.Barrier(concurrency + 1)
    workers = [context.Process(target=_search_worker,
                               args=(url, api_key, name, queries,
                                     w * len(queries) // concurrency, duration, ready, out))
               for w in range(concurrency)]
    for worker in workers:
        worker.start()
    ready.wait()  # every worker has imported vecstore, connected and searched once
    started = time.perf_counter()
    results = [out.get() for _ in workers]
    ended = time.perf_counter()
    for worker in workers:
        worker.join()
    latencies = np.concatenate([np.asarray(r[0]) for r in results])
    asked = np.concatenate([np.asarray(r[1], dtype=np.int64) for r in results])
    found = np.concatenate([np.asarray(r[2], dtype=np.int64).reshape(-1, K) for r in results])
    errors = [e for r in results for e in r[3]]
    hits = [np.intersect1d(f, truth[q]).size for f, q in zip(found, asked, strict=True)]
    elapsed = ended - started
    p50, p95, p99 = (np.percentile(latencies, [50, 95, 99]) * 1e3 if latencies.size
                     else (float("nan"),) * 3)
    server = np.array([t for r in results for t in r[4]], dtype=np.float64).reshape(-1, 4)
    breakdown = {}
    for column, part in enumerate(BREAKDOWN):
        for label, quantile in (("p50", 50), ("p99", 99)):
            value = np.percentile(server[:, column], quantile) * 1e3 if server.size else np.nan
            breakdown[f"server_{part}_{label}_ms"] = float(value)
    # What the server does not account for: the client, the channel and gRPC's own work.
    outside = (latencies[: server.shape[0]] - server.sum(axis=1)) * 1e3 if server.size else []
    breakdown["outside_server_p50_ms"] = float(np.median(outside)) if len(outside) else np.nan
    return {"kind": "search", "concurrency": concurrency, "duration_s": elapsed, **breakdown,
            "searches": int(latencies.size), "qps": latencies.size / elapsed,
            "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "errors": len(errors), "error_kinds": sorted(set(errors)),
            "recall_at_10": float(np.mean(hits)) / K if hits else float("nan")}


def run_load(*, url: str | None, serve: Path | None, device: str, api_key: str | None,
             dataset: Dataset, n: int, codec: str, batch: int, levels: list[int],
             duration: float, recall_queries: int) -> list[dict]:
    """The whole load test: start a server over ``serve`` when given (else use ``url``),
    load the collection, then search at each concurrency level. One dict per step."""
    process = None
    if serve is not None:
        from vecstore.server.process import spawn

        process, url = spawn(serve, "--device", device, cwd=REPO_ROOT, timeout=SERVER_START_S)
    try:
        with vecstore.Client(url, api_key=api_key) as client:
            insert = load_collection(client, dataset, n=n, codec=codec, batch=batch)
            info = client.server_info()
            name = collection_name(dataset.name, n, codec)
            search_device = client.get_collection(name).search_device()
        common = {"dataset": dataset.name, "n": n, "dim": dataset.dim, "codec": codec,
                  "k": K, "server_version": info["version"], "search_device": search_device}
        rows = [{"kind": "insert", **common, **insert}]
        if not insert["reused"]:
            print(f"insert {n:,} x {dataset.dim} {codec} over gRPC in batches of {batch:,}: "
                  f"{insert['insert_vectors_per_s']:,.0f} vectors/s "
                  f"({insert['add_s']:.1f} s of inserts, {insert['flush_s']:.1f} s flush)",
                  flush=True)
        queries = dataset.queries[:recall_queries]
        truth = exact_neighbours(dataset, queries, n)
        for concurrency in levels:
            row = measure_level(url, api_key, name, queries, truth, concurrency=concurrency,
                                duration=duration)
            rows.append({**common, **row})
            print(f"concurrency {concurrency:>3}: {row['qps']:8.1f} QPS, p50 {row['p50_ms']:.1f} "
                  f"ms, p95 {row['p95_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                  f"{row['errors']} errors, recall@10 {row['recall_at_10']:.4f} "
                  f"({row['searches']} searches)", flush=True)
            print("    server p50 (p99): " + ", ".join(
                f"{part} {row[f'server_{part}_p50_ms']:.3f} ({row[f'server_{part}_p99_ms']:.3f})"
                for part in BREAKDOWN) + f" ms; outside the server "
                f"{row['outside_server_p50_ms']:.3f} ms", flush=True)
    finally:
        if process is not None:
            stop_server(process)
    if serve is not None:
        row = embedded_level(serve / "data", device, name, queries, duration=duration)
        rows.append({**common, **row})
        print(f"embedded, the same directory after the server stopped: p50 "
              f"{row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms "
              f"({row['searches']} single-query searches, one thread)", flush=True)
    return rows


def embedded_level(directory: Path, device: str, name: str, queries: np.ndarray, *,
                   duration: float) -> dict:
    """Latency of the same single-query searches through the embedded API, one thread, on
    the collection the server held (its directory, reopened once the server stopped)."""
    latencies = []
    with vecstore.open(directory, device=device) as db:
        collection = db.get_collection(name)
        collection.search(queries[0], k=K)
        stop_at = time.perf_counter() + duration
        i = 0
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            collection.search(queries[i % len(queries)], k=K)
            latencies.append(time.perf_counter() - t0)
            i += 1
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return {"kind": "embedded-search", "searches": len(latencies), "p50_ms": float(p50),
            "p99_ms": float(p99)}
