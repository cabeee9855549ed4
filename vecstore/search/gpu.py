"""Exhaustive scan on an NVIDIA GPU: codes resident in device memory, scored and reduced to
a top-k by the fused kernels in ``vecstore/_cuda/``.

CuPy is imported only when a GPU path is asked for, so the CPU package never needs it.
Kernels compile with NVRTC at first use (CuPy caches the binaries on disk).
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, replace
from functools import lru_cache, partial

import numpy as np

from vecstore.errors import GpuUnavailable, InvalidArgument, OutOfDeviceMemory

BLOCK_THREADS = 256
# Largest k a kernel keeps per block; bigger searches run on the CPU.
MAX_K = 1024
# Queries one block scores together, by batch size.
QUERY_GROUPS = (1, 4, 8)
DEFAULT_BUDGET_FRACTION = 0.8
DEFAULT_SHARED_LIMIT = 48 * 1024
# Single queries at widths dividing 32 score by a (dim x levels) table up to this size.
TABLE_BYTES = 32 * 1024
# Threads of the kernel that merges per-block candidates into each query's k best.
MERGE_THREADS = 256
# Up to this k, scan and merge kernels keep each warp's k best in registers (WarpTopK in
# _cuda/topk.cuh) instead of a shared list per block that is sorted with barriers; the
# merge then runs up to MERGE_WARP_THREADS threads, a lane per block's list.
WARP_TOP_MAX_K = 32
MERGE_WARP_THREADS = 1024
# TurboQuant batches of at least this many queries run on the tensor cores (at 1M rows,
# d = 384, on an H200: 0.41 ms for 8 queries against 0.63 ms on the CUDA cores, 0.39
# against 1.07 for 16).
BATCH_MIN_QUERIES = 8
# Tensor-core path: fp16 rows dequantized per tile, fp16 scores per query chunk and tile,
# rows per top-k slice, and the candidate buffer of one query chunk. Big tiles keep the
# launches per search few.
TILE_BYTES = 48 << 20
TILE_SCORE_BYTES = 64 << 20
SLICE_ROWS = 8192
# Single-query plans kept (one per part, codec, metric and k; gpu_query.py).
MAX_PLANS = 64
# Batch plans kept (one per part, codec, metric, k and batch size; gpu_batch.py). Each
# holds its search's buffers (tens to hundreds of MB), so few are kept.
MAX_BATCH_PLANS = 2
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


def _import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise GpuUnavailable(
            f"CuPy is not installed ({exc}); install vecstore[gpu] (CUDA 13) or "
            "vecstore[gpu-cu12] (CUDA 12)"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise GpuUnavailable(f"CUDA reports no usable device: {exc}") from None
    if count < 1:
        raise GpuUnavailable("CUDA reports no GPU on this machine")
    return cupy


@lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """Why the GPU path cannot run here, or None when it can."""
    try:
        _import_cupy()
    except GpuUnavailable as exc:
        return str(exc)
    return None


def _family(codec) -> str | None:
    """"tq" (TurboQuant MSE codes, tq{b} and tq{b}c), "prod" (TurboQuant_prod,
    tq{b}-prod), "table" (trained PQ, MIB with asymmetric scoring: scores are sums of
    per-value table entries), "hamming" (trained 1-bit MIB with Hamming scoring) or None."""
    from vecstore.codecs.mib import MIBCodec
    from vecstore.codecs.pq import ProductQuantizer
    from vecstore.codecs.turboquant import TurboQuantMSE, TurboQuantProd

    if isinstance(codec, TurboQuantMSE):
        return "tq"
    if isinstance(codec, TurboQuantProd):
        return "prod"
    if isinstance(codec, ProductQuantizer) and codec.is_trained:
        return "table"
    if isinstance(codec, MIBCodec) and codec.is_trained:
        return "table" if codec.scoring == "asymmetric" else "hamming"
    return None


def supports(codec) -> bool:
    """Whether a GPU kernel scores ``codec``'s codes: TurboQuant (``tq{b}``, ``tq{b}c``,
    ``tq{b}-prod``), PQ and MIB (asymmetric or Hamming)."""
    return _family(codec) is not None


@dataclass(frozen=True)
class CodeFormat:
    """How a codec's codes look to the kernel: the leading ``index_bytes`` of a code hold
    ``values`` packed ``bits``-bit values."""

    index_bytes: int
    bits: int
    values: int


def code_format(codec) -> CodeFormat:
    from vecstore.codecs.pq import ProductQuantizer

    if _family(codec) in ("tq", "prod"):
        return CodeFormat(codec.index_bytes, codec.mse_bits, codec.rot_dim)
    if isinstance(codec, ProductQuantizer):
        return CodeFormat(codec.code_size, codec.nbits, codec.m)
    return CodeFormat(codec.code_size, codec.bits, codec.rot_dim)


def query_tables(codec, q: np.ndarray) -> np.ndarray:
    """Per-query score tables (nq, values, 2**bits) float32 of a "table" codec: PQ
    inner-product tables, or MIB rotated query times each dimension's levels."""
    from vecstore.codecs.pq import ProductQuantizer

    if isinstance(codec, ProductQuantizer):
        subvectors = q.reshape(-1, codec.m, codec.dsub).transpose(1, 0, 2)
        return np.ascontiguousarray((subvectors @ codec._centroids_t).transpose(1, 0, 2))
    rotated = codec.rotate(q)
    return np.ascontiguousarray(rotated[:, :, None] * codec.levels.T[None, :, :])


def kernel_source(name: str) -> str:
    """The text of ``vecstore/_cuda/<name>`` with its ``#include "..."`` lines replaced by
    the files they name (NVRTC compiles a string, not a file)."""
    from importlib import resources

    text = resources.files("vecstore._cuda").joinpath(name).read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith('#include "'):
            lines.append(kernel_source(line.split('"')[1]))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _current_device() -> int:
    return _import_cupy().cuda.runtime.getDevice()


