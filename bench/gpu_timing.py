"""Timing shared by the GPU benchmarks: the median of repeated calls, and the fp16/fp32
flat search they compare against."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, repeat: int, warmup: int = 2, min_seconds: float = 0.2) -> float:
    """Median wall time of ``fn()``, which must synchronize with the device itself: over
    ``repeat`` calls, or more until they add up to ``min_seconds`` (fast calls, such as
    single queries, vary by a few percent from call to call)."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeat or sum(times) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flat_search(torch, base, queries, k: int, chunk: int = 256):
    """Exact top-k by inner product: GEMM plus torch.topk, queries in chunks."""
    out = []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk] @ base.T
        out.append(torch.topk(scores, k, dim=1).indices)
    torch.cuda.synchronize()
    return out
