"""The tensor-core search of TurboQuant query batches (``BatchScan``): the GEMM pipeline
of ``_cuda/tq_batch.cu`` and, for 4-bit codes on Hopper, the fused kernel of
``_cuda/tq_mma.cu`` bounded by a strided sample of the rows."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from vecstore.search.gpu import kernels, launches
from vecstore.search.gpu.context import (
    BLOCK_THREADS,
    DEFAULT_SHARED_LIMIT,
    DeviceContext,
    pow2_at_least,
)
from vecstore.search.gpu.kernels import DEVICE_TO_HOST, EMPTY_SLOT, MAX_K
from vecstore.search.gpu.layouts import DeviceCodes, code_format

# Tensor-core path: fp16 rows dequantized per tile, fp16 scores per query chunk and tile,
# rows per top-k slice, and the candidate buffer of one query chunk. Big tiles keep the
# launches per search few.
TILE_BYTES = 48 << 20
TILE_SCORE_BYTES = 64 << 20
SLICE_ROWS = 8192
# Rows per block of the dequantizing kernel (DEQUANT_ROWS in _cuda/tq_batch.cu).
DEQUANT_ROWS = 32
CANDIDATE_BYTES = 256 << 20
# The fused tensor-core kernel (_cuda/tq_mma.cu): queries per block, warps per block (four
# warpgroups) and rows per warp slice (as there); the most steps of code words a warp
# keeps in flight (as many as shared memory holds, up to this; at least the fewest); work
# units per block (the blocks take units in turn, so a unit's share of the time is the
# most a block can idle at the end); the allowance on a unit-query score for the rounding
# of the bounds (fp16 scores) and of the kernel's keys (int8 queries and centroids: 3.6e-3
# at most over 1M row and query pairs of unit vectors at d = 384, 2.1e-3 at d = 1536); and
# the candidate buffer per query, as a multiple of the expected count (Kc per tile of
# rows).
MMA_BN = 128
MMA_WARPS = 16
MMA_ROWS = 16
MMA_MAX_STAGES = 16
MMA_MIN_STAGES = 4
MMA_UNITS_PER_BLOCK = 2
MMA_SLACK = 8e-3
MMA_CAP_FACTOR = 4
# Candidates kept per query before the float32 re-scoring: max(2k, k + margin).
RESCORE_MARGIN = 32


def mma_dim(dim_pad: int) -> int:
    """The coordinates tq_mma_scan takes for queries of ``dim_pad`` (a multiple of 32): its
    32-coordinate steps go in pairs, so a multiple of 64 (the extra ones count as zero)."""
    return -(-dim_pad // 64) * 64


def mma_shared_bytes(kernel_dim: int, stages: int) -> int:
    """Dynamic shared memory of a tq_mma_scan block for ``kernel_dim`` = mma_dim(...):
    int8 query rows, ``stages`` staged steps of code words per warp (4 words of MMA_ROWS
    rows) and four 4-byte terms per query."""
    return MMA_BN * kernel_dim + MMA_WARPS * stages * 4 * MMA_ROWS * 4 + 4 * MMA_BN * 4


def mma_stages(kernel_dim: int, shared_limit: int) -> int:
    """Steps of code words per warp of tq_mma_scan (an even number: they are copied in
    pairs) that fit in ``shared_limit`` bytes of shared memory (besides its static shared
    memory: one int, which takes 128 bytes as the dynamic part is 128-byte aligned), up
    to MMA_MAX_STAGES; 0 when fewer than MMA_MIN_STAGES fit."""
    fixed = mma_shared_bytes(kernel_dim, 0) + 128
    stages = min(MMA_MAX_STAGES, (shared_limit - fixed) // (MMA_WARPS * 4 * MMA_ROWS * 4))
    stages -= stages % 2
    return stages if stages >= MMA_MIN_STAGES else 0


class BatchScan:
    """One search on the tensor-core path.

    Every width can run the GEMM pipeline (_cuda/tq_batch.cu) over all tiles of rows:
    dequantize a tile to fp16, multiply by cuBLAS, keep each slice's Kc best, merge and
    re-score in float32. With ``fused_kernel`` (the scanner's ``batch_kernel`` "auto" or
    "mma"), 4-bit codes over more than one tile run the pipeline on one tile's worth of
    rows taken at an even stride (a strided sample: collections are often ordered, by
    source or by frequency), which bounds each query's Kc-th best key; the fused kernel
    (_cuda/tq_mma.cu) then scans every row against those bounds and tq_finish re-scores
    its candidates. A query whose candidates overflow their buffer is rescanned by the
    pipeline.

    The fused search holds every buffer it uses from construction on (and the sample
    dequantized), so that ``load`` then ``enqueue`` can run again for new queries of the
    same shape, and a plan can record ``enqueue`` (``BatchPlan``, batch_plan.py).
    """

    def __init__(self, context: DeviceContext, samples: StridedSamples, codec,
                 device: DeviceCodes, queries: np.ndarray, k: int, key_scale, row_bias,
                 query_bias, fused_kernel: bool = True):
        from vecstore.codecs.rotation import DenseRotation

        cp = self.cp = context.cupy
        self.context, self.samples = context, samples
        self.codec, self.device = codec, device
        self.k, self.key_scale, self.row_bias, self.query_bias = k, key_scale, row_bias, query_bias
        fmt = self.fmt = code_format(codec)
        self.nq, self.dim, self.n = queries.shape[0], fmt.values, device.n
        self.n_words, self.n_pad = device.words.shape
        self.kc = max(k, min(MAX_K, max(2 * k, k + RESCORE_MARGIN)))
        self.size = pow2_at_least(self.kc + 2 * BLOCK_THREADS)
        mma = fused_kernel and fmt.bits == 4
        self.dim_pad = -(-self.dim // (32 if mma else 8)) * (32 if mma else 8)
        rows_per_tile = max(1, TILE_BYTES // (2 * self.dim_pad * SLICE_ROWS)) * SLICE_ROWS
        self.tile_rows = min(rows_per_tile, -(-self.n // SLICE_ROWS) * SLICE_ROWS)
        self.stages = mma_stages(mma_dim(self.dim_pad), context.shared_limit)
        self.fused = mma and self.n > self.tile_rows and self.stages > 0 and context.hopper
        # Dense rotations rotate on the device (``source`` holds the queries), others on
        # the host (``source`` holds the rotated queries).
        self.matrix = (context.rotation_rows(codec) if isinstance(codec.rotation, DenseRotation)
                       else None)
        width = codec.dim if self.matrix is not None else self.dim
        self.source = cp.empty((self.nq, width), dtype=cp.float32)
        self.rotated_source = (self.source if self.matrix is None
                               else cp.empty((self.nq, self.dim), dtype=cp.float32))
        self._query_buffers()
        self.centroids = kernels.device_constant(fmt.centroids.tobytes())
        self.centroid_halves = kernels.device_constant(
            fmt.centroids.astype(np.float16).tobytes(), "uint16")

        levels = 1 << fmt.bits
        self.exact_size = pow2_at_least(self.kc)
        self.finish_shared = (self.size + self.exact_size) * 8 + levels * 4 + 8
        context.check_shared(self.finish_shared, f"k={k}")
        self.dequant_shared = self.n_words * (DEQUANT_ROWS + 1) * 4 + levels * 2
        context.check_shared(self.dequant_shared, f"{self.dim} values of {fmt.bits} bits")
        self.dequantize = kernels.kernel("tq_batch.cu", f"tq_dequantize<{fmt.bits}>")
        if self.dequant_shared > DEFAULT_SHARED_LIMIT:
            self.dequantize.max_dynamic_shared_size_bytes = self.dequant_shared
        self.tile_topk = kernels.kernel("tq_batch.cu", "tile_topk")
        self.finish_kernel = kernels.kernel("tq_batch.cu", f"tq_finish<{fmt.bits}>")
        if self.finish_shared > DEFAULT_SHARED_LIMIT:
            self.finish_kernel.max_dynamic_shared_size_bytes = self.finish_shared
        self.chunk = max(1, min(self.nq, TILE_SCORE_BYTES // (2 * self.tile_rows)))
        self.tile = cp.empty((self.tile_rows, self.dim_pad), dtype=cp.float16)
        self.scores = cp.empty((self.chunk, self.tile_rows), dtype=cp.float16)
        self.best = cp.empty((self.nq, k), dtype=cp.uint64)
        self.record_blas = None
        if self.fused:
            self._fused_buffers()
        self.load(queries)

    def load(self, queries) -> None:
        """Copy queries (nq, d), numpy or CuPy, into ``source`` on the current stream,
        rotated on the host first unless the rotation is a dense matrix."""
        cp = self.cp
        self.queries = queries
        if self.matrix is None:
            host = cp.asnumpy(queries) if isinstance(queries, cp.ndarray) else queries
            queries = self.codec.prepare_query(host).rotated
        if isinstance(queries, cp.ndarray):
            self.source[...] = queries
        else:
            self.context.upload(queries, out=self.source)

    def run(self):
        """The best k packed keys (nq, k) uint64, sorted per query: on the device, or in
        host memory once the fused kernel has run (its overflow check waits for it)."""
        if self.fused:
            self.enqueue()
            return self.collect()
        self._enqueue_queries()
        return self._run_pipeline()

    def _run_pipeline(self):
        cp = self.cp
        n_slots = -(-self.n // SLICE_ROWS)
        query_block = max(1, min(self.nq, CANDIDATE_BYTES // (8 * n_slots * self.kc)))
        candidates = cp.empty((query_block, n_slots, self.kc), dtype=cp.uint64)
        bounds = cp.empty(query_block, dtype=cp.uint64)
        for q_first in range(0, self.nq, query_block):
            q_last = min(self.nq, q_first + query_block)
            bounds.fill(np.uint64(EMPTY_SLOT))
            self._pipeline_tiles(q_first, q_last, self._all_rows(), n_slots, bounds,
                                 candidates)
            self._finish(candidates, n_slots * self.kc, q_first, q_last)
        return self.best

    def _query_buffers(self) -> None:
        """Outputs of prepare_queries (tq_batch.cu): ``rotated`` padded (nq, dim_pad)
        float32, ``halves`` (nq, dim_pad) fp16 at unit norm, ``query_norms`` (nq,), and for
        the fused kernel ``int8`` (nq, dim_pad) with ``inv_scale`` (nq,)."""
        cp, nq, dim_pad = self.cp, self.nq, self.dim_pad
        self.rotated = cp.empty((nq, dim_pad), dtype=cp.float32)
        self.halves = cp.empty((nq, dim_pad), dtype=cp.float16)
        self.query_norms = cp.empty(nq, dtype=cp.float32)
        self.int8 = cp.empty((nq, dim_pad), dtype=cp.int8) if self.fused else None
        self.inv_scale = cp.empty(nq, dtype=cp.float32) if self.fused else None

    def _enqueue_queries(self) -> None:
        """The loaded queries rotated (a dense rotation: cuBLAS) and prepared."""
        if self.matrix is not None:
            self._blas(self.matrix, self.dim, self.source, self.nq, self.codec.dim,
                       self.rotated_source, self.dim)
        null = np.uint64(0)
        kernels.kernel("tq_batch.cu", "prepare_queries")(
            (self.nq,), (BLOCK_THREADS,),
            (self.rotated_source, np.int32(self.dim), np.int32(self.dim_pad), self.rotated,
             self.halves, self.query_norms, null if self.int8 is None else self.int8,
             null if self.inv_scale is None else self.inv_scale))

    def _fused_buffers(self) -> None:
        """The fused search's sample, buffers, kernel and launch terms."""
        import cupyx

        cp, n, kc = self.cp, self.n, self.kc
        self.sample_slots = self.tile_rows // SLICE_ROWS
        self.sample = self.samples.get(self.device, self.tile_rows, self.row_bias)
        expected = kc * -(-n // self.tile_rows)
        self.cap = pow2_at_least(max(MMA_CAP_FACTOR * expected, 2 * kc))
        query_block = max(1, min(self.nq, CANDIDATE_BYTES // (8 * max(self.cap,
                                                                     self.sample_slots * kc))))
        self.query_blocks = [(first, min(self.nq, first + query_block))
                             for first in range(0, self.nq, query_block)]
        self.sampled = cp.empty((query_block, self.sample_slots, kc), dtype=cp.uint64)
        self.bounds = cp.empty(query_block, dtype=cp.uint64)
        self.found = cp.empty((query_block, self.cap), dtype=cp.uint64)
        self.counts = cp.empty(self.nq, dtype=cp.int32)
        self.next_unit = cp.empty(len(self.query_blocks), dtype=cp.int32)
        self.merges = [launches.merge_launch(self.context, self.sampled[: last - first], kc)
                       for first, last in self.query_blocks]
        kernel_dim = mma_dim(self.dim_pad)
        self.mma_scan = kernels.hopper_kernel("tq_mma.cu",
                                       f"tq_mma_scan<{kernel_dim // 32},{self.stages}>")
        self.mma_shared = mma_shared_bytes(kernel_dim, self.stages)
        self.mma_scan.allow_shared(self.mma_shared)
        self.table, centroid_scale = kernels.int8_table(self.fmt.centroids.tobytes())
        self.key_factor = np.float32(self.key_scale / centroid_scale)
        self.host_counts = cupyx.empty_pinned(self.nq, dtype=np.int32)
        self.host_best = cupyx.empty_pinned((self.nq, self.k), dtype=np.uint64)
        # The sample is one tile, dequantized once for every search of this object.
        self._dequantize(self.sample.source, 0, self.tile_rows)

    def enqueue(self) -> None:
        """Every step of a fused search from the loaded queries on, on the current stream
        and without allocating: the counts and results go to pinned host memory."""
        cp, n, kc = self.cp, self.n, self.kc
        self.counts.fill(0)
        self.next_unit.fill(0)
        self._enqueue_queries()
        blocks = self.context.multiprocessors
        for unit, ((q_first, q_last), (merge, merged)) in enumerate(
                zip(self.query_blocks, self.merges, strict=True)):
            width = q_last - q_first
            self.bounds.fill(np.uint64(EMPTY_SLOT))
            self._pipeline_tiles(q_first, q_last, self.sample.source, self.sample_slots,
                                 self.bounds, self.sampled, dequantized=True)
            # The pipeline's bound is the best slice's Kc-th key; the sample's own Kc-th
            # best is tighter by about the number of slices.
            merge()
            self.bounds[:width] = merged[:, kc - 1]
            query_tiles = -(-width // MMA_BN)
            row_units = max(1, -(-MMA_UNITS_PER_BLOCK * blocks // query_tiles))
            step = MMA_ROWS * MMA_WARPS
            rows_per_unit = -(-n // row_units)
            rows_per_unit = -(-rows_per_unit // step) * step
            units = query_tiles * -(-n // rows_per_unit)
            self.mma_scan(
                (blocks,), (MMA_WARPS * 32,),
                (self.device.words, np.int32(self.n_words), np.int32(n), np.int32(self.n_pad),
                 np.int32(rows_per_unit), np.int32(units), self.next_unit[unit:],
                 *self.table, self.int8[q_first:], np.int32(self.dim_pad // 16),
                 np.int32(width),
                 self.device.scale, self.row_bias, self.inv_scale[q_first:],
                 self.query_bias[q_first:], self.query_norms[q_first:], self.key_factor,
                 self.key_scale, self.bounds, self.sample.terms, np.float32(MMA_SLACK),
                 np.int32(self.cap), self.counts[q_first:], self.found),
                shared_mem=self.mma_shared)
            self._finish(self.found, self.cap, q_first, q_last, self.counts[q_first:])
        stream = cp.cuda.get_current_stream().ptr
        for source, target in ((self.counts, self.host_counts), (self.best, self.host_best)):
            cp.cuda.runtime.memcpyAsync(target.ctypes.data, source.data.ptr, source.nbytes,
                                        DEVICE_TO_HOST, stream)

    def collect(self) -> np.ndarray:
        """Wait for an enqueued fused search; its best (nq, k) packed keys in host memory,
        with the queries whose candidates overflowed rescanned by the pipeline."""
        cp = self.cp
        cp.cuda.get_current_stream().synchronize()
        best = self.host_best.copy()
        overflowed = np.flatnonzero(self.host_counts > self.cap)
        if overflowed.size:
            rescan = BatchScan(self.context, self.samples, self.codec, self.device,
                               self.queries[overflowed], self.k, self.key_scale, self.row_bias,
                               self.query_bias[cp.asarray(overflowed)], fused_kernel=False)
            best[overflowed] = cp.asnumpy(rescan.run())
        return best

    def _all_rows(self) -> RowSource:
        return RowSource(self.device.words, self.device.scale, self.row_bias, self.n)

    def _pipeline_tiles(self, q_first: int, q_last: int, source: RowSource, n_slots: int,
                        bounds, candidates, dequantized: bool = False) -> None:
        """The rows of ``source`` through dequantize, GEMM and tile_topk for queries
        [q_first, q_last): candidates (q_last - q_first, n_slots, Kc) and lowered bounds.
        ``dequantized``: ``source`` is one tile, already in ``tile``."""
        dim_pad, tile_rows = self.dim_pad, self.tile_rows
        topk_shared = self.size * 8 + 8
        for row0 in range(0, source.n, tile_rows):
            rows = min(tile_rows, source.n - row0)
            if not dequantized:
                self._dequantize(source, row0, rows)
            for q0 in range(q_first, q_last, self.chunk):
                width = min(self.chunk, q_last - q0)
                self._blas(self.tile, rows, self.halves[q0:], width, dim_pad, self.scores,
                           tile_rows)
                self.tile_topk((-(-rows // SLICE_ROWS), width), (BLOCK_THREADS,),
                               (self.scores, np.int32(tile_rows), np.int32(rows),
                                np.int32(row0), np.int32(q0 - q_first),
                                np.int32(q0 - q_first + width), np.int32(SLICE_ROWS),
                                np.int32(n_slots), source.scale, source.row_bias,
                                self.query_norms[q_first:], self.query_bias[q_first:],
                                self.key_scale, np.int32(self.kc), np.int32(self.size),
                                bounds, candidates),
                               shared_mem=topk_shared)

    def _dequantize(self, source: RowSource, row0: int, rows: int) -> None:
        """Rows [row0, row0 + rows) of ``source`` as fp16 rows of ``tile``."""
        self.dequantize((-(-rows // DEQUANT_ROWS),), (BLOCK_THREADS,),
                        (source.words, np.int32(self.n_words), np.int32(source.words.shape[1]),
                         np.int32(row0), np.int32(rows), np.int32(self.dim),
                         np.int32(self.dim_pad), self.centroid_halves, self.tile),
                        shared_mem=self.dequant_shared)

    def _blas(self, *args) -> None:
        """``kernels.gemm`` on the current stream now, or while a plan records (CuPy's cuBLAS calls
        cannot be captured in a graph), handed to ``record_blas`` as a step of its own."""
        call = partial(kernels.gemm, self.cp, *args)
        if self.record_blas is None:
            call()
        else:
            self.record_blas(call)

    def _finish(self, candidates, n_cand: int, q_first: int, q_last: int,
                filled=None) -> None:
        """tq_finish: each query's Kc best of ``n_cand`` candidates (of the first
        ``filled[q]``, (q_last - q_first,) int32, when given), re-scored in float32, into
        best[q_first:q_last]."""
        self.finish_kernel((q_last - q_first,), (BLOCK_THREADS,),
                           (candidates, np.int32(n_cand),
                            np.uint64(0) if filled is None else filled, np.int32(self.kc),
                            np.int32(self.size), np.int32(self.exact_size), self.device.words,
                            np.int32(self.n_words), np.int32(self.n_pad), self.device.scale,
                            self.row_bias, self.rotated[q_first:], np.int32(self.dim),
                            np.int32(self.dim_pad), self.query_bias[q_first:],
                            self.centroids, self.key_scale, np.int32(self.k),
                            self.best[q_first:]),
                           shared_mem=self.finish_shared)


@dataclass
class RowSource:
    """Rows for the GEMM pipeline: words (W, n_pad) uint32, scale and row_bias (n,)
    float32, n rows."""

    words: object
    scale: object
    row_bias: object
    n: int


@dataclass(frozen=True)
class StridedSample:
    """Rows of a part at an even stride, whose GEMM pipeline bounds the fused kernel's
    queries: their indices ``picked`` (rows,) int64, ``words`` (W, rows) uint32 and
    ``scale`` (rows,) float32; the part's largest |row scale| (a device scalar); and for
    the row bias (n,) it was last asked for, ``bias`` (rows,) and the part's ``terms``
    (2,) float32: its largest |row scale| and smallest row bias."""

    device: DeviceCodes
    picked: object
    words: object
    scale: object
    scale_peak: object
    row_bias: object = None
    bias: object = None
    terms: object = None

    @property
    def source(self) -> RowSource:
        return RowSource(self.words, self.scale, self.bias, int(self.picked.size))


class StridedSamples:
    """The strided samples of device codes, kept per codes and row count (with the row bias
    of the last one asked for); a scanner holds one and prunes it with its codes."""

    def __init__(self, context: DeviceContext):
        self.context = context
        self._samples: dict[tuple, StridedSample] = {}
        self._lock = threading.Lock()

    def get(self, device: DeviceCodes, rows: int, row_bias) -> StridedSample:
        """``rows`` rows of ``device`` at an even stride with ``row_bias`` (n,) float32,
        kept per part (with the bias of the last one asked for)."""
        cp, key = self.context.cupy, (id(device), rows)
        with self._lock:
            held = self._samples.get(key)
        if held is None or held.device is not device:
            picked = cp.arange(rows, dtype=cp.int64) * (device.n // rows)
            held = StridedSample(device, picked, cp.ascontiguousarray(device.words[:, picked]),
                                 device.scale[picked], cp.abs(device.scale[: device.n]).max())
        if held.row_bias is not row_bias:
            terms = cp.stack([held.scale_peak, row_bias[: device.n].min()]).astype(cp.float32)
            held = replace(held, row_bias=row_bias, bias=row_bias[held.picked], terms=terms)
        with self._lock:
            self._samples[key] = held
        return held

    def prune(self, live: set) -> None:
        """Drop the samples of device codes whose id is not in ``live``."""
        with self._lock:
            self._samples = {key: held for key, held in self._samples.items()
                             if id(held.device) in live}
