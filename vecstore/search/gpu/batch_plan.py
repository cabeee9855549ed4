"""Batches of queries of one shape on the GPU, replayed as a CUDA graph.

A ``BatchPlan`` holds, for one part's resident TurboQuant codes, codec, metric, k and
batch size, a ``BatchScan`` with every buffer of the fused tensor-core search. The first
search runs it directly; from the second on, its steps from the rotation to the results
in pinned host memory (kernels, cuBLAS calls and copies, each with its launch and
argument handling on the host) replay as recorded: the runs of kernels and copies between
cuBLAS calls as CUDA graphs, and the cuBLAS calls themselves, which CuPy does not let a
graph capture, with their arguments bound. The GPU then waits far less for the host.
The queries still go up per search, before the replay.
"""

from __future__ import annotations

import threading
from functools import partial

import numpy as np

from vecstore.search.gpu.batch_scan import BatchScan, StridedSamples
from vecstore.search.gpu.layouts import metric_terms


class BatchPlan:
    """Batch searches of ``nq`` queries of ``device`` (one part's codes), of the rows in
    ``mask`` (n,) bool or of all (None): ``row_bias`` (n,) float32 on the device is the
    metric's row bias, +inf outside the mask. ``fused_kernel``: BatchScan's.

    One search at a time uses a plan: ``submit`` returns None while another search holds
    it, and the caller takes the general path.
    """

    def __init__(self, context, samples: StridedSamples, codec, device, metric: str, k: int,
                 nq: int, mask, row_bias, fused_kernel: bool):
        cp = self.cupy = context.cupy
        self.context, self.samples, self.fused_kernel = context, samples, fused_kernel
        self.codec, self.device, self.n = codec, device, device.n
        self.metric, self.k, self.nq, self.mask, self.row_bias = metric, k, nq, mask, row_bias
        self.query_bias = (cp.empty(nq, dtype=cp.float32) if metric == "l2"
                           else context.zeros(nq))
        self.scan = self.steps = None
        self.stream = cp.cuda.Stream(non_blocking=False)
        self.lock = threading.Lock()

    def serves(self, codec, device, mask, row_bias) -> bool:
        """Whether the plan still matches ``device`` (a growing part's row count moves),
        ``codec``, ``mask`` (the same object, or None for both) and its row bias."""
        return (device is self.device and device.n == self.n and codec is self.codec
                and mask is self.mask and row_bias is self.row_bias)

    def submit(self, queries, query_sq_norms) -> np.ndarray | None:
        """The best k packed keys (nq, k) uint64 in host memory for queries (nq, d)
        float32, numpy or CuPy (``query_sq_norms`` (nq,) for l2); None when another
        search holds the plan."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            with self.stream:
                return self._search(queries, query_sq_norms)
        finally:
            self.lock.release()

    def _search(self, queries, query_sq_norms) -> np.ndarray:
        cp = self.cupy
        if self.metric == "l2":
            self.query_bias[...] = cp.asarray(query_sq_norms, dtype=cp.float32)
        if self.scan is None:
            key_scale, _ = metric_terms(self.metric, self.device)
            self.scan = BatchScan(self.context, self.samples, self.codec, self.device, queries,
                                  self.k, key_scale, self.row_bias, self.query_bias,
                                  self.fused_kernel)
            return cp.asnumpy(self.scan.run())
        self.scan.load(queries)
        if not self.scan.fused:
            return cp.asnumpy(self.scan.run())
        if self.steps is None:
            self.steps = self._record()
        for step in self.steps:
            step()
        return self.scan.collect()

    def _record(self) -> list:
        """``scan.enqueue`` as steps to call in order: launches of graphs captured on the
        plan's stream, and between them the cuBLAS calls. Nothing runs while it records."""
        steps, stream = [], self.stream

        def end_graph():
            steps.append(partial(stream.end_capture().launch, stream))

        def blas(call):
            end_graph()
            steps.append(call)
            stream.begin_capture()

        self.scan.record_blas = blas
        stream.begin_capture()
        try:
            self.scan.enqueue()
        finally:
            end_graph()
            self.scan.record_blas = None
        return steps
