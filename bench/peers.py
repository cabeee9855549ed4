"""Other libraries' exhaustive (or exhaustively searched) indexes, behind one interface.

A peer runs in the same process on the same data as vecstore's codecs. Peers of a library
that is not importable, or that cannot serve a metric or dimension, are skipped with a note.

- faiss: exact ``IndexFlat``, ``IndexScalarQuantizer`` (8 bit, 4 bit, float16), ``IndexPQ``
  and ``IndexPQFastScan`` with code sizes near those of vecstore's tq1, tq2 and tq4,
  ``IndexBinaryFlat`` on bits against per-dimension medians (Hamming ranking), and
  ``IndexRaBitQ`` at 1, 2 and 4 bits behind a seeded random rotation, queries quantized to
  8 bits.
- turbovec: ``TurboQuantIndex`` at 2, 3 and 4 bits, plain and with its TQ+ calibration
  fitted on 1024 random base rows. It ranks by inner product only (no l2) and needs d % 8 == 0.
- rabitqlib: ``IvfIndex`` with a single list whose centroid is the base mean, searched with
  nprobe = 1: every vector is scanned, as in a flat index. Its random rotation cannot be
  seeded, so each seed is an independent build. Dimensions below 64 are zero-padded to 64,
  which keeps inner products and distances.

Metrics: "ip" and "l2" map to each library's inner product and Euclidean metrics; "cosine"
normalizes base and queries, then uses the inner product.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

LIBRARIES = ("faiss", "turbovec", "rabitqlib")
_DISTRIBUTIONS = {
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss"),
    "turbovec": ("turbovec",),
    "rabitqlib": ("rabitqlib",),
}
_INSTALL_HINTS = {"faiss": "faiss-cpu", "turbovec": "turbovec", "rabitqlib": "rabitqlib"}

RABITQ_QUERY_BITS = 8
TURBOVEC_CALIBRATION_ROWS = 1024
RABITQLIB_MIN_DIM = 64


def library_version(library: str) -> str | None:
    """The installed version of a peer library, None when it is not installed."""
    for distribution in _DISTRIBUTIONS[library]:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class Peer(ABC):
    """One index of another library, built once for one seed.

    Attributes
    ----------
    name : the method name in result rows, e.g. ``"faiss-rabitq4"``.
    family : the method family in result rows and plots, e.g. ``"faiss-rabitq"``.
    library : the library it comes from, one of `LIBRARIES`.
    dim : vector dimension d.
    seed : the seed of its random choices (rotation, training sample, k-means).
    seeded : True when a build depends on its seed (or is random), so that runs over
        several seeds differ; False for deterministic peers, which run once.
    params : its settings, recorded in the result row.
    """

    library: str = ""
    seeded: bool = False

    def __init__(self, name: str, family: str, dim: int, seed: int = 0):
        self.name = name
        self.family = family
        self.dim = dim
        self.seed = seed
        self.params: dict = {}
        self._metric = "ip"
        self._index = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, seed={self.seed})"

    def build(self, base: np.ndarray, metric: str) -> float:
        """Index ``base`` (n, d) float32 for ``metric``; returns the seconds it took."""
        self._metric = metric
        x = _metric_vectors(base, metric)
        start = time.perf_counter()
        self._build(x, metric)
        return time.perf_counter() - start

    def close(self) -> None:
        """Release the index."""
        self._index = None

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Ids (nq, k) int64 of the k best base rows per query (nq, d), best first; -1 pads."""
        ids = np.asarray(self._search(_metric_vectors(queries, self._metric), k))
        ids = ids.astype(np.int64)
        if ids.shape[1] < k:
            ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
        return ids

    @property
    def bits_per_dim(self) -> float:
        """Stored bits per dimension, per-vector factors included."""
        return self.bytes_per_vector * 8 / self.dim

    @property
    @abstractmethod
    def bytes_per_vector(self) -> float:
        """Bytes stored per vector: codes plus per-vector factors (norms, scales), no ids."""

    @abstractmethod
    def _build(self, x: np.ndarray, metric: str) -> None:
        """Index ``x`` (n, d) float32, already normalized for cosine."""

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Ids (nq, <=k) integers for queries (nq, d) float32, already normalized for cosine."""


@dataclass(frozen=True)
class PeerSpec:
    """A peer by name, with a function building an unbuilt instance for a seed."""

    name: str
    library: str
    make: Callable[[int], Peer]


def peer_specs(requested: list[str], dim: int, metric: str,
               threads: int | None = None) -> tuple[list[PeerSpec], list[str]]:
    """The peers to run, and a note for each one skipped.

    Parameters
    ----------
    requested : library names (all their peers) or peer names, e.g.
        ``["faiss", "turbovec4"]``.
    dim, metric : the data set's dimension and the metric searched.
    threads : threads for libraries that take a thread count (rabitqlib); default all cores.

    Raises
    ------
    ValueError : a name is neither a library nor a peer of an importable library.
    """
    catalogue: dict[str, list[PeerSpec]] = {}
    notes: list[str] = []
    for library in LIBRARIES:
        try:
            importlib.import_module(library)
        except ImportError:
            if any(name.startswith(library) for name in requested):
                notes.append(f"{library} is not importable: its peers are skipped "
                             f"(pip install {_INSTALL_HINTS[library]})")
            continue
        specs, library_notes = _CATALOGUES[library](dim, metric, threads)
        catalogue[library] = specs
        if any(name.startswith(library) for name in requested):
            notes += library_notes
    chosen: list[PeerSpec] = []
    by_name = {spec.name: spec for specs in catalogue.values() for spec in specs}
    for name in requested:
        library = next((lib for lib in LIBRARIES if name.startswith(lib)), None)
        if name in catalogue:
            chosen += catalogue[name]
        elif name in by_name:
            chosen.append(by_name[name])
        elif library is None or catalogue.get(library):
            known = ", ".join([*LIBRARIES, *by_name])
            raise ValueError(f"unknown peer {name!r}; known: {known}")
    unique = {spec.name: spec for spec in chosen}
    return list(unique.values()), notes


def _metric_vectors(x: np.ndarray, metric: str) -> np.ndarray:
    """(n, d) C-contiguous float32, rows normalized for cosine."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0))
    return x


