"""Second-stage reranking of candidates with finer vectors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vecstore.search.cpu import Metric

# Queries reranked together: bounds the (queries x candidates x d) gather.
RERANK_BLOCK = 256


def rerank(queries: np.ndarray, candidates: np.ndarray, ties: np.ndarray,
           fetch: Callable[[np.ndarray], np.ndarray], metric: Metric,
           k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recompute keys of candidate rows from finer vectors and keep the best k.

    queries : (nq, d) float32
    candidates : (nq, m) int64 row positions, -1 for empty slots
    ties : (nq, m) int64, the smaller wins between equal keys (the candidates' ids)
    fetch : maps rows (r,) int64 to their finer vectors (r, d) float32
    Returns keys (nq, k) float32 (smaller is better, +inf when empty), rows and ties
    (nq, k) int64.
    """
    nq, m = candidates.shape
    keys = np.full((nq, m), np.inf, dtype=np.float32)
    for start in range(0, nq, RERANK_BLOCK):
        block = candidates[start : start + RERANK_BLOCK]
        filled = block >= 0
        vectors = np.zeros((*block.shape, queries.shape[1]), dtype=np.float32)
        vectors[filled] = fetch(block[filled])
        q = queries[start : start + RERANK_BLOCK, None, :]
        if metric == "l2":
            block_keys = np.square(vectors - q).sum(axis=2)
        else:
            block_keys = -np.einsum("qmd,qmd->qm", vectors, np.broadcast_to(q, vectors.shape))
        keys[start : start + RERANK_BLOCK] = np.where(filled, block_keys, np.inf)
    top = np.lexsort((ties, keys), axis=-1)[:, :k]
    return tuple(np.take_along_axis(a, top, axis=1) for a in (keys, candidates, ties))
