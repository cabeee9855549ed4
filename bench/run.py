"""The main benchmark: index a data set with codecs and peers, measure recall and speed."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import vecstore
from bench.datasets import Dataset
from bench.metrics import recall_1_at, recall_at
from bench.peers import LIBRARIES, library_version
from bench.schema import RECALL_METRICS
from vecstore.codecs import make_codec

DEFAULT_CODECS = "flat,tq1,tq2,tq3,tq4,tq2c,tq4c,tq2-prod,tq3-prod,tq4-prod"
# Baselines added to the default run when the installed vecstore has them and they are
# quick to train; ``{half}`` is d // 2.
DEFAULT_BASELINES = ("mib", "mib2", "fp8-pca{half}")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESCORE_STORAGE = "float16"


def machine_info() -> dict:
    """Where a result was measured: host, CPU, core count and library versions."""
    return {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "vecstore": vecstore.__version__,
        **{library: library_version(library) for library in LIBRARIES},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def default_codecs(dim: int) -> list[str]:
    """The codecs of a plain ``python -m bench run`` for vectors of dimension ``dim``.

    `DEFAULT_CODECS`, then each of `DEFAULT_BASELINES` that the installed vecstore lists in
    ``available_specs`` for this dimension.
    """
    specs = DEFAULT_CODECS.split(",")
    available = set(vecstore.available_specs(dim, baselines=True))
    baselines = [spec.format(half=dim // 2) for spec in DEFAULT_BASELINES]
    return specs + [spec for spec in baselines if spec in available]


def codec_family(spec: str) -> str:
    """The family of a codec spec, one line in the plots.

    ``tq4`` -> ``tq``, ``tq3-prod`` -> ``tq-prod``, ``tq4c`` -> ``tq-corrected``,
    ``pq48x8`` -> ``pq``, ``pq96x4`` -> ``pq-4bit``, ``mib2`` -> ``mib``, ``fp8-pca192`` ->
    ``fp8``; any other spec with its digits removed.
    """
    name = spec.strip().lower()
    if re.fullmatch(r"tq\d", name):
        return "tq"
    if re.fullmatch(r"tq\d-prod|tq\d\+qjl", name):
        return "tq-prod"
    if re.fullmatch(r"tq\dc", name):
        return "tq-corrected"
    if match := re.fullmatch(r"pq\d+x(\d+)", name):
        return "pq" if match[1] == "8" else f"pq-{match[1]}bit"
    if name.startswith("mib"):
        return "mib-hamming" if name.endswith("-hamming") else "mib"
    if match := re.match(r"fp\d+", name):
        return match[0]
    return re.sub(r"\d+", "", name)


def check_rescore_support() -> None:
    """Raise RuntimeError unless the installed vecstore can rescore.

    Rescoring needs ``Database.create_collection(..., store_vectors=...)`` and
    ``Collection.search(..., rescore=...)``.
    """
    checks = ((vecstore.Database.create_collection, "store_vectors", "Database.create_collection"),
              (vecstore.Collection.search, "rescore", "Collection.search"))
    for function, parameter, where in checks:
        if parameter not in inspect.signature(function).parameters:
            raise RuntimeError(
                f"this vecstore ({vecstore.__version__}) cannot rescore: {where} has no "
                f"{parameter!r} parameter; run without --rescore"
            )


class VecstoreMethod:
    """One codec in a fresh in-memory vecstore collection, with the peers' interface.

    ``rescore`` r > 1 keeps float16 copies of the vectors and reranks k * r candidates.
    """

    kind = "vecstore"

    def __init__(self, spec: str, dim: int, seed: int = 0, rescore: int | None = None):
        self.name = spec
        self.family = codec_family(spec)
        self.dim = dim
        self.seed = seed
        self.seeded = spec.strip().lower() != "flat"
        self.rescore = rescore
        self.params = {"store_vectors": RESCORE_STORAGE} if rescore else {}
        self._db = None
        self._collection = None

    def build(self, base: np.ndarray, metric: str) -> float:
        """Add ``base`` (n, d) float32 to a new collection; seconds taken, training included."""
        extra = {"store_vectors": RESCORE_STORAGE} if self.rescore else {}
        self._db = vecstore.open()
        self._collection = self._db.create_collection(
            "bench", dim=self.dim, metric=metric, codec=self.name, seed=self.seed, **extra
        )
        start = time.perf_counter()
        self._collection.add(base)
        return time.perf_counter() - start

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Ids (nq, k) int64 found for queries (nq, d)."""
        extra = {"rescore": self.rescore} if self.rescore else {}
        return self._collection.search(queries, k=k, **extra).ids

    @property
    def bytes_per_vector(self) -> int:
        """The codec's code size: bytes scanned per vector, norms and scales included."""
        return self._collection.code_size

    @property
    def bits_per_dim(self) -> float:
        return self.bytes_per_vector * 8 / self.dim

    @property
    def stored_vector_bytes(self) -> int:
        """Bytes per vector kept for rescoring only (not scanned), 0 without rescoring."""
        total = getattr(self._collection, "bytes_per_vector", self.bytes_per_vector)
        return total - self.bytes_per_vector

    def close(self) -> None:
        """Drop the collection and its database."""
        if self._db is not None:
            self._db.close()
        self._db = self._collection = None


