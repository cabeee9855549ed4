"""Storage benchmark: insert throughput under each durability mode and reopen time.

Base vectors are a real set tiled to the requested size, each copy perturbed by a little
seeded noise so no two rows are equal (speed does not depend on realism; recall is not
measured here).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import vecstore
from bench.datasets import Dataset

NOISE = 0.01
COLLECTION = "bench"


def tiled_batch(base: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start..stop-1 (n, d) float32 of the base set tiled with seeded noise."""
    rows = base[np.arange(start, stop) % base.shape[0]].astype(np.float32)
    noise = np.random.default_rng(start).standard_normal(rows.shape, dtype=np.float32)
    return rows + NOISE * noise


def measure_inserts(dataset: Dataset, directory: Path, *, n: int, batch: int, codec: str,
                    durability: str) -> dict:
    """Add n rows in batches into a new database at ``directory``, then close it."""
    shutil.rmtree(directory, ignore_errors=True)
    add_s = 0.0
    db = vecstore.open(directory, durability=durability)
    collection = db.create_collection(COLLECTION, dim=dataset.dim, metric="ip", codec=codec)
    for start in tqdm(range(0, n, batch), desc=f"insert {durability}", unit="batch",
                      file=sys.stderr, leave=False):
        x = tiled_batch(dataset.base, start, min(n, start + batch))
        t0 = time.perf_counter()
        collection.add(x, ids=np.arange(start, start + x.shape[0]))
        add_s += time.perf_counter() - t0
    segments = collection.stats()["segments"]
    t0 = time.perf_counter()
    db.close()
    close_s = time.perf_counter() - t0
    return {
        "kind": "insert", "durability": durability, "codec": codec, "n": n, "batch": batch,
        "dim": dataset.dim, "add_s": add_s, "add_vectors_per_s": n / add_s,
        "close_s": close_s, "insert_vectors_per_s": n / (add_s + close_s),
        "segments_before_close": segments, "disk_bytes": _disk_bytes(directory),
    }


def measure_reopen(directory: Path, queries: np.ndarray, *, repeat: int) -> dict:
    """Time ``vecstore.open`` plus ``get_collection`` (verification and replay included)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        db = vecstore.open(directory)
        collection = db.get_collection(COLLECTION)
        times.append(time.perf_counter() - t0)
        rows = len(collection)
        stats = collection.stats()
        collection.search(queries[:1], 10)
        db.close()
    return {"kind": "reopen", "rows": rows, "segments": stats["segments"],
            "log_rows": stats["memtable_rows"], "open_s": min(times), "open_s_all": times}


_CRASHING_WRITER = """
import os, sys
import numpy as np
import vecstore
from bench.datasets import load_dataset
from bench.storage import COLLECTION, tiled_batch

directory, dataset_name, start, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
base = load_dataset(dataset_name).base
db = vecstore.open(directory, segment_bytes=1 << 40)
collection = db.get_collection(COLLECTION)
for first in range(start, start + count, 10000):
    x = tiled_batch(base, first, min(start + count, first + 10000))
    collection.add(x, ids=np.arange(first, first + x.shape[0]))
os._exit(0)
"""


def append_unflushed(directory: Path, dataset_name: str, *, start: int, count: int) -> None:
    """Add ``count`` rows from a process that exits without closing, so they stay in the log."""
    subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(directory), dataset_name,
                    str(start), str(count)], check=True, cwd=Path(__file__).resolve().parent.parent)


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
