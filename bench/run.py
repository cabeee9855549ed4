"""The main benchmark: index a data set with several codecs, measure recall and speed."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import vecstore
from bench.datasets import Dataset
from bench.metrics import recall_1_at, recall_at
from vecstore.codecs import make_codec
from vecstore.codecs.base import bits_per_dim

DEFAULT_CODECS = "flat,tq1,tq2,tq3,tq4,tq2-prod,tq3-prod,tq4-prod"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """Where a result was measured: host, CPU, core count and library versions."""
    return {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "vecstore": vecstore.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_codec(dataset: Dataset, spec: str, *, metric: str, k: int, seed: int,
              single_queries: int) -> dict:
    """Build one collection with ``spec`` and measure it; returns one result row."""
    truth = dataset.ground_truth(metric)
    with vecstore.open() as db:
        collection = db.create_collection("bench", dim=dataset.dim, metric=metric, codec=spec,
                                          seed=seed)
        start = time.perf_counter()
        collection.add(dataset.base)
        build_s = time.perf_counter() - start

        start = time.perf_counter()
        result = collection.search(dataset.queries, k=k)
        batch_s = time.perf_counter() - start

        latencies = []
        for query in dataset.queries[:single_queries]:
            start = time.perf_counter()
            collection.search(query, k=k)
            latencies.append(time.perf_counter() - start)
        codec = collection.codec
    latencies_ms = np.array(latencies) * 1e3
    return {
        "dataset": dataset.name,
        "metric": metric,
        "codec": spec,
        "seed": seed,
        "n_base": int(dataset.base.shape[0]),
        "n_queries": int(dataset.queries.shape[0]),
        "dim": dataset.dim,
        "k": k,
        "bits_per_dim": round(bits_per_dim(codec), 4),
        "bytes_per_vector": codec.code_size,
        "build_s": round(build_s, 4),
        "encode_vectors_per_s": round(dataset.base.shape[0] / build_s, 1),
        "qps_batch": round(dataset.queries.shape[0] / batch_s, 1),
        "qps_single": round(len(latencies) / sum(latencies), 1),
        "latency_p50_ms": round(float(np.percentile(latencies_ms, 50)), 3),
        "latency_p99_ms": round(float(np.percentile(latencies_ms, 99)), 3),
        "recall_at_1": round(recall_at(result.ids, truth, 1), 4),
        "recall_at_10": round(recall_at(result.ids, truth, min(k, 10)), 4),
        "recall_1_at_10": round(recall_1_at(result.ids, truth, min(k, 10)), 4),
    }


def measure_encode(dataset: Dataset, spec: str, *, seed: int, repeat: int) -> dict:
    """Encoding throughput of ``spec`` over the whole base set, best of ``repeat`` passes."""
    codec = make_codec(spec, dim=dataset.dim, seed=seed)
    codec.train(dataset.base)
    codec.encode(dataset.base[:64])
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        codec.encode(dataset.base)
        best = min(best, time.perf_counter() - start)
    return {
        "dataset": dataset.name,
        "codec": spec,
        "n_base": int(dataset.base.shape[0]),
        "dim": dataset.dim,
        "encode_s": round(best, 4),
        "encode_vectors_per_s": round(dataset.base.shape[0] / best, 1),
    }


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the main columns."""
    header = (f"{'codec':<10} {'bits/dim':>8} {'bytes/vec':>9} {'recall@10':>9} "
              f"{'recall@1':>8} {'build s':>8} {'QPS batch':>10} {'QPS single':>10}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['codec']:<10} {row['bits_per_dim']:>8.2f} {row['bytes_per_vector']:>9d} "
            f"{row['recall_at_10']:>9.4f} {row['recall_at_1']:>8.4f} {row['build_s']:>8.2f} "
            f"{row['qps_batch']:>10.1f} {row['qps_single']:>10.1f}"
        )
    return "\n".join(lines)


def write_results(rows: list[dict], name: str, out_dir: Path = RESULTS_DIR) -> Path:
    """Write the rows, stamped with date and machine, to a new JSON-lines file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    path = out_dir / f"{name}-{now:%Y%m%dT%H%M%SZ}.jsonl"
    stamp = {"date": now.isoformat(timespec="seconds"), **machine_info()}
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps({**row, **stamp}) + "\n")
    return path
