"""Seeded k-means for the trained codecs: k-means++ or random-sample seeding, Lloyd iterations.

The numpy implementation computes distances in bounded row chunks, so its working memory
does not grow with the number of points beyond the points themselves. An empty cluster takes
the point that lies farthest from its own centroid, which leaves that point's cluster.

When ``faiss`` is importable, ``backend="auto"`` hands the work to ``faiss.Kmeans`` with the
same number of Lloyd iterations and a seed derived from the same (seed, stream) pair; faiss
seeds by a random sample of the points. Points of fewer than FAISS_MIN_DIM dimensions stay
with numpy: there faiss measured slower (256 centroids on 25,000 points of 4 dimensions:
1.2 s against 0.3 s). Setting the environment variable ``VECSTORE_KMEANS_BACKEND`` to ``numpy``
(or ``faiss``) overrides ``auto``. Both backends are deterministic for a given seed, but they
give different centroids.

Random numbers come from ``rotation.stable_uniform``, so a seed gives the same centroids on
every numpy version.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import numpy as np

from vecstore.codecs.rotation import stable_uniform
from vecstore.errors import InvalidArgument

Backend = Literal["auto", "numpy", "faiss"]
Init = Literal["kmeans++", "random"]

BACKEND_ENV = "VECSTORE_KMEANS_BACKEND"
BACKENDS = ("auto", "numpy", "faiss")
INITS = ("kmeans++", "random")
DEFAULT_NITER = 25
FAISS_MIN_DIM = 5
# Entries of one chunk's (rows, k) distance block: 4 MiB of float32.
DISTANCE_BLOCK = 1 << 20
# Streams of the (seed, stream) pair: k-means draws from its stream offset by this, so that
# row sampling and seeding never share random numbers.
KMEANS_STREAM_OFFSET = 1 << 20


def sample_rows(n: int, count: int, seed: int, stream: int = 0) -> np.ndarray:
    """``count`` distinct row indices out of ``n``, ascending, (count,) int64.

    Every row is taken when ``count >= n``; otherwise the rows with the ``count`` smallest of
    n seeded uniform keys, a uniformly random subset.
    """
    if count >= n:
        return np.arange(n, dtype=np.int64)
    keys = stable_uniform(seed, n, stream)
    return np.sort(np.argpartition(keys, count - 1)[:count]).astype(np.int64)


def resolve_backend(backend: Backend, dim: int) -> Literal["numpy", "faiss"]:
    """The backend ``kmeans`` uses for ``backend`` and points of ``dim`` dimensions: ``auto``
    reads ``VECSTORE_KMEANS_BACKEND``, then takes faiss when it is importable and
    dim >= FAISS_MIN_DIM."""
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown k-means backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise InvalidArgument(
                f"{BACKEND_ENV}={backend!r} is not one of {BACKENDS}"
            )
    has_faiss = importlib.util.find_spec("faiss") is not None
    if backend == "auto":
        return "faiss" if has_faiss and dim >= FAISS_MIN_DIM else "numpy"
    if backend == "faiss" and not has_faiss:
        raise InvalidArgument("the faiss k-means backend needs the faiss-cpu package")
    return backend


def kmeans(x: np.ndarray, k: int, *, niter: int = DEFAULT_NITER, seed: int = 0,
           stream: int = 0, init: Init = "kmeans++", backend: Backend = "auto") -> np.ndarray:
    """Cluster the rows of ``x`` into ``k`` groups.

    Parameters
    ----------
    x : (n, d) float32, n >= k
    k : number of centroids
    niter : Lloyd iterations (assign every point, then move every centroid to its mean)
    seed, stream : the random source; separate streams give independent runs for one seed
    init : ``"kmeans++"`` (D^2 sampling) or ``"random"`` (k distinct points); numpy only
    backend : ``"auto"``, ``"numpy"`` or ``"faiss"``

    Returns
    -------
    (k, d) float32 centroids.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidArgument(f"k-means needs a 2-D array, got shape {x.shape}")
    if k < 1 or x.shape[0] < k:
        raise InvalidArgument(f"k-means with k={k} needs at least k points, got {x.shape[0]}")
    if init not in INITS:
        raise InvalidArgument(f"unknown k-means init {init!r}; expected one of {INITS}")
    if resolve_backend(backend, x.shape[1]) == "faiss":
        return _faiss_kmeans(x, k, niter, _faiss_seed(seed, stream))
    uniforms = stable_uniform(seed, k, KMEANS_STREAM_OFFSET + stream)
    if init == "kmeans++":
        centroids = _kmeans_plus_plus(x, k, uniforms)
    else:
        centroids = x[sample_rows(x.shape[0], k, seed, KMEANS_STREAM_OFFSET + stream)].copy()
    for _ in range(niter):
        centroids = _lloyd_step(x, centroids)
    return centroids