def _nearest_divisor(dim: int, target: float) -> int:
    """The divisor of ``dim`` nearest ``target``, the smaller one on a tie."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - target), m))


def tq_code_bytes(dim: int, bits: int) -> int:
    """Bytes of a vecstore ``tq{bits}`` code: packed coordinates plus a float32 norm."""
    return -(-dim * bits // 8) + 4


# --- faiss ---------------------------------------------------------------------------------


def _faiss_one_blas_thread():
    """A context running BLAS on one thread: faiss parallelizes with OpenMP, and BLAS
    threads on top of it only oversubscribe the cores."""
    return _thread_controller().limit(limits=1, user_api="blas")


@lru_cache
def _thread_controller() -> ThreadpoolController:
    """The thread pools loaded once faiss is imported (found once: finding them costs
    about half a millisecond, as much as a small search)."""
    importlib.import_module("faiss")
    return ThreadpoolController()


class FaissPeer(Peer):
    """A faiss ``Index`` made by ``make_index(dim, faiss_metric, seed)``."""

    library = "faiss"

    def __init__(self, name: str, family: str, dim: int, seed: int,
                 make_index: Callable, *, seeded: bool, params: dict):
        super().__init__(name, family, dim, seed)
        self.seeded = seeded
        self.params = params
        self._make_index = make_index
        self._index = None

    @property
    def bytes_per_vector(self) -> float:
        if self._index is None:
            raise RuntimeError(f"{self.name} is not built yet")
        return float(self._index.sa_code_size())

    def _build(self, x: np.ndarray, metric: str) -> None:
        import faiss

        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        with _faiss_one_blas_thread():
            index = self._make_index(self.dim, faiss_metric, self.seed)
            if not index.is_trained:
                index.train(x)
            index.add(x)
        self._index = index

    def _search(self, queries: np.ndarray, k: int) -> np.ndarray:
        with _faiss_one_blas_thread():
            return self._index.search(queries, k)[1]


class FaissBinaryMedianPeer(Peer):
    """faiss ``IndexBinaryFlat`` over one bit per dimension: above the base median or not.

    Ranks by Hamming distance whatever the metric, so it is a ranking proxy, not an estimate
    of inner products or distances.
    """

    library = "faiss"

    def __init__(self, dim: int, seed: int = 0):
        super().__init__("faiss-binary-median", "faiss-binary", dim, seed)
        self.params = {"index": "IndexBinaryFlat", "threshold": "per-dimension median"}
        self._index = None
        self._medians = None

    @property
    def bytes_per_vector(self) -> float:
        return float(-(-self.dim // 8))

    def _bits(self, x: np.ndarray) -> np.ndarray:
        return np.packbits(x > self._medians, axis=1)

    def _build(self, x: np.ndarray, metric: str) -> None:
        import faiss

        self._medians = np.median(x, axis=0).astype(np.float32)
        self._index = faiss.IndexBinaryFlat(8 * int(self.bytes_per_vector))
        self._index.add(self._bits(x))

    def _search(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self._index.search(self._bits(queries), k)[1]


def _faiss_flat(dim, metric, seed):
    import faiss

    return faiss.IndexFlat(dim, metric)


def _faiss_sq(kind: str) -> Callable:
    def make(dim, metric, seed):
        import faiss

        return faiss.IndexScalarQuantizer(dim, getattr(faiss.ScalarQuantizer, kind), metric)

    return make


def _faiss_pq(m: int, nbits: int, fast_scan: bool) -> Callable:
    def make(dim, metric, seed):
        import faiss

        cls = faiss.IndexPQFastScan if fast_scan else faiss.IndexPQ
        index = cls(dim, m, nbits, metric)
        index.pq.cp.seed = seed
        return index

    return make


def _faiss_rabitq(bits: int) -> Callable:
    def make(dim, metric, seed):
        import faiss

        rotation = faiss.RandomRotationMatrix(dim, dim)
        rotation.init(seed)
        rabitq = faiss.IndexRaBitQ(dim, metric, bits)
        rabitq.qb = RABITQ_QUERY_BITS
        return faiss.IndexPreTransform(rotation, rabitq)

    return make


def _faiss_catalogue(dim: int, metric: str, threads: int | None):
    specs: list[PeerSpec] = []

    def add(name, family, make_index, seeded, **params):
        specs.append(PeerSpec(name, "faiss", lambda seed: FaissPeer(
            name, family, dim, seed, make_index, seeded=seeded, params=params)))

    add("faiss-flat", "faiss-flat", _faiss_flat, False, index="IndexFlat")
    for name, kind in (("faiss-sq8", "QT_8bit"), ("faiss-sq4", "QT_4bit"),
                       ("faiss-fp16", "QT_fp16")):
        add(name, "faiss-sq", _faiss_sq(kind), False, index="IndexScalarQuantizer", qtype=kind)
    targets = [tq_code_bytes(dim, bits) for bits in (1, 2, 4)]
    for m in sorted({_nearest_divisor(dim, t) for t in targets}):
        add(f"faiss-pq{m}x8", "faiss-pq", _faiss_pq(m, 8, False), True,
            index="IndexPQ", M=m, nbits=8)
    for m in sorted({_nearest_divisor(dim, 2 * t) for t in targets}):
        add(f"faiss-pq{m}x4fs", "faiss-pq-fastscan", _faiss_pq(m, 4, True), True,
            index="IndexPQFastScan", M=m, nbits=4)
    specs.append(PeerSpec("faiss-binary-median", "faiss",
                          lambda seed: FaissBinaryMedianPeer(dim, seed)))
    for bits in (1, 2, 4):
        add(f"faiss-rabitq{bits}", "faiss-rabitq", _faiss_rabitq(bits), True,
            index="RandomRotationMatrix + IndexRaBitQ", nb_bits=bits, qb=RABITQ_QUERY_BITS)
    return specs, []


# --- turbovec ------------------------------------------------------------------------------


class TurboVecPeer(Peer):
    """turbovec ``TurboQuantIndex`` (inner product only), optionally with TQ+ calibration."""

    library = "turbovec"

    def __init__(self, dim: int, seed: int, bits: int, calibrated: bool):
        name = f"turbovec{bits}" + ("-tq+" if calibrated else "")
        super().__init__(name, "turbovec-tq+" if calibrated else "turbovec", dim, seed)
        self.bits = bits
        self.calibrated = calibrated
        self.seeded = calibrated
        self.params = {"bit_width": bits,
                       "calibration": f"{TURBOVEC_CALIBRATION_ROWS} random base rows"
                       if calibrated else "none"}
        self._index = None

    @property
    def bytes_per_vector(self) -> float:
        return _turbovec_bytes_per_vector(self.dim, self.bits)

    def _build(self, x: np.ndarray, metric: str) -> None:
        import turbovec

        index = turbovec.TurboQuantIndex(dim=self.dim, bit_width=self.bits)
        if self.calibrated:
            rng = np.random.default_rng(self.seed)
            rows = rng.choice(x.shape[0], min(TURBOVEC_CALIBRATION_ROWS, x.shape[0]),
                              replace=False)
            index.calibrate(x[np.sort(rows)])
        index.add(x)
        index.prepare()
        self._index = index

    def _search(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self._index.search(queries, k)[1]


@lru_cache
def _turbovec_bytes_per_vector(dim: int, bits: int) -> float:
    """Growth of turbovec's serialized index per added vector: codes in its SIMD layout plus
    the float32 per-vector scale (3-bit codes occupy 4-bit slots)."""
    import turbovec

    rng = np.random.default_rng(0)
    sizes = []
    for n in (256, 768):
        index = turbovec.TurboQuantIndex(dim=dim, bit_width=bits)
        index.add(rng.standard_normal((n, dim), dtype=np.float32))
        sizes.append(len(index.to_bytes()))
    return (sizes[1] - sizes[0]) / 512


def _turbovec_catalogue(dim: int, metric: str, threads: int | None):
    if metric == "l2":
        return [], ["turbovec ranks by inner product only: its peers are skipped for l2"]
    if dim % 8:
        return [], [f"turbovec needs d % 8 == 0: its peers are skipped for d = {dim}"]
    specs = [
        PeerSpec(f"turbovec{bits}" + ("-tq+" if calibrated else ""), "turbovec",
                 lambda seed, bits=bits, calibrated=calibrated:
                 TurboVecPeer(dim, seed, bits, calibrated))
        for calibrated in (False, True)
        for bits in (2, 3, 4)
    ]
    return specs, []


# --- rabitqlib -----------------------------------------------------------------------------


class RabitqlibPeer(Peer):
    """rabitqlib ``IvfIndex`` with one list, searched exhaustively (nprobe = 1 of 1)."""

    library = "rabitqlib"
    seeded = True

    def __init__(self, dim: int, seed: int, bits: int, threads: int | None):
        super().__init__(f"rabitqlib{bits}-ivf1", "rabitqlib", dim, seed)
        self.bits = bits
        self.threads = threads or os.cpu_count() or 1
        self.padded_dim = max(dim, RABITQLIB_MIN_DIM)
        self.params = {"index": "IvfIndex", "num_clusters": 1, "nprobe": 1, "nbits": bits,
                       "padded_dim": self.padded_dim, "num_threads": self.threads}
        self._index = None
        self._n = 0

    @property
    def bytes_per_vector(self) -> float:
        return _rabitqlib_bytes_per_vector(self.padded_dim, self.bits)

    def _padded(self, x: np.ndarray) -> np.ndarray:
        if self.padded_dim == self.dim:
            return x
        return np.pad(x, ((0, 0), (0, self.padded_dim - self.dim)))

    def _build(self, x: np.ndarray, metric: str) -> None:
        import rabitqlib

        x = self._padded(x)
        index = rabitqlib.IvfIndex(self.padded_dim, x.shape[0], 1, self.bits,
                                   metric="l2" if metric == "l2" else "ip")
        index.build(x, x.mean(axis=0, keepdims=True), np.zeros(x.shape[0], dtype=np.uint32),
                    num_threads=self.threads)
        self._index = index
        self._n = x.shape[0]

    def _search(self, queries: np.ndarray, k: int) -> np.ndarray:
        ids = self._index.search(self._padded(queries), k, 1, num_threads=self.threads)[0]
        ids = ids.astype(np.int64)
        ids[ids >= self._n] = -1
        return ids


@lru_cache
def _rabitqlib_bytes_per_vector(dim: int, bits: int) -> float:
    """Growth of rabitqlib's saved index per added vector, less its 4-byte id: the 1-bit code
    and its three float32 factors, plus for bits > 1 the extra code and two more factors."""
    import rabitqlib

    rng = np.random.default_rng(0)
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (256, 768):
            x = rng.standard_normal((n, dim), dtype=np.float32)
            index = rabitqlib.IvfIndex(dim, n, 1, bits, metric="l2")
            index.build(x, x.mean(axis=0, keepdims=True), np.zeros(n, dtype=np.uint32))
            path = Path(tmp) / f"probe-{n}"
            index.save(str(path))
            sizes.append(path.stat().st_size)
    return (sizes[1] - sizes[0]) / 512 - 4


def _rabitqlib_catalogue(dim: int, metric: str, threads: int | None):
    specs = [
        PeerSpec(f"rabitqlib{bits}-ivf1", "rabitqlib",
                 lambda seed, bits=bits: RabitqlibPeer(dim, seed, bits, threads))
        for bits in (1, 2, 4)
    ]
    return specs, []


_CATALOGUES = {
    "faiss": _faiss_catalogue,
    "turbovec": _turbovec_catalogue,
    "rabitqlib": _rabitqlib_catalogue,
}