def _kernel(source: str, name: str):
    """The compiled kernel ``name`` (a template instance) of ``cuda/<source>``, loaded on
    the current device (a module belongs to one device's context, so each device keeps
    its own, as ``cupy.memoize(for_each_device=True)`` does)."""
    return _device_kernel(source, name, _current_device())


@lru_cache(maxsize=128)
def _device_kernel(source: str, name: str, device: int):
    """``_kernel`` on ``device`` (the current one)."""
    cupy = _import_cupy()
    module = cupy.RawModule(code=kernel_source(source), options=("-std=c++17",),
                            name_expressions=[name])
    return module.get_function(name)


def _hopper_kernel(source: str, name: str):
    """``_kernel`` for sources with Hopper-only instructions (wgmma), which need the
    architecture-specific target sm_90a. CuPy compiles for the plain architecture, so the
    program is compiled here with NVRTC and its binary loaded as a module."""
    return _device_hopper_kernel(source, name, _current_device())


@lru_cache(maxsize=32)
def _device_hopper_kernel(source: str, name: str, device: int):
    """``_hopper_kernel`` on ``device`` (the current one)."""
    cupy = _import_cupy()
    from cupy_backends.cuda.libs import nvrtc

    program = nvrtc.createProgram(kernel_source(source), source, [], [])
    try:
        nvrtc.addNameExpression(program, name)
        try:
            nvrtc.compileProgram(program, ["-std=c++17", "-arch=sm_90a"])
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"{source}: {nvrtc.getProgramLog(program)}") from exc
        lowered = nvrtc.getLoweredName(program, name)
        module = cupy.cuda.function.Module()
        module.load(nvrtc.getCUBIN(program))
    finally:
        nvrtc.destroyProgram(program)
    return _ModuleFunction(module, module.get_function(lowered))


@dataclass
class _ModuleFunction:
    """A kernel with the module that holds it (a module's kernels go when it does)."""

    module: object
    function: object
    allowed_shared: int = DEFAULT_SHARED_LIMIT

    def __call__(self, grid, block, args, shared_mem: int = 0):
        self.function(grid, block, args, shared_mem=shared_mem)

    def allow_shared(self, size: int) -> None:
        """Let launches use ``size`` bytes of dynamic shared memory (above the default)."""
        from cupy.cuda import driver

        if size > self.allowed_shared:
            driver.funcSetAttribute(self.function.ptr,
                                    driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, size)
            self.allowed_shared = size


def _tq_kernel(bits: int, group: int, table: bool, dim: int, given_table: bool, prod: bool,
               warp_top: bool):
    flags = ",".join(str(flag).lower() for flag in (table, dim, given_table, prod, warp_top))
    return _kernel("tq_scan.cu", f"tq_scan<{bits},{group},{flags}>")


@lru_cache(maxsize=64)
def _int8_table(centroids: bytes) -> tuple[tuple[np.uint32, ...], float]:
    """16 float32 ``centroids`` as tq_mma_scan's int8 table, four uint32 words of four
    centroids each (centroid i in byte i % 4 of word i // 4), and the scale they were
    rounded at (127 / max|centroid|)."""
    values = np.frombuffer(centroids, dtype=np.float32)
    scale = 127.0 / float(np.abs(values).max())
    rounded = np.rint(values * scale).astype(np.int8)
    return tuple(np.frombuffer(rounded.tobytes(), dtype=np.uint32)), scale


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


@lru_cache(maxsize=64)
def _device_constant(data: bytes, dtype: str = "float32"):
    """Small constant arrays (a codec's centroids) on the device, uploaded once."""
    cupy = _import_cupy()
    return cupy.asarray(np.frombuffer(data, dtype=dtype))


def _gemm(cupy, a, a_rows: int, b, b_rows: int, depth: int, out, ld_out: int) -> None:
    """out[j, i] = <a[i], b[j]> for row-major a (a_rows, depth) and b (b_rows, depth), both
    fp16 (on the tensor cores) or both float32, into ``out`` of their dtype with row
    stride ``ld_out``; fp32 accumulation, on the current stream (no allocation, so a
    graph can capture it)."""
    from cupy_backends.cuda.api import runtime
    from cupy_backends.cuda.libs import cublas

    data_type = runtime.CUDA_R_16F if a.dtype == np.float16 else runtime.CUDA_R_32F
    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    cublas.gemmEx(handle, cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, a_rows, b_rows, depth,
                  _ONE.ctypes.data, a.data.ptr, data_type, depth, b.data.ptr, data_type,
                  depth, _ZERO.ctypes.data, out.data.ptr, data_type, ld_out,
                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)


_ONE = np.ones(1, dtype=np.float32)
_ZERO = np.zeros(1, dtype=np.float32)
# cublasComputeType_t and cublasGemmAlgo_t values (cublas_api.h).
CUBLAS_COMPUTE_32F = 68
CUBLAS_GEMM_DEFAULT = -1


EMPTY_SLOT = 0xFFFFFFFFFFFFFFFF
# cudaMemcpyKind value (driver_types.h): CuPy's own copies to the host refuse to be
# captured in a graph, so a fused search's results go back by the runtime call.
DEVICE_TO_HOST = 2


def _pow2_at_least(n: int) -> int:
    return 1 << math.ceil(math.log2(max(n, 1)))


def _top_list_size(k: int, warp_top: bool) -> int:
    """The ``size`` of a scan kernel's shared list per query: with warp lists (WarpTopK)
    the warps' lists side by side for the final combine (BLOCK_THREADS values), else the
    block's k best plus room for two steps of candidates (BlockTopK)."""
    return BLOCK_THREADS if warp_top else _pow2_at_least(k + 2 * BLOCK_THREADS)