def _faiss_seed(seed: int, stream: int) -> int:
    """A 31-bit faiss seed for (seed, stream)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0] & 0x7FFFFFFF)


def _faiss_kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    import faiss

    n, d = x.shape
    clustering = faiss.Kmeans(
        d, k, niter=niter, seed=seed, verbose=False,
        # Cluster every given point: callers subsample with their own seed.
        max_points_per_centroid=-(-n // k) + 1, min_points_per_centroid=1,
    )
    clustering.train(x)
    return np.ascontiguousarray(clustering.centroids, dtype=np.float32)


def _kmeans_plus_plus(x: np.ndarray, k: int, uniforms: np.ndarray) -> np.ndarray:
    """k-means++ seeding: each next centroid is a point drawn with probability proportional
    to its squared distance to the nearest centroid so far. (k, d) float32."""
    n = x.shape[0]
    sq_norms = np.einsum("ij,ij->i", x, x).astype(np.float64)

    def squared_distances(point: np.ndarray) -> np.ndarray:
        sq = sq_norms - 2 * (x @ point) + float(point @ point)
        return np.maximum(sq, 0)

    centroids = np.empty((k, x.shape[1]), dtype=np.float32)
    first = min(int(uniforms[0] * n), n - 1)
    centroids[0] = x[first]
    closest = squared_distances(centroids[0])
    for c in range(1, k):
        cumulative = np.cumsum(closest)
        if cumulative[-1] > 0:
            pick = int(np.searchsorted(cumulative, uniforms[c] * cumulative[-1], side="right"))
        else:
            # Every point coincides with a centroid already chosen.
            pick = int(uniforms[c] * n)
        pick = min(pick, n - 1)
        centroids[c] = x[pick]
        np.minimum(closest, squared_distances(centroids[c]), out=closest)
    return centroids


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row, in bounded chunks.

    x : (n, d) float32; centroids : (k, d) float32.
    Returns labels (n,) int64 and squared distances to the chosen centroid (n,) float32.
    """
    n, k = x.shape[0], centroids.shape[0]
    half_sq_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    centroids_t = np.ascontiguousarray(centroids.T)
    labels = np.empty(n, dtype=np.int64)
    distances = np.empty(n, dtype=np.float32)
    step = max(1, DISTANCE_BLOCK // k)
    for start in range(0, n, step):
        block = x[start : start + step]
        # argmin of ||c||^2/2 - <x, c> is the nearest centroid.
        keys = half_sq_norms - block @ centroids_t
        best = np.argmin(keys, axis=1)
        labels[start : start + step] = best
        best_keys = np.take_along_axis(keys, best[:, None], axis=1)[:, 0]
        sq = 2 * best_keys + np.einsum("ij,ij->i", block, block)
        distances[start : start + step] = np.maximum(sq, 0)
    return labels, distances


def _cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Sum of the rows in each cluster, (k, d) float64, one weighted bincount per column."""
    sums = np.empty((k, x.shape[1]), dtype=np.float64)
    for column in range(x.shape[1]):
        sums[:, column] = np.bincount(labels, weights=x[:, column], minlength=k)
    return sums


def _lloyd_step(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Assign every point, then move each centroid to the mean of its points. (k, d) float32."""
    k = centroids.shape[0]
    labels, distances = assign(x, centroids)
    counts = np.bincount(labels, minlength=k)
    sums = _cluster_sums(x, labels, k)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        # The farthest points from their centroids leave their clusters to found new ones.
        farthest = np.argsort(-distances, kind="stable")[: empty.size]
        for cluster, point in zip(empty, farthest, strict=False):
            sums[labels[point]] -= x[point]
            counts[labels[point]] -= 1
            sums[cluster] = x[point]
            counts[cluster] = 1
    updated = centroids.copy()
    filled = counts > 0
    updated[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
    return updated
