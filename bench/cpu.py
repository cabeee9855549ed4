"""CPU search benchmark: vecstore through ``Collection.search`` on an on-disk collection
laid out as in use (several segments, a memtable, deleted rows) beside faiss, turbovec and
rabitqlib, in one run.

Every method runs on the same number of threads (``vecstore.set_num_threads``,
``faiss.omp_set_num_threads`` and BLAS for faiss, rabitqlib's ``num_threads``; turbovec
reads ``RAYON_NUM_THREADS``, which ``python -m bench cpu`` sets before turbovec loads).
vecstore's own BLAS use, rotating a block of queries, runs on one BLAS thread. Methods
are timed in interleaved rounds (every method once a round, single queries then a batch)
and each reports its best round, so a slow spell of a shared machine does not fall on one
method alone. The machine's single-core read bandwidth (a numpy sum over a large array)
is measured in the same run, to put the bytes of codes scanned per second beside it, and
vecstore's first codec is timed again on every compiled scan path.

``tile`` repeats the base set to that many rows for a speed run at scale; recall is then
not reported (each vector is present many times).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import vecstore
from bench.datasets import Dataset
from vecstore._native import PATH_VARIABLE

COLLECTION = "bench"
# The layout: this many segments of the first 95% of rows, the rest in the memtable,
# and this fraction of rows deleted.
SEGMENTS = 4
MEMTABLE_FRACTION = 0.05
DELETED_FRACTION = 0.01
ADD_BATCH = 100_000


def read_bandwidth(nbytes: int = 1 << 30, repeat: int = 5) -> float:
    """Single-core read bandwidth in bytes/s: the best of ``repeat`` numpy sums."""
    array = np.ones(nbytes // 8, dtype=np.float64)
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        array.sum()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true top k found, (nq, k) ids against (nq, >= k) ground truth."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth,
                                                                            strict=False)]))


@dataclass
class Method:
    """One searchable index: ``search(queries (nq, d) float32, k) -> ids (nq, k)``."""

    name: str
    bytes_per_vector: float
    search: Callable
    deleted: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    info: dict = field(default_factory=dict)
    single: list = field(default_factory=list)
    batch: list = field(default_factory=list)
    ids: np.ndarray | None = None
    # BLAS threads while this method is timed: vecstore uses BLAS only to rotate a block
    # of queries, and an idle OpenBLAS thread spinning on the second core would take it
    # from the scan's own threads.
    blas_threads: int | None = None


def timed_single(search, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Queries per second of one call per query, and the ids (nq, k)."""
    ids = []
    start = time.perf_counter()
    for q in queries:
        ids.append(search(q[None, :], k))
    return len(queries) / (time.perf_counter() - start), np.concatenate(ids)


def timed_batch(search, queries: np.ndarray, k: int) -> float:
    """Queries per second of one call for all queries."""
    start = time.perf_counter()
    search(queries, k)
    return len(queries) / (time.perf_counter() - start)


def tiled(base: np.ndarray, rows: int | None) -> np.ndarray:
    """``base`` repeated to ``rows`` rows (all of it when rows is None)."""
    if rows is None or rows == base.shape[0]:
        return base
    return np.resize(base, (rows, base.shape[1]))


def build_collection(directory: Path, base: np.ndarray, codec: str):
    """An on-disk collection of ``base``: SEGMENTS segments, a memtable, deleted rows.
    Returns the database, the collection and the ids deleted."""
    shutil.rmtree(directory, ignore_errors=True)
    n, dim = base.shape
    sealed = int(n * (1 - MEMTABLE_FRACTION))
    db = vecstore.open(directory, durability="batch", merge_policy=None, device="cpu")
    collection = db.create_collection(COLLECTION, dim=dim, metric="ip", codec=codec)
    for part in np.array_split(np.arange(sealed), SEGMENTS):
        for start in range(0, part.size, ADD_BATCH):
            rows = part[start : start + ADD_BATCH]
            collection.add(base[rows], ids=rows)
        collection.flush()
    collection.add(base[sealed:], ids=np.arange(sealed, n))
    deleted = np.random.default_rng(0).choice(n, int(n * DELETED_FRACTION), replace=False)
    collection.delete(deleted)
    return db, collection, deleted


def live_truth(dataset: Dataset, deleted: np.ndarray, k: int) -> np.ndarray:
    """The exact top k of the live rows, (nq, k) ids, from the set's ground truth."""
    gone = set(deleted.tolist())
    truth = dataset.ground_truth("ip")
    return np.array([[i for i in row if i not in gone][:k] for row in truth])


def vecstore_methods(base: np.ndarray, codecs: list[str], directory: Path):
    """One Method per codec, and the databases to close."""
    methods, dbs = [], []
    for codec in codecs:
        db, collection, deleted = build_collection(directory / codec, base, codec)
        dbs.append(db)

        def search(q, k, collection=collection):
            return collection.search(q, k).ids

        methods.append(Method(f"vecstore {codec}", collection.code_size, search, deleted,
                              {"layout": f"{SEGMENTS} segments + memtable, "
                                         f"{deleted.size} deleted",
                               "code_bytes": collection.code_size * len(collection)},
                              blas_threads=1))
    return methods, dbs