@dataclass
class DeviceCodes:
    """One part's codes on the GPU in the kernel's layout.

    words : (W, n_pad) uint32, word w of every row's packed indices, rows contiguous
    scale : (n,) float32, the factor on <q_rot, y_mse> (||x||, or ||x|| / <y, y_mse>)
    sq_norms : (n,) float32, ||x||^2 for l2 keys
    signs : (S, n_pad) uint32, QJL sign words of tq{b}-prod codes (else None)
    residual : (n,) float32, sqrt(pi/2)/D * ||r|| of tq{b}-prod codes (else None)
    """

    words: object
    scale: object
    sq_norms: object
    n: int
    zeros: object = None
    signs: object = None
    residual: object = None

    def __post_init__(self):
        if self.zeros is None:
            self.zeros = self.scale * 0

    def buffers(self) -> list:
        """words, scale, sq_norms, signs, residual (the order of a host layout)."""
        return [self.words, self.scale, self.sq_norms, self.signs, self.residual]

    @property
    def nbytes(self) -> int:
        held = [a.nbytes for a in (*self.buffers(), self.zeros) if a is not None]
        return int(sum(held))


def transposed_words(packed: np.ndarray) -> np.ndarray:
    """Bytes (n, B) uint8 as the kernels' words (ceil(B / 4), n_pad) uint32: word w of
    every row contiguous, rows padded with zeros to a multiple of 32."""
    n, width = packed.shape
    n_words = -(-width // 4)
    n_pad = -(-max(n, 1) // 32) * 32
    padded = np.zeros((n_pad, n_words * 4), dtype=np.uint8)
    padded[:n, :width] = packed
    return np.ascontiguousarray(padded.view("<u4").T)


def prod_layout(codec, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QJL sign words (S, n_pad) uint32 and residual factors (n,) float32 of tq{b}-prod
    codes (n, code_size) uint8."""
    signs = transposed_words(codes[:, codec.index_bytes : codec.norm_offset])
    return signs, (codec.qjl_scale * codec.residual_norms(codes)).astype(np.float32)


def device_layout(codec, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host arrays of ``DeviceCodes`` for codes (n, code_size) uint8: words (W, n_pad)
    uint32, scale (n,) float32, squared norms (n,) float32."""
    words = transposed_words(codes[:, : code_format(codec).index_bytes])
    norms = codec.norms(codes)
    if _family(codec) in ("table", "hamming"):
        scale = np.ones(codes.shape[0], dtype=np.float32)
    elif hasattr(codec, "corrections"):
        scale = norms * codec.corrections(codes)
    else:
        scale = norms
    return words, scale.astype(np.float32), np.square(norms, dtype=np.float32)


def host_layout(codec, codes: np.ndarray) -> list[np.ndarray | None]:
    """words, scale, sq_norms, signs, residual of ``codes`` (n, code_size) uint8 on the
    host, as ``DeviceCodes`` holds them (the last two None unless the codec is
    tq{b}-prod)."""
    words, scale, sq_norms = device_layout(codec, codes)
    extra = prod_layout(codec, codes) if _family(codec) == "prod" else (None, None)
    return [words, scale, sq_norms, *extra]


class GpuScanner:
    """Keeps parts' codes resident on the GPU within a byte budget and scans them.

    ``budget_bytes`` caps the device memory held by resident codes (default: 80% of the
    GPU's memory when first used); uploading past it raises OutOfDeviceMemory.
    ``uploaded_rows`` counts the rows copied to the device so far.
    """

    def __init__(self, budget_bytes: int | None = None):
        self.cupy = _import_cupy()
        if budget_bytes is None:
            _, total = self.cupy.cuda.runtime.memGetInfo()
            budget_bytes = int(total * DEFAULT_BUDGET_FRACTION)
        self.budget_bytes = budget_bytes
        self._resident: dict[object, DeviceCodes] = {}
        # Other holders of device codes on this scanner's budget (a collection's arena,
        # gpu_arena.py): each has ``nbytes`` and ``device``, its current DeviceCodes.
        self._holders = weakref.WeakSet()
        self._rotation_rows: dict[int, tuple] = {}
        self._plans: dict[tuple, object] = {}
        self._batch_plans: dict[tuple, object] = {}
        self._samples: dict[tuple, StridedSample] = {}
        self._masked: dict[tuple, tuple] = {}
        self._zero_buffer = None
        self._staging = threading.local()
        # "mma" or "auto": 4-bit batches use the fused tensor-core kernel where it runs
        # (Hopper; faster at every batch size measured, bench/GPU_NOTES.md); "gemm": the
        # GEMM pipeline.
        self.batch_kernel = "auto"
        self.scan_blocks_per_multiprocessor = 4
        self.uploaded_rows = 0
        self._lock = threading.Lock()
        properties = self.cupy.cuda.runtime.getDeviceProperties(self.cupy.cuda.Device().id)
        self.multiprocessors = int(properties["multiProcessorCount"])
        # The fused batch kernel uses wgmma, which only Hopper (compute capability 9.0) has.
        self.hopper = int(properties["major"]) == 9
        self.shared_limit = int(properties.get("sharedMemPerBlockOptin", DEFAULT_SHARED_LIMIT))

    @property
    def resident_bytes(self) -> int:
        """Device bytes held by resident codes and by every holder on this scanner."""
        held = sum(codes.nbytes for codes in self._resident.values())
        return held + sum(holder.nbytes for holder in list(self._holders))

    def hold(self, holder) -> None:
        """Count ``holder``'s device bytes (``holder.nbytes``) against the budget while it
        lives, and keep the plans of its current codes (``holder.device``)."""
        with self._lock:
            self._holders.add(holder)

    def forget(self, holder) -> None:
        """Stop counting ``holder`` and drop the plans built on its codes."""
        with self._lock:
            self._holders.discard(holder)
        self.prune()

    def check_budget(self, needed: int, rows: int) -> None:
        """OutOfDeviceMemory unless ``needed`` more bytes (for ``rows`` rows) fit."""
        if self.resident_bytes + needed > self.budget_bytes:
            raise OutOfDeviceMemory(
                f"{rows:,} more codes need {needed / 2**20:,.1f} MiB of GPU "
                f"memory; {self.resident_bytes / 2**20:,.1f} of the "
                f"{self.budget_bytes / 2**20:,.1f} MiB budget are in use"
            )

    def resident(self, key, codec, codes: np.ndarray) -> DeviceCodes:
        """The device copy of ``codes`` stored under ``key``, uploaded on first use."""
        with self._lock:
            found = self._resident.get(key)
            if found is not None:
                return found
            arrays = host_layout(codec, codes)
            self.check_budget(sum(a.nbytes for a in arrays if a is not None)
                               + arrays[1].nbytes, codes.shape[0])
            words, scale, sq_norms, signs, residual = (
                None if a is None else self.cupy.asarray(a) for a in arrays)
            device = DeviceCodes(words, scale, sq_norms, codes.shape[0], signs=signs,
                                 residual=residual)
            self._resident[key] = device
            self.uploaded_rows += codes.shape[0]
            return device

    def retain(self, keys) -> None:
        """Free resident codes whose key is not in ``keys``, and the plans of codes no
        longer held."""
        keep = set(keys)
        with self._lock:
            for key in [k for k in self._resident if k not in keep]:
                del self._resident[key]
        self.prune()

    def prune(self) -> None:
        """Drop the plans, samples and masks of device codes that neither the resident
        codes nor a holder holds now (a holder's codes are replaced as it grows; a plan of
        old codes would keep their buffers)."""
        with self._lock:
            live = {id(codes) for codes in self._resident.values()}
            live |= {id(holder.device) for holder in list(self._holders)}
            self._plans = {key: plan for key, plan in self._plans.items()
                           if id(plan.device) in live}
            self._batch_plans = {key: plan for key, plan in self._batch_plans.items()
                                 if id(plan.device) in live}
            self._samples = {key: held for key, held in self._samples.items()
                             if id(held.device) in live}
            self._masked = {key: held for key, held in self._masked.items()
                            if id(held[0]) in live}

    def _rotate(self, codec, queries: np.ndarray):
        """Rotated queries (nq, D) float32 for numpy queries (nq, d): on the device for
        dense rotations (the matrix is uploaded once per codec), else on the host."""
        from vecstore.codecs.rotation import DenseRotation

        if not isinstance(codec.rotation, DenseRotation):
            return codec.prepare_query(queries).rotated
        return self.upload(queries) @ self.rotation_rows(codec).T

    def upload(self, array: np.ndarray, out=None, dtype=np.float32):
        """``array`` as ``dtype`` on the device (into ``out``, a device array of its shape
        and dtype, when given), copied through a pinned buffer of this thread's (grown as
        needed) so that the copy does not block the host. The next upload of the thread
        waits for this copy before it refills the buffer (a search over several parts
        uploads each part's queries before any copy has run)."""
        array = np.asarray(array, dtype=dtype)
        staged = self._staged(array.nbytes).view(array.dtype).reshape(array.shape)
        np.copyto(staged, array)
        device = self.cupy.empty(array.shape, dtype=array.dtype) if out is None else out
        device.set(staged)
        self._staging.copied.record()
        return device

    def upload_many(self, arrays: list[np.ndarray]) -> list:
        """Device copies of ``arrays`` (contiguous, any shapes and dtypes) made by one
        host-to-device copy through the pinned buffer (``upload``): views of one device
        buffer, each at a 16-byte boundary."""
        starts = np.cumsum([0] + [-(-a.nbytes // 16) * 16 for a in arrays])
        staged = self._staged(int(starts[-1]))[: int(starts[-1])]
        for array, start in zip(arrays, starts, strict=False):
            staged[start : start + array.nbytes] = array.reshape(-1).view(np.uint8)
        device = self.cupy.empty(staged.size, dtype=self.cupy.uint8)
        device.set(staged)
        self._staging.copied.record()
        return [device[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
                for a, start in zip(arrays, starts, strict=False)]

    def set_row_biases(self, changes: np.ndarray, base_sq_norms, device: DeviceCodes) -> None:
        """Write the row biases of ``device`` for the rows named by ``changes`` (c,) int64:
        a live row as itself (bias 0, or its ``base_sq_norms`` value for l2), a deleted one
        as ~row (+inf). One copy up and one launch (_cuda/arena.cu)."""
        on_device = self.upload(changes, dtype=np.int64)
        _kernel("arena.cu", "set_row_biases")(
            (-(-changes.size // BLOCK_THREADS),), (BLOCK_THREADS,),
            (on_device, np.int32(changes.size), base_sq_norms, device.zeros, device.sq_norms))

    def _staged(self, nbytes: int) -> np.ndarray:
        """This thread's pinned staging buffer (at least ``nbytes``) uint8, once the
        copy last made from it has run."""
        import cupyx

        staging = self._staging
        if getattr(staging, "copied", None) is not None:
            staging.copied.synchronize()
        else:
            staging.copied = self.cupy.cuda.Event()
        if getattr(staging, "buffer", None) is None or staging.buffer.size < nbytes:
            staging.buffer = cupyx.empty_pinned(_pow2_at_least(max(nbytes, 1)), dtype=np.uint8)
        return staging.buffer[:nbytes]

    def scan(self, codec, device: DeviceCodes, queries: np.ndarray, metric: str, k: int,
             query_sq_norms: np.ndarray | None, mask: np.ndarray | None = None,
             batch: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Keys (nq, k) float32 (smaller is better, +inf when empty) and rows (nq, k) int64
        (-1 when empty) of the best k rows of one part for queries (nq, d) float32: a
        numpy array, or a CuPy array already on the device (the TurboQuant batch path then
        skips the upload).

        ``mask`` (n,) bool marks the rows that may be returned (None: all). ``batch``
        picks the tensor-core path for TurboQuant codes (default: from
        ``BATCH_MIN_QUERIES`` queries on).
        """
        return self.submit(codec, device, queries, metric, k, query_sq_norms, mask,
                           batch).result()

    def submit(self, codec, device: DeviceCodes, queries: np.ndarray, metric: str, k: int,
               query_sq_norms: np.ndarray | None, mask: np.ndarray | None = None,
               batch: bool | None = None) -> PendingScan:
        """Launch ``scan``'s kernels and return without waiting for them, so the scans of
        several parts overlap with the host work of launching the next."""
        cp = self.cupy
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"the GPU kernels keep at most {MAX_K} results per query")
        k = min(k, device.n)
        nq = queries.shape[0]
        family = _family(codec)
        batched = family == "tq" and (nq >= BATCH_MIN_QUERIES if batch is None else batch)
        if isinstance(queries, cp.ndarray) and not batched:
            queries = cp.asnumpy(queries)
        key_scale, row_bias, repeated = self._row_terms(metric, device, mask)
        if nq == 1 and family == "tq" and not batch and repeated:
            pending = self._plan(codec, device, metric, k, mask, row_bias).submit(
                queries[0], None if query_sq_norms is None else float(query_sq_norms[0]))
            if pending is not None:
                return pending
        if batched and repeated:
            best = self._batch_plan(codec, device, metric, k, nq, mask, row_bias).submit(
                queries, query_sq_norms)
            if best is not None:
                return PendingScan(self.cupy, best)
        if metric == "l2":
            query_bias = cp.asarray(query_sq_norms, dtype=cp.float32)
        else:
            query_bias = self._zeros(nq)
        if batched:
            best = self._scan_batch(codec, device, queries, k, key_scale, row_bias, query_bias)
        else:
            scan = self._scan_hamming if family == "hamming" else self._scan_fused
            best = self._merge(scan(codec, device, queries, k, key_scale, row_bias,
                                    query_bias), k)
        return PendingScan(self.cupy, best)

    @staticmethod
    def metric_terms(metric: str, device: DeviceCodes) -> tuple[np.float32, object]:
        """The key's factor on the dot product and its per-row bias (n,) float32: keys are
        -dot * scale (ip, cosine) or ||q||^2 - 2 dot * norm + norm^2 (l2)."""
        if metric == "l2":
            return np.float32(-2.0), device.sq_norms
        return np.float32(-1.0), device.zeros

    def _row_terms(self, metric: str, device: DeviceCodes, mask: np.ndarray | None):
        """``metric_terms`` with the rows outside ``mask`` given a bias of +inf, and
        whether that bias was already on the device: the bias of the last mask seen per
        part and metric is kept, so a mask that stays the same object between searches
        (a segment's live rows; live masks are replaced, never modified) goes up once."""
        key_scale, row_bias = self.metric_terms(metric, device)
        if mask is None:
            return key_scale, row_bias, True
        key = (id(device), metric)
        with self._lock:
            held = self._masked.get(key)
        if held is not None and held[0] is device and held[1] is mask:
            return key_scale, held[2], True
        # The mask goes up as bytes (n, not 4n) and becomes the +inf bias on the device.
        cp = self.cupy
        masked = cp.where(cp.asarray(mask), row_bias[: device.n], cp.float32(np.inf))
        with self._lock:
            self._masked[key] = (device, mask, masked)
        return key_scale, masked, False

    def _plan(self, codec, device: DeviceCodes, metric: str, k: int,
              mask: np.ndarray | None, row_bias):
        """The ``SingleQueryPlan`` of (device, codec, metric, k) and ``mask`` (whose row
        bias is ``row_bias``), built on first use."""
        from vecstore.search.gpu_query import SingleQueryPlan

        key = (id(device), id(codec), metric, k)
        with self._lock:
            plan = self._plans.get(key)
            if plan is None or not plan.serves(device, mask) or plan.codec is not codec:
                while len(self._plans) >= MAX_PLANS:
                    del self._plans[next(iter(self._plans))]
                plan = self._plans[key] = SingleQueryPlan(self, codec, device, metric, k,
                                                          mask, row_bias)
        return plan

    def _batch_plan(self, codec, device: DeviceCodes, metric: str, k: int, nq: int,
                    mask: np.ndarray | None, row_bias):
        """The ``BatchPlan`` of (device, codec, metric, k, nq, ``batch_kernel``) and
        ``mask`` (whose row bias is ``row_bias``), built on first use; the oldest goes
        past MAX_BATCH_PLANS."""
        from vecstore.search.gpu_batch import BatchPlan

        key = (id(device), id(codec), metric, k, nq, self.batch_kernel)
        with self._lock:
            plan = self._batch_plans.pop(key, None)
            if plan is None or not plan.serves(codec, device, mask, row_bias):
                while len(self._batch_plans) >= MAX_BATCH_PLANS:
                    del self._batch_plans[next(iter(self._batch_plans))]
                plan = BatchPlan(self, codec, device, metric, k, nq, mask, row_bias)
            self._batch_plans[key] = plan
        return plan

    def strided_sample(self, device: DeviceCodes, rows: int, row_bias) -> StridedSample:
        """``rows`` rows of ``device`` at an even stride with ``row_bias`` (n,) float32,
        kept per part (with the bias of the last one asked for)."""
        cp, key = self.cupy, (id(device), rows)
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

    def rotation_rows(self, codec):
        """A dense rotation's matrix (D, d) float32 on the device, uploaded once."""
        rotation = codec.rotation
        held = self._rotation_rows.get(id(rotation))
        if held is None or held[0] is not rotation:
            held = (rotation, self.cupy.asarray(rotation.matrix, dtype=self.cupy.float32))
            self._rotation_rows[id(rotation)] = held
        return held[1]

    def _zeros(self, count: int):
        """A device float32 array of ``count`` zeros (kept for reuse; never written)."""
        if self._zero_buffer is None or self._zero_buffer.size < count:
            self._zero_buffer = self.cupy.zeros(_pow2_at_least(count), dtype=self.cupy.float32)
        return self._zero_buffer[:count]

    def _merge(self, candidates, k: int):
        """Each query's k best of per-block candidates (nq, blocks, k) uint64, sorted, as
        (nq, k) uint64 on the device (merge_topk; a single block's are sorted already)."""
        launch, best = self._merge_launch(candidates, k)
        launch()
        return best

    def _merge_launch(self, candidates, k: int, unpacked: tuple[int, int] | None = None):
        """``_merge`` as a callable that launches it on the current stream, and its
        output. ``unpacked``: addresses of (nq, k) float32 keys and int64 rows (as
        ``unpack_keys``) that the kernel writes too, even for a single block."""
        nq, blocks = candidates.shape[0], candidates.shape[1]
        if blocks == 1 and unpacked is None:
            return lambda: None, candidates.reshape(nq, k)
        best = self.cupy.empty((nq, k), dtype=self.cupy.uint64)
        keys, rows = (np.uint64(address) for address in unpacked or (0, 0))
        if k <= WARP_TOP_MAX_K:
            threads = min(MERGE_WARP_THREADS, max(32, _pow2_at_least(blocks)))
            shared = threads * 8
            kernel = _kernel("merge_topk.cu", "merge_topk_warps")
            args = (candidates, np.int32(blocks), np.int32(k), best, keys, rows)
        else:
            threads = MERGE_THREADS
            size = _pow2_at_least(k + 2 * MERGE_THREADS)
            shared = size * 8 + 8
            self._check_shared(shared, f"k={k}")
            kernel = _kernel("merge_topk.cu", "merge_topk")
            if shared > DEFAULT_SHARED_LIMIT:
                kernel.max_dynamic_shared_size_bytes = shared
            args = (candidates, np.int32(blocks), np.int32(k), np.int32(size), best, keys, rows)

        def launch():
            kernel((nq,), (threads,), args, shared_mem=shared)

        return launch, best

    def _row_blocks(self, n: int) -> tuple[int, int]:
        """Blocks and rows per block of a one-thread-per-row scan of n rows:
        ``scan_blocks_per_multiprocessor`` blocks per multiprocessor, rows per block a
        multiple of a warp (so that the blocks share the rows evenly)."""
        row_blocks = max(1, min(-(-n // BLOCK_THREADS),
                                self.scan_blocks_per_multiprocessor * self.multiprocessors))
        rows_per_block = -(-n // row_blocks)
        rows_per_block = -(-rows_per_block // 32) * 32
        return -(-n // rows_per_block), rows_per_block

    def _check_shared(self, shared: int, what: str) -> None:
        if shared > self.shared_limit:
            raise InvalidArgument(f"{what} needs {shared} bytes of shared memory per block; "
                                  f"this GPU allows {self.shared_limit}")

    def _scan_fused(self, codec, device: DeviceCodes, queries: np.ndarray, k: int,
                    key_scale, row_bias, query_bias):
        """tq_scan: CUDA cores, one thread per row; per-block candidates (nq, blocks, k)."""
        cp = self.cupy
        family = _family(codec)
        unused = _device_constant(np.zeros(1, dtype=np.float32).tobytes())
        tables = sketched = unused
        if family == "table":
            tables = cp.asarray(query_tables(codec, queries))
            rotated = cp.zeros((queries.shape[0], code_format(codec).values), dtype=cp.float32)
        elif family == "prod":
            state = codec.prepare_query(queries)
            rotated, sketched = state.rotated, cp.asarray(state.sketched, dtype=cp.float32)
        else:
            rotated = self._rotate(codec, queries)
        query_rows = cp.ascontiguousarray(cp.asarray(rotated, dtype=cp.float32))
        launch, out = self._fused_launch(codec, device, query_rows, k, key_scale, row_bias,
                                         query_bias, tables, sketched)
        launch()
        return out

    def _fused_launch(self, codec, device: DeviceCodes, query_rows, k: int, key_scale,
                      row_bias, query_bias, tables, sketched):
        """tq_scan's launch for rotated queries (nq, D) float32 on the device (zeros for
        "table" codecs, whose ``tables`` (nq, D, levels) hold the scores); ``sketched``
        (nq, D) are tq{b}-prod's sketched queries. Returns a callable that launches it on
        the current stream and its output, per-block candidates (nq, blocks, k) uint64."""
        cp = self.cupy
        fmt = code_format(codec)
        given, prod = _family(codec) == "table", _family(codec) == "prod"
        nq, dim, levels = query_rows.shape[0], fmt.values, 1 << fmt.bits
        signs, residual = (device.signs, device.residual) if prod else (device.words, sketched)
        centroids = _device_constant(
            (np.zeros(levels, dtype=np.float32) if given else codec._centroids32).tobytes())
        group = 1 if given else next(g for g in QUERY_GROUPS if g >= min(nq, QUERY_GROUPS[-1]))
        # Groups of queries keep the block's lists: a warp's list per query costs
        # registers, and blocks per multiprocessor with them (NQ = 4: 46 -> 76).
        warp_top = k <= WARP_TOP_MAX_K and group == 1
        size = _top_list_size(k, warp_top)
        shared = group * size * 8 + group * dim * 4 + levels * 4 + (group + 1) * 4
        table = given or (group == 1 and 32 % fmt.bits == 0
                          and dim * levels * 4 <= TABLE_BYTES)
        # A given table is dynamic shared memory; a table the kernel builds is static.
        # Tables cover the whole last word of values (table_dim in tq_scan.cu).
        table_dim = (-(-dim * fmt.bits // 32) * (32 // fmt.bits) if 32 % fmt.bits == 0
                     else dim)
        static = table_dim * levels * 4 if table and not given else 0
        shared += table_dim * levels * 4 if given else 0
        shared += group * dim * 4 if prod else 0
        self._check_shared(static + shared, f"k={k} with {dim} values of {fmt.bits} bits")
        kernel = _tq_kernel(fmt.bits, group, table, dim, given, prod, warp_top)
        if static + shared > DEFAULT_SHARED_LIMIT:
            kernel.max_dynamic_shared_size_bytes = shared
        row_blocks, rows_per_block = self._row_blocks(device.n)
        out = cp.empty((nq, row_blocks, k), dtype=cp.uint64)
        args = (device.words, np.int32(device.words.shape[0]), np.int32(device.n),
                np.int32(device.words.shape[1]), device.scale, row_bias, query_rows,
                query_bias, np.int32(nq), np.int32(dim), centroids, key_scale, np.int32(k),
                np.int32(size), np.int32(rows_per_block), tables, signs, sketched, residual,
                out)
        grid = (row_blocks, -(-nq // group))

        def launch():
            kernel(grid, (BLOCK_THREADS,), args, shared_mem=shared)

        return launch, out

    def _scan_hamming(self, codec, device: DeviceCodes, queries: np.ndarray, k: int,
                      key_scale, row_bias, query_bias):
        """hamming_scan: popcount over 32-bit words; per-block candidates (nq, blocks, k)."""
        cp = self.cupy
        state = codec.prepare_query(queries)
        n_words = device.words.shape[0]
        bits = np.zeros((queries.shape[0], n_words * 4), dtype=np.uint8)
        bits[:, : state.bits.shape[1]] = state.bits
        factor = (state.norms * np.float32(codec.rms_norm)).astype(np.float32)
        warp_top = k <= WARP_TOP_MAX_K
        size = _top_list_size(k, warp_top)
        shared = size * 8 + 8
        self._check_shared(shared, f"k={k}")
        kernel = _kernel("hamming_scan.cu", f"hamming_scan<{n_words},{str(warp_top).lower()}>")
        if shared > DEFAULT_SHARED_LIMIT:
            kernel.max_dynamic_shared_size_bytes = shared
        row_blocks, rows_per_block = self._row_blocks(device.n)
        out = cp.empty((queries.shape[0], row_blocks, k), dtype=cp.uint64)
        kernel((row_blocks, queries.shape[0]), (BLOCK_THREADS,),
               (device.words, np.int32(device.n), np.int32(device.words.shape[1]),
                device.scale, row_bias, cp.asarray(bits.view("<u4")), cp.asarray(factor),
                query_bias, np.float32(np.pi / codec.rot_dim), key_scale, np.int32(k),
                np.int32(size), np.int32(rows_per_block), out),
               shared_mem=shared)
        return out

    def _scan_batch(self, codec, device: DeviceCodes, queries: np.ndarray, k: int,
                    key_scale, row_bias, query_bias):
        """Tensor-core path for TurboQuant codes: the best k packed keys (nq, k) uint64 on
        the device, re-scored in float32 (see ``BatchScan``)."""
        return BatchScan(self, codec, device, queries, k, key_scale, row_bias,
                         query_bias).run()


class BatchScan:
    """One search on the tensor-core path.

    Every width can run the GEMM pipeline (_cuda/tq_batch.cu) over all tiles of rows:
    dequantize a tile to fp16, multiply by cuBLAS, keep each slice's Kc best, merge and
    re-score in float32. When ``scanner.batch_kernel`` picks "mma", 4-bit codes over more
    than one tile run the pipeline on one tile's worth of rows taken at an even stride
    (a strided sample: collections are often ordered, by source or by frequency), which
    bounds each query's Kc-th best key; the fused kernel (_cuda/tq_mma.cu) then scans every
    row against those bounds and tq_finish re-scores its candidates. A query whose
    candidates overflow their buffer is rescanned by the pipeline.

    The fused search holds every buffer it uses from construction on (and the sample
    dequantized), so that ``load`` then ``enqueue`` can run again for new queries of the
    same shape, and a plan can record ``enqueue`` (``BatchPlan``, gpu_batch.py).
    """

    def __init__(self, scanner: GpuScanner, codec, device: DeviceCodes, queries: np.ndarray,
                 k: int, key_scale, row_bias, query_bias, allow_fused: bool = True):
        from vecstore.codecs.rotation import DenseRotation

        cp = self.cp = scanner.cupy
        self.scanner, self.codec, self.device = scanner, codec, device
        self.k, self.key_scale, self.row_bias, self.query_bias = k, key_scale, row_bias, query_bias
        fmt = self.fmt = code_format(codec)
        self.nq, self.dim, self.n = queries.shape[0], fmt.values, device.n
        self.n_words, self.n_pad = device.words.shape
        self.kc = max(k, min(MAX_K, max(2 * k, k + RESCORE_MARGIN)))
        self.size = _pow2_at_least(self.kc + 2 * BLOCK_THREADS)
        mma = allow_fused and fmt.bits == 4 and scanner.batch_kernel in ("auto", "mma")
        self.dim_pad = -(-self.dim // (32 if mma else 8)) * (32 if mma else 8)
        rows_per_tile = max(1, TILE_BYTES // (2 * self.dim_pad * SLICE_ROWS)) * SLICE_ROWS
        self.tile_rows = min(rows_per_tile, -(-self.n // SLICE_ROWS) * SLICE_ROWS)
        self.stages = mma_stages(mma_dim(self.dim_pad), scanner.shared_limit)
        self.fused = mma and self.n > self.tile_rows and self.stages > 0 and scanner.hopper
        # Dense rotations rotate on the device (``source`` holds the queries), others on
        # the host (``source`` holds the rotated queries).
        self.matrix = (scanner.rotation_rows(codec) if isinstance(codec.rotation, DenseRotation)
                       else None)
        width = codec.dim if self.matrix is not None else self.dim
        self.source = cp.empty((self.nq, width), dtype=cp.float32)
        self.rotated_source = (self.source if self.matrix is None
                               else cp.empty((self.nq, self.dim), dtype=cp.float32))
        self._query_buffers()
        self.centroids = _device_constant(codec._centroids32.tobytes())
        self.centroid_halves = _device_constant(
            codec._centroids32.astype(np.float16).tobytes(), "uint16")

        levels = 1 << fmt.bits
        self.exact_size = _pow2_at_least(self.kc)
        self.finish_shared = (self.size + self.exact_size) * 8 + levels * 4 + 8
        scanner._check_shared(self.finish_shared, f"k={k}")
        self.dequant_shared = self.n_words * (DEQUANT_ROWS + 1) * 4 + levels * 2
        scanner._check_shared(self.dequant_shared, f"{self.dim} values of {fmt.bits} bits")
        self.dequantize = _kernel("tq_batch.cu", f"tq_dequantize<{fmt.bits}>")
        if self.dequant_shared > DEFAULT_SHARED_LIMIT:
            self.dequantize.max_dynamic_shared_size_bytes = self.dequant_shared
        self.tile_topk = _kernel("tq_batch.cu", "tile_topk")
        self.finish_kernel = _kernel("tq_batch.cu", f"tq_finish<{fmt.bits}>")
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
            self.scanner.upload(queries, out=self.source)

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
        _kernel("tq_batch.cu", "prepare_queries")(
            (self.nq,), (BLOCK_THREADS,),
            (self.rotated_source, np.int32(self.dim), np.int32(self.dim_pad), self.rotated,
             self.halves, self.query_norms, null if self.int8 is None else self.int8,
             null if self.inv_scale is None else self.inv_scale))

    def _fused_buffers(self) -> None:
        """The fused search's sample, buffers, kernel and launch terms."""
        import cupyx

        cp, n, kc = self.cp, self.n, self.kc
        self.sample_slots = self.tile_rows // SLICE_ROWS
        self.sample = self.scanner.strided_sample(self.device, self.tile_rows, self.row_bias)
        expected = kc * -(-n // self.tile_rows)
        self.cap = _pow2_at_least(max(MMA_CAP_FACTOR * expected, 2 * kc))
        query_block = max(1, min(self.nq, CANDIDATE_BYTES // (8 * max(self.cap,
                                                                     self.sample_slots * kc))))
        self.query_blocks = [(first, min(self.nq, first + query_block))
                             for first in range(0, self.nq, query_block)]
        self.sampled = cp.empty((query_block, self.sample_slots, kc), dtype=cp.uint64)
        self.bounds = cp.empty(query_block, dtype=cp.uint64)
        self.found = cp.empty((query_block, self.cap), dtype=cp.uint64)
        self.counts = cp.empty(self.nq, dtype=cp.int32)
        self.next_unit = cp.empty(len(self.query_blocks), dtype=cp.int32)
        self.merges = [self.scanner._merge_launch(self.sampled[: last - first], kc)
                       for first, last in self.query_blocks]
        kernel_dim = mma_dim(self.dim_pad)
        self.mma_scan = _hopper_kernel("tq_mma.cu",
                                       f"tq_mma_scan<{kernel_dim // 32},{self.stages}>")
        self.mma_shared = mma_shared_bytes(kernel_dim, self.stages)
        self.mma_scan.allow_shared(self.mma_shared)
        self.table, centroid_scale = _int8_table(self.codec._centroids32.tobytes())
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
        blocks = self.scanner.multiprocessors
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
            rescan = BatchScan(self.scanner, self.codec, self.device,
                               self.queries[overflowed], self.k, self.key_scale, self.row_bias,
                               self.query_bias[cp.asarray(overflowed)], allow_fused=False)
            best[overflowed] = cp.asnumpy(rescan.run())
        return best

    def _all_rows(self) -> _RowSource:
        return _RowSource(self.device.words, self.device.scale, self.row_bias, self.n)

    def _pipeline_tiles(self, q_first: int, q_last: int, source: _RowSource, n_slots: int,
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

    def _dequantize(self, source: _RowSource, row0: int, rows: int) -> None:
        """Rows [row0, row0 + rows) of ``source`` as fp16 rows of ``tile``."""
        self.dequantize((-(-rows // DEQUANT_ROWS),), (BLOCK_THREADS,),
                        (source.words, np.int32(self.n_words), np.int32(source.words.shape[1]),
                         np.int32(row0), np.int32(rows), np.int32(self.dim),
                         np.int32(self.dim_pad), self.centroid_halves, self.tile),
                        shared_mem=self.dequant_shared)

    def _blas(self, *args) -> None:
        """``_gemm`` on the current stream now, or while a plan records (CuPy's cuBLAS calls
        cannot be captured in a graph), handed to ``record_blas`` as a step of its own."""
        call = partial(_gemm, self.cp, *args)
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
class _RowSource:
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
    def source(self) -> _RowSource:
        return _RowSource(self.words, self.scale, self.bias, int(self.picked.size))


@dataclass
class PendingScan:
    """A launched scan: ``best`` (nq, k) uint64, each query's packed keys sorted, on the
    device (or already in host memory)."""

    cupy: object
    best: object

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Wait for the kernels; keys (nq, k) float32 and rows (nq, k) int64, as ``scan``."""
        return unpack_keys(self.cupy.asnumpy(self.best))


def unpack_keys(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys float32 and rows int64 from the kernels' packed uint64 values (same shape);
    empty slots and masked rows (key +inf) give key +inf and row -1."""
    high = (packed >> np.uint64(32)).astype(np.uint32)
    rows = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    negative = high & np.uint32(0x80000000)
    bits = np.where(negative != 0, high ^ np.uint32(0x80000000), ~high)
    keys = bits.view(np.float32)
    empty = (packed == np.uint64(EMPTY_SLOT)) | ~np.isfinite(keys)
    return np.where(empty, np.float32(np.inf), keys), np.where(empty, -1, rows)
