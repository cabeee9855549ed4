"""One query at a time on the GPU with nothing allocated per search.

A ``SingleQueryPlan`` holds, for one part's resident TurboQuant codes, codec, metric and
k, every buffer and kernel argument of a one-query search. Per search the query is written
to pinned host memory and copied up once, rotated on the device (``rotate_query.cu``;
rotations other than a dense matrix rotate on the host before the copy) and scanned
(``tq_scan.cu``), and the blocks' candidates are merged (``merge_topk.cu``) by a kernel
that writes the k keys and rows straight into pinned host memory. The copy and launches
are captured once as a CUDA graph, so a search is one graph launch.
"""

from __future__ import annotations

import threading

import numpy as np

from vecstore.search.gpu import kernels, launches
from vecstore.search.gpu.layouts import code_format, metric_terms

# cudaMemcpyKind value (driver_types.h).
HOST_TO_DEVICE = 1
ROTATE_THREADS = 256


class SingleQueryPlan:
    """Buffers and launches of one-query searches of ``device`` (one part's codes), of
    the rows in ``mask`` (n,) bool or of all (None): ``row_bias`` (n,) float32 on the
    device is the metric's row bias, +inf outside the mask.

    One search at a time uses a plan: ``submit`` returns None while another search holds
    it, and the caller takes the general path.
    """

    def __init__(self, context, codec, device, metric: str, k: int, mask, row_bias):
        import cupyx

        from vecstore.codecs.rotation import DenseRotation

        cp = self.cupy = context.cupy
        self.device, self.codec, self.n, self.mask = device, codec, device.n, mask
        self.dim, self.rot_dim = codec.dim, code_format(codec).values
        self.matrix = None
        if isinstance(codec.rotation, DenseRotation):
            self.matrix = context.rotation_rows(codec)
        width = self.dim if self.matrix is not None else self.rot_dim
        # The query (or the host-rotated query) and its key bias, in one copy.
        self.host_query = cupyx.empty_pinned(width + 1, dtype=np.float32)
        self.query = cp.zeros(width + 1, dtype=cp.float32)
        self.rotated = self.query[None, :width] if self.matrix is None else cp.zeros(
            (1, self.rot_dim), dtype=cp.float32)
        # Written by the merge kernel straight into (mapped) pinned memory.
        self.host_keys = cupyx.empty_pinned((1, k), dtype=np.float32)
        self.host_rows = cupyx.empty_pinned((1, k), dtype=np.int64)
        key_scale, _ = metric_terms(metric, device)
        unused = kernels.device_constant(np.zeros(1, dtype=np.float32).tobytes())
        self.scan, candidates = launches.fused_launch(context, codec, device, self.rotated, k,
                                                      key_scale, row_bias, self.query[width:],
                                                      unused, unused)
        self.merge, _ = launches.merge_launch(
            context, candidates, k, (self.host_keys.ctypes.data, self.host_rows.ctypes.data))
        self.rotate_kernel = kernels.kernel("rotate_query.cu", "rotate_query")
        self.graph = self.stream = None
        self.lock = threading.Lock()

    def serves(self, device, mask) -> bool:
        """Whether the plan still matches ``device`` (a growing part's row count moves)
        and ``mask`` (the same object, or None for both)."""
        return device is self.device and device.n == self.n and mask is self.mask

    def submit(self, query: np.ndarray, query_sq_norm: float | None):
        """Launch a search for ``query`` (d,) float32; a ``PendingQuery``, or None when
        another search holds the plan."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            self._write_query(query, query_sq_norm)
            if self.graph is None:
                self._capture()
            self.graph.launch(self.stream)
        except BaseException:
            self.lock.release()
            raise
        return PendingQuery(self)

    def _write_query(self, query: np.ndarray, query_sq_norm: float | None) -> None:
        width = self.host_query.size - 1
        if self.matrix is None:
            self.host_query[:width] = self.codec.prepare_query(query[None, :]).rotated[0]
        else:
            self.host_query[:width] = query
        self.host_query[width] = 0.0 if query_sq_norm is None else query_sq_norm

    def _capture(self) -> None:
        """The copies and launches of a search as a CUDA graph on the plan's stream (a
        blocking stream, so it orders after uploads on the default stream). One run
        outside the capture loads the kernels first."""
        cp = self.cupy
        self.stream = cp.cuda.Stream(non_blocking=False)
        with self.stream:
            self._enqueue()
            self.stream.synchronize()
            self.stream.begin_capture()
            try:
                self._enqueue()
            finally:
                self.graph = self.stream.end_capture()

    def _enqueue(self) -> None:
        cp, stream = self.cupy, self.cupy.cuda.get_current_stream()
        cp.cuda.runtime.memcpyAsync(self.query.data.ptr, self.host_query.ctypes.data,
                                    self.host_query.nbytes, HOST_TO_DEVICE, stream.ptr)
        if self.matrix is not None:
            warps_per_block = ROTATE_THREADS // 32
            self.rotate_kernel((-(-self.rot_dim // warps_per_block),), (ROTATE_THREADS,),
                               (self.matrix, self.query, np.int32(self.dim),
                                np.int32(self.rot_dim), self.rotated))
        self.scan()
        self.merge()


class PendingQuery:
    """A launched one-query search; ``result`` waits for it and frees the plan."""

    def __init__(self, plan: SingleQueryPlan):
        self.plan = plan

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys (1, k) float32 and rows (1, k) int64, as ``GpuScanner.scan``."""
        try:
            self.plan.stream.synchronize()
            return self.plan.host_keys.copy(), self.plan.host_rows.copy()
        finally:
            self.plan.lock.release()