def faiss_methods(base: np.ndarray, threads: int) -> list[Method]:
    """faiss IndexFlatIP, IndexPQFastScan at the bytes of tq4 and tq2, and IndexRaBitQ at
    1 and 4 bits (behind a random rotation, 8-bit queries), on ``threads`` threads; none if
    faiss is not installed."""
    try:
        import faiss
    except ImportError:
        return []
    from bench.peers import RABITQ_QUERY_BITS

    faiss.omp_set_num_threads(threads)
    d = base.shape[1]
    indexes = {"faiss IndexFlatIP": (faiss.IndexFlatIP(d), 4 * d)}
    for m in (d, d // 2):   # the bytes of tq4 and tq2 codes
        indexes[f"faiss PQ{m}x4fs"] = (faiss.IndexPQFastScan(d, m, 4, faiss.METRIC_INNER_PRODUCT),
                                       m // 2)
    for bits in (4, 1):
        rotation = faiss.RandomRotationMatrix(d, d)
        rotation.init(0)
        rabitq = faiss.IndexRaBitQ(d, faiss.METRIC_INNER_PRODUCT, bits)
        rabitq.qb = RABITQ_QUERY_BITS
        index = faiss.IndexPreTransform(rotation, rabitq)
        indexes[f"faiss RaBitQ {bits}-bit"] = (index, rabitq.code_size)
    methods = []
    for name, (index, nbytes) in indexes.items():
        if not index.is_trained:
            index.train(base[:65536])
        index.add(base)

        def search(q, k, index=index):
            return index.search(np.ascontiguousarray(q), k)[1]

        methods.append(Method(name, nbytes, search, info={"index": index}))
    return methods


def turbovec_methods(base: np.ndarray) -> list[Method]:
    """turbovec 4-bit and 2-bit (uncalibrated, its default); none if not installed."""
    try:
        import turbovec  # noqa: F401
    except ImportError:
        return []
    from bench.peers import TurboVecPeer

    methods = []
    for bits in (4, 2):
        peer = TurboVecPeer(base.shape[1], 0, bits, calibrated=False)
        peer.build(base, "ip")
        methods.append(Method(f"turbovec {bits}-bit", peer.bytes_per_vector, peer.search))
    return methods


def rabitqlib_methods(base: np.ndarray, threads: int) -> list[Method]:
    """rabitqlib at 4 and 1 bits, one list searched exhaustively; none if not installed."""
    try:
        import rabitqlib  # noqa: F401
    except ImportError:
        return []
    from bench.peers import RabitqlibPeer

    methods = []
    for bits in (4, 1):
        peer = RabitqlibPeer(base.shape[1], 0, bits, threads)
        peer.build(base, "ip")
        methods.append(Method(f"rabitqlib {bits}-bit", peer.bytes_per_vector, peer.search))
    return methods


def path_rows(method: Method, queries: np.ndarray, k: int, rounds: int) -> list[dict]:
    """``method`` (a vecstore one) timed on every compiled scan path and on numpy, best of
    ``rounds`` rounds of single queries."""
    rows = []
    previous = os.environ.get(PATH_VARIABLE)
    try:
        for path in vecstore.cpu_features()["paths"]:
            os.environ[PATH_VARIABLE] = path
            method.search(queries[:1], k)
            count = queries.shape[0] if path != "numpy" else min(20, queries.shape[0])
            best = max(timed_single(method.search, queries[:count], k)[0]
                       for _ in range(rounds))
            rows.append({"method": method.name, "path": path, "single_qps": best})
    finally:
        if previous is None:
            os.environ.pop(PATH_VARIABLE, None)
        else:
            os.environ[PATH_VARIABLE] = previous
    return rows


def measure(dataset: Dataset, *, codecs: list[str], k: int, single: int, batch: int,
            directory: Path, peers: bool, threads: int = 1, rounds: int = 5,
            tile: int | None = None, paths: bool = True) -> tuple[list[dict], list[dict]]:
    """Rows per method (QPS single and batched, best of ``rounds`` interleaved rounds;
    recall@k; bytes per vector; GB/s of codes for vecstore) and rows per scan path."""
    base = tiled(dataset.base, tile)
    queries = dataset.queries
    bandwidth = read_bandwidth()
    vecstore.set_num_threads(threads)
    dbs = []
    with threadpool_limits(limits=threads):
        try:
            methods, dbs = vecstore_methods(base, codecs, directory)
            if peers:
                methods += faiss_methods(base, threads) + turbovec_methods(base)
                methods += rabitqlib_methods(base, threads)
            for method in methods:
                method.search(queries[:1], k)
            for _ in range(rounds):
                for method in methods:
                    with threadpool_limits(limits=method.blas_threads or threads):
                        qps, method.ids = timed_single(method.search, queries[:single], k)
                    method.single.append(qps)
            for _ in range(max(1, rounds // 2)):
                for method in methods:
                    with threadpool_limits(limits=method.blas_threads or threads):
                        method.batch.append(timed_batch(method.search, queries[:batch], k))
            with threadpool_limits(limits=1):
                by_path = path_rows(methods[0], queries[:single], k, 3) if paths and codecs \
                    else []
        finally:
            for db in dbs:
                db.close()
            shutil.rmtree(directory, ignore_errors=True)
            vecstore.set_num_threads(vecstore.cpu_features()["threads"])
    rows = []
    for method in methods:
        row = {"method": method.name, "bytes_per_vector": method.bytes_per_vector,
               "single_qps": max(method.single), "single_qps_median": float(
                   np.median(method.single)), "batch_qps": max(method.batch),
               "batch_size": batch, "rounds": rounds, "threads": threads,
               "n": base.shape[0], "read_gb_per_s": bandwidth / 1e9,
               "path": vecstore.cpu_features()["path"]}
        if tile is None:
            truth = live_truth(dataset, method.deleted, k)
            row["recall_single"] = recall_at_k(method.ids, truth[:single], k)
        if "code_bytes" in method.info:
            row["single_gb_per_s"] = method.info["code_bytes"] * row["single_qps"] / 1e9
            row["layout"] = method.info["layout"]
        rows.append(row)
    return rows, by_path
