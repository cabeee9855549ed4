"""CPU search benchmark: vecstore through ``Collection.search`` on an on-disk collection
laid out as in use (several segments, a memtable, deleted rows) beside faiss, in one run.

Every method is timed on one thread (``vecstore.set_num_threads(1)``, one BLAS thread,
``faiss.omp_set_num_threads(1)``), with single queries (one call per query) and a batch
of queries in one call, and its recall@k against the set's exact ground truth. The
machine's single-core read bandwidth (a numpy sum over a large array) is measured in the
same run, to put the bytes of codes scanned per second beside it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import vecstore
from bench.datasets import Dataset

COLLECTION = "bench"
# The layout: this many segments of the first 95% of rows, the rest in the memtable,
# and this fraction of rows deleted.
SEGMENTS = 4
MEMTABLE_FRACTION = 0.05
DELETED_FRACTION = 0.01


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


def timed_single(search, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Queries per second of one call per query, and the ids (nq, k)."""
    ids = []
    start = time.perf_counter()
    for q in queries:
        ids.append(search(q[None, :], k))
    return len(queries) / (time.perf_counter() - start), np.concatenate(ids)


def timed_batch(search, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Queries per second of one call for all queries, and the ids (nq, k)."""
    start = time.perf_counter()
    ids = search(queries, k)
    return len(queries) / (time.perf_counter() - start), ids


def build_collection(directory: Path, dataset: Dataset, codec: str):
    """An on-disk collection of the set: SEGMENTS segments, a memtable, deleted rows.
    Returns the database, the collection and the ids deleted."""
    shutil.rmtree(directory, ignore_errors=True)
    n = dataset.base.shape[0]
    sealed = int(n * (1 - MEMTABLE_FRACTION))
    db = vecstore.open(directory, durability="batch", merge_policy=None, device="cpu")
    collection = db.create_collection(COLLECTION, dim=dataset.dim, metric="ip", codec=codec)
    for part in np.array_split(np.arange(sealed), SEGMENTS):
        collection.add(dataset.base[part], ids=part)
        collection.flush()
    collection.add(dataset.base[sealed:], ids=np.arange(sealed, n))
    deleted = np.random.default_rng(0).choice(n, int(n * DELETED_FRACTION), replace=False)
    collection.delete(deleted)
    return db, collection, deleted


def live_truth(dataset: Dataset, deleted: np.ndarray, k: int) -> np.ndarray:
    """The exact top k of the live rows, (nq, k) ids, from the set's ground truth."""
    gone = set(deleted.tolist())
    truth = dataset.ground_truth("ip")
    return np.array([[i for i in row if i not in gone][:k] for row in truth])


def measure(dataset: Dataset, *, codecs: list[str], k: int, single: int, batch: int,
            directory: Path, peers: bool) -> list[dict]:
    """One row per method: QPS single and batched, recall@k, bytes per vector."""
    rows = []
    queries = dataset.queries
    bandwidth = read_bandwidth()
    vecstore.set_num_threads(1)
    with threadpool_limits(limits=1):
        for codec in codecs:
            db, collection, deleted = build_collection(directory / codec, dataset, codec)
            truth = live_truth(dataset, deleted, k)

            def search(q, k, collection=collection):
                return collection.search(q, k).ids

            search(queries[:1], k)
            single_qps, single_ids = timed_single(search, queries[:single], k)
            batch_qps, batch_ids = timed_batch(search, queries[:batch], k)
            code_bytes = collection.code_size * len(collection)
            rows.append({
                "method": f"vecstore {codec}", "bytes_per_vector": collection.code_size,
                "single_qps": single_qps, "batch_qps": batch_qps,
                "recall_single": recall_at_k(single_ids, truth[:single], k),
                "recall_batch": recall_at_k(batch_ids, truth[:batch], k),
                "single_gb_per_s": code_bytes * single_qps / 1e9,
                "read_gb_per_s": bandwidth / 1e9, "path": vecstore.cpu_features()["path"],
                "layout": f"{SEGMENTS} segments + memtable, {deleted.size} deleted",
            })
            db.close()
            shutil.rmtree(directory / codec, ignore_errors=True)
        if peers:
            rows += measure_faiss(dataset, k=k, single=single, batch=batch)
            rows += measure_turbovec(dataset, k=k, single=single, batch=batch)
    vecstore.set_num_threads(vecstore.cpu_features()["threads"])
    return rows


def measure_turbovec(dataset: Dataset, *, k: int, single: int, batch: int) -> list[dict]:
    """turbovec 4-bit and 2-bit (uncalibrated, its default), one thread (RAYON_NUM_THREADS
    is set to 1 by ``python -m bench cpu`` before turbovec loads); none if it is not
    installed (the peers extra)."""
    try:
        import turbovec  # noqa: F401
    except ImportError:
        return []
    from bench.peers import TurboVecPeer

    truth = dataset.ground_truth("ip")
    rows = []
    for bits in (4, 2):
        peer = TurboVecPeer(dataset.dim, 0, bits, calibrated=False)
        peer.build(dataset.base, "ip")
        single_qps, single_ids = timed_single(peer.search, dataset.queries[:single], k)
        batch_qps, batch_ids = timed_batch(peer.search, dataset.queries[:batch], k)
        rows.append({"method": f"turbovec {bits}-bit", "bytes_per_vector": peer.bytes_per_vector,
                     "single_qps": single_qps, "batch_qps": batch_qps,
                     "recall_single": recall_at_k(single_ids, truth[:single], k),
                     "recall_batch": recall_at_k(batch_ids, truth[:batch], k)})
    return rows


def measure_faiss(dataset: Dataset, *, k: int, single: int, batch: int) -> list[dict]:
    """faiss IndexFlatIP and IndexPQFastScan at the bytes of tq4 and tq2, one thread."""
    import faiss

    faiss.omp_set_num_threads(1)
    d = dataset.dim
    indexes = {"faiss IndexFlatIP": (faiss.IndexFlatIP(d), 4 * d)}
    for m in (d, d // 2):   # the bytes of tq4 and tq2 codes
        indexes[f"faiss PQ{m}x4fs"] = (faiss.IndexPQFastScan(d, m, 4, faiss.METRIC_INNER_PRODUCT),
                                       m // 2)
    truth = dataset.ground_truth("ip")
    rows = []
    for name, (index, nbytes) in indexes.items():
        if not index.is_trained:
            index.train(dataset.base[:65536])
        index.add(dataset.base)

        def search(q, k, index=index):
            return index.search(np.ascontiguousarray(q), k)[1]

        single_qps, single_ids = timed_single(search, dataset.queries[:single], k)
        batch_qps, batch_ids = timed_batch(search, dataset.queries[:batch], k)
        rows.append({"method": name, "bytes_per_vector": nbytes, "single_qps": single_qps,
                     "batch_qps": batch_qps,
                     "recall_single": recall_at_k(single_ids, truth[:single], k),
                     "recall_batch": recall_at_k(batch_ids, truth[:batch], k)})
    return rows