def run_method(
    make: Callable[[int], object],
    dataset: Dataset,
    *,
    metric: str,
    k: int,
    seeds: list[int],
    single_queries: int,
    on_seed_done: Callable[[str], None] | None = None,
) -> dict:
    """Build and search one method for each seed; returns one result row (unstamped).

    Parameters
    ----------
    make : seed -> an unbuilt method (a `VecstoreMethod` or a ``bench.peers.Peer``).
    dataset, metric, k : what is searched; recall is measured against the exact neighbours.
    seeds : the seeds; a method whose ``seeded`` is False runs with the first one only.
    single_queries : queries timed one at a time (first seed only), >= 1.
    on_seed_done : called with the method name after each seed.
    """
    if single_queries < 1:
        raise ValueError(f"single_queries must be >= 1, got {single_queries}")
    truth = dataset.ground_truth(metric)
    first = make(seeds[0])
    seeds = list(seeds) if first.seeded else list(seeds[:1])
    recalls: dict[str, list[float]] = {name: [] for name in RECALL_METRICS}
    for seed in seeds:
        method = first if seed == seeds[0] else make(seed)
        try:
            build_s = method.build(dataset.base, metric)
            start = time.perf_counter()
            ids = method.search(dataset.queries, k)
            batch_s = time.perf_counter() - start
            if method is first:
                latencies = _single_query_latencies(method, dataset.queries[:single_queries], k)
                row = _timing_fields(method, dataset, metric, k, build_s, batch_s, latencies)
            for name, value in _recalls(ids, truth, k).items():
                recalls[name].append(value)
        finally:
            method.close()
        if on_seed_done is not None:
            on_seed_done(method.name)
    row["seeds"] = seeds
    for name, values in recalls.items():
        mean = round(float(np.mean(values)), 4)
        row[name] = row[f"{name}_mean"] = mean
        row[f"{name}_std"] = round(float(np.std(values)), 4)
        row[f"{name}_seeds"] = [round(v, 4) for v in values]
    return row


def _single_query_latencies(method, queries: np.ndarray, k: int) -> np.ndarray:
    """Seconds per one-query search, (len(queries),) float64."""
    latencies = np.empty(queries.shape[0])
    for i in range(queries.shape[0]):
        start = time.perf_counter()
        method.search(queries[i : i + 1], k)
        latencies[i] = time.perf_counter() - start
    return latencies


def _timing_fields(method, dataset: Dataset, metric: str, k: int, build_s: float,
                   batch_s: float, latencies: np.ndarray) -> dict:
    n_base, n_queries = int(dataset.base.shape[0]), int(dataset.queries.shape[0])
    latencies_ms = latencies * 1e3
    row = {
        "dataset": dataset.name,
        "metric": metric,
        "method": method.name,
        "family": method.family,
        "kind": getattr(method, "kind", "peer"),
        "n_base": n_base,
        "n_queries": n_queries,
        "dim": dataset.dim,
        "k": k,
        "rescore": getattr(method, "rescore", None),
        "bits_per_dim": round(float(method.bits_per_dim), 4),
        "bytes_per_vector": method.bytes_per_vector,
        "build_s": round(build_s, 4),
        "encode_vectors_per_s": round(n_base / build_s, 1),
        "qps_batch": round(n_queries / batch_s, 1),
        "qps_single": round(len(latencies) / float(latencies.sum()), 1),
        "latency_p50_ms": round(float(np.percentile(latencies_ms, 50)), 3),
        "latency_p99_ms": round(float(np.percentile(latencies_ms, 99)), 3),
    }
    if method.params:
        row["params"] = method.params
    if getattr(method, "stored_vector_bytes", 0):
        row["stored_vector_bytes"] = method.stored_vector_bytes
    return row


def _recalls(ids: np.ndarray, truth: np.ndarray, k: int) -> dict[str, float]:
    width = min(k, 10)
    return {
        "recall_at_1": recall_at(ids, truth, 1),
        "recall_at_10": recall_at(ids, truth, width),
        "recall_1_at_10": recall_1_at(ids, truth, width),
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
    """A plain-text table of the main columns; recall@10 shows mean ± std over seeds, and a
    rescored method's name ends with ``+r<R>``."""
    names = [row["method"] + (f"+r{row['rescore']}" if row["rescore"] else "") for row in rows]
    width = max([len("method"), *map(len, names)])
    header = (f"{'method':<{width}} {'bits/dim':>8} {'bytes/vec':>9} {'recall@10':>15} "
              f"{'recall@1':>8} {'seeds':>5} {'build s':>8} {'QPS batch':>10} {'QPS single':>10}")
    lines = [header, "-" * len(header)]
    for name, row in zip(names, rows, strict=True):
        recall = f"{row['recall_at_10']:.4f}"
        if len(row["seeds"]) > 1:
            recall += f"±{row['recall_at_10_std']:.4f}"
        lines.append(
            f"{name:<{width}} {row['bits_per_dim']:>8.2f} "
            f"{row['bytes_per_vector']:>9g} {recall:>15} {row['recall_at_1']:>8.4f} "
            f"{len(row['seeds']):>5d} {row['build_s']:>8.2f} {row['qps_batch']:>10.1f} "
            f"{row['qps_single']:>10.1f}"
        )
    return "\n".join(lines)


def write_results(rows: list[dict], name: str, out_dir: Path = RESULTS_DIR,
                  check: Callable[[dict], dict] | None = None) -> Path:
    """Write the rows, stamped with date and machine, to a new JSON-lines file.

    ``check`` (e.g. ``bench.schema.validate_row``) is applied to each stamped row first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    path = out_dir / f"{name}-{now:%Y%m%dT%H%M%SZ}.jsonl"
    stamp = {"date": now.isoformat(timespec="seconds"), **machine_info()}
    stamped = [{**row, **stamp} for row in rows]
    if check is not None:
        for row in stamped:
            check(row)
    with path.open("w") as f:
        for row in stamped:
            f.write(json.dumps(row) + "\n")
    return path
