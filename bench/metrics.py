"""Recall of found neighbours against exact ground truth.

Id arrays are (nq, width) integers, best first; -1 marks an empty slot and never counts as a hit.
"""

from __future__ import annotations

import numpy as np


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Recall@k: mean over queries of |found[:k] & truth[:k]| / k.

    Parameters
    ----------
    found : (nq, >=k) int, the ids a search returned, best first.
    truth : (nq, >=k) int, the exact neighbour ids, best first.
    k : number of leading columns compared.

    Returns
    -------
    float in [0, 1]. An id found twice counts once.
    """
    found_k, truth_k = _leading_columns(found, truth, k)
    nq = found_k.shape[0]
    # One key per (query, id) pair, so a single set intersection covers all queries.
    span = int(max(found_k.max(), truth_k.max(), 0)) + 1
    if nq * span >= np.iinfo(np.int64).max:
        raise ValueError(f"ids up to {span - 1} over {nq} queries are too large to compare")
    row_offsets = np.arange(nq, dtype=np.int64)[:, None] * span
    found_keys = np.unique((found_k + row_offsets)[found_k >= 0])
    truth_keys = (truth_k + row_offsets)[truth_k >= 0]
    hits = found_keys[np.isin(found_keys, truth_keys)]
    hits_per_query = np.bincount(hits // span, minlength=nq)
    return float(np.mean(hits_per_query / k))


def recall_1_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Recall 1@k: the share of queries whose true nearest neighbour is among found[:k].

    Parameters
    ----------
    found : (nq, >=k) int, the ids a search returned, best first.
    truth : (nq, >=1) int, the exact neighbour ids, best first; only column 0 is used.
    k : number of leading found columns searched.

    Returns
    -------
    float in [0, 1]. A query whose true nearest is -1 counts as a miss.
    """
    found_k, truth_k = _leading_columns(found, truth, k, truth_width=1)
    nearest = truth_k[:, :1]
    hit = (found_k == nearest).any(axis=1) & (nearest[:, 0] >= 0)
    return float(np.mean(hit))


def _leading_columns(
    found: np.ndarray, truth: np.ndarray, k: int, truth_width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """found[:, :k] and truth[:, :truth_width or k] as int64, after checking shapes and dtypes."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    truth_width = k if truth_width is None else truth_width
    arrays = []
    for what, ids, width in (("found", found, k), ("truth", truth, truth_width)):
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"{what} must be a 2-D integer array, got {ids.dtype} {ids.shape}")
        if ids.shape[1] < width:
            raise ValueError(f"{what} has {ids.shape[1]} columns, need at least {width}")
        arrays.append(ids[:, :width].astype(np.int64))
    found_k, truth_k = arrays
    if found_k.shape[0] != truth_k.shape[0]:
        raise ValueError(f"found has {found_k.shape[0]} queries, truth has {truth_k.shape[0]}")
    if found_k.shape[0] == 0:
        raise ValueError("found and truth have no queries")
    return found_k, truth_k
