"""Exhaustive scan on an NVIDIA GPU: codes resident in device memory, scored and reduced to
a top-k by the fused kernels in ``cuda/``.

CuPy is imported only when a GPU path is asked for, so the CPU package never needs it.
Kernels compile with NVRTC at first use (CuPy caches the binaries on disk).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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
# Below this many candidates the final top-k is taken on the host.
HOST_MERGE_MAX = 1 << 20


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
    """"tq" (TurboQuant MSE codes, tq{b} and tq{b}c), "table" (trained PQ, MIB with
    asymmetric scoring: scores are sums of per-value table entries) or None."""
    from vecstore.codecs.mib import MIBCodec
    from vecstore.codecs.pq import ProductQuantizer
    from vecstore.codecs.turboquant import TurboQuantMSE

    if isinstance(codec, TurboQuantMSE):
        return "tq"
    if isinstance(codec, ProductQuantizer) and codec.is_trained:
        return "table"
    if isinstance(codec, MIBCodec) and codec.is_trained and codec.scoring == "asymmetric":
        return "table"
    return None


def supports(codec) -> bool:
    """Whether a GPU kernel scores ``codec``'s codes: TurboQuant ``tq{b}``/``tq{b}c``, PQ
    and asymmetric MIB."""
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

    if _family(codec) == "tq":
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
    """The text of ``cuda/<name>``: from the installed package, else the source tree."""
    from importlib import resources

    try:
        return resources.files("vecstore._cuda").joinpath(name).read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return (Path(__file__).resolve().parents[2] / "cuda" / name).read_text()


@lru_cache(maxsize=64)
def _tq_kernel(bits: int, group: int, table: bool, dim: int, given_table: bool):
    cupy = _import_cupy()
    name = f"tq_scan<{bits},{group},{str(table).lower()},{dim},{str(given_table).lower()}>"
    module = cupy.RawModule(code=kernel_source("tq_scan.cu"), options=("-std=c++17",),
                            name_expressions=[name])
    return module.get_function(name)


@lru_cache(maxsize=64)
def _device_levels(levels: bytes):
    """A codec's centroids (float32 bytes) on the device, uploaded once."""
    cupy = _import_cupy()
    return cupy.asarray(np.frombuffer(levels, dtype=np.float32))


@dataclass
class DeviceCodes:
    """One part's codes on the GPU in the kernel's layout.

    words : (W, n_pad) uint32, word w of every row's packed indices, rows contiguous
    scale : (n,) float32, the factor on <q_rot, y_mse> (||x||, or ||x|| / <y, y_mse>)
    sq_norms : (n,) float32, ||x||^2 for l2 keys
    """

    words: object
    scale: object
    sq_norms: object
    n: int
    zeros: object = None

    def __post_init__(self):
        if self.zeros is None:
            self.zeros = self.scale * 0

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes + self.scale.nbytes + self.sq_norms.nbytes
                   + self.zeros.nbytes)


def device_layout(codec, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host arrays of ``DeviceCodes`` for codes (n, code_size) uint8: words (W, n_pad)
    uint32, scale (n,) float32, squared norms (n,) float32."""
    n = codes.shape[0]
    index_bytes = code_format(codec).index_bytes
    n_words = -(-index_bytes // 4)
    n_pad = -(-max(n, 1) // 32) * 32
    packed = np.zeros((n_pad, n_words * 4), dtype=np.uint8)
    packed[:n, :index_bytes] = codes[:, :index_bytes]
    words = np.ascontiguousarray(packed.view("<u4").T)
    norms = codec.norms(codes)
    if _family(codec) == "table":
        scale = np.ones(n, dtype=np.float32)
    elif hasattr(codec, "corrections"):
        scale = norms * codec.corrections(codes)
    else:
        scale = norms
    return words, scale.astype(np.float32), np.square(norms, dtype=np.float32)


class GpuScanner:
    """Keeps parts' codes resident on the GPU within a byte budget and scans them.

    ``budget_bytes`` caps the device memory held by resident codes (default: 80% of the
    GPU's memory when first used); uploading past it raises OutOfDeviceMemory.
    """

    def __init__(self, budget_bytes: int | None = None):
        self.cupy = _import_cupy()
        if budget_bytes is None:
            _, total = self.cupy.cuda.runtime.memGetInfo()
            budget_bytes = int(total * DEFAULT_BUDGET_FRACTION)
        self.budget_bytes = budget_bytes
        self._resident: dict[object, DeviceCodes] = {}
        self._rotations: dict[int, tuple] = {}
        self._lock = threading.Lock()
        properties = self.cupy.cuda.runtime.getDeviceProperties(self.cupy.cuda.Device().id)
        self.multiprocessors = int(properties["multiProcessorCount"])
        self.shared_limit = int(properties.get("sharedMemPerBlockOptin", DEFAULT_SHARED_LIMIT))

    @property
    def resident_bytes(self) -> int:
        return sum(codes.nbytes for codes in self._resident.values())

    def resident(self, key, codec, codes: np.ndarray) -> DeviceCodes:
        """The device copy of ``codes`` stored under ``key``, uploaded on first use."""
        with self._lock:
            found = self._resident.get(key)
            if found is not None:
                return found
            words, scale, sq_norms = device_layout(codec, codes)
            needed = words.nbytes + 2 * scale.nbytes + sq_norms.nbytes
            if self.resident_bytes + needed > self.budget_bytes:
                raise OutOfDeviceMemory(
                    f"{codes.shape[0]:,} more codes need {needed / 2**20:,.1f} MiB of GPU "
                    f"memory; {self.resident_bytes / 2**20:,.1f} of the "
                    f"{self.budget_bytes / 2**20:,.1f} MiB budget are in use"
                )
            cp = self.cupy
            device = DeviceCodes(cp.asarray(words), cp.asarray(scale), cp.asarray(sq_norms),
                                 codes.shape[0])
            self._resident[key] = device
            return device

    def retain(self, keys) -> None:
        """Free resident codes whose key is not in ``keys``."""
        keep = set(keys)
        with self._lock:
            for key in [k for k in self._resident if k not in keep]:
                del self._resident[key]

    def _rotate(self, codec, queries: np.ndarray):
        """Rotated queries (nq, D) float32: on the device for dense rotations (the matrix
        is uploaded once per codec), else on the host."""
        from vecstore.codecs.rotation import DenseRotation

        rotation = codec.rotation
        if not isinstance(rotation, DenseRotation):
            return codec.prepare_query(queries).rotated
        key = id(rotation)
        matrix = self._rotations.get(key)
        if matrix is None or matrix[0] is not rotation:
            matrix = (rotation, self.cupy.asarray(rotation.matrix.T.copy()))
            self._rotations[key] = matrix
        return self.cupy.asarray(queries, dtype=self.cupy.float32) @ matrix[1]

    def scan(self, codec, device: DeviceCodes, queries: np.ndarray, metric: str, k: int,
             query_sq_norms: np.ndarray | None, mask: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Keys (nq, k) float32 (smaller is better, +inf when empty) and rows (nq, k) int64
        (-1 when empty) of the best k rows of one part for queries (nq, d) float32.

        ``mask`` (n,) bool marks the rows that may be returned (None: all).
        """
        cp = self.cupy
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"the GPU kernels keep at most {MAX_K} results per query")
        fmt = code_format(codec)
        given = _family(codec) == "table"
        nq, dim, levels = queries.shape[0], fmt.values, 1 << fmt.bits
        if given:
            tables = cp.asarray(query_tables(codec, queries))
            rotated = np.zeros((nq, dim), dtype=np.float32)
            centroids = _device_levels(np.zeros(levels, dtype=np.float32).tobytes())
        else:
            tables = _device_levels(np.zeros(1, dtype=np.float32).tobytes())
            rotated = self._rotate(codec, queries)
            centroids = _device_levels(codec._centroids32.tobytes())
        k = min(k, device.n)
        group = 1 if given else next(g for g in QUERY_GROUPS if g >= min(nq, QUERY_GROUPS[-1]))
        size = 1 << math.ceil(math.log2(k + 2 * BLOCK_THREADS))
        shared = group * size * 8 + group * dim * 4 + levels * 4 + (group + 1) * 4
        table = given or (group == 1 and 32 % fmt.bits == 0
                          and dim * levels * 4 <= TABLE_BYTES)
        shared += dim * levels * 4 if table else 0
        if shared > self.shared_limit:
            raise InvalidArgument(f"k={k} with {dim} values of {fmt.bits} bits needs {shared} "
                                  f"bytes of shared memory per block; this GPU allows "
                                  f"{self.shared_limit}")
        kernel = _tq_kernel(fmt.bits, group, table, dim, given)
        if shared > DEFAULT_SHARED_LIMIT:
            kernel.max_dynamic_shared_size_bytes = shared
        row_blocks = max(1, min(-(-device.n // BLOCK_THREADS), 4 * self.multiprocessors))
        rows_per_block = -(-device.n // row_blocks)
        rows_per_block = -(-rows_per_block // BLOCK_THREADS) * BLOCK_THREADS
        row_blocks = -(-device.n // rows_per_block)
        if metric == "l2":
            key_scale, row_bias = np.float32(-2.0), device.sq_norms
            query_bias = cp.asarray(query_sq_norms, dtype=cp.float32)
        else:
            key_scale, row_bias = np.float32(-1.0), device.zeros
            query_bias = cp.zeros(nq, dtype=cp.float32)
        if mask is not None:
            row_bias = row_bias + cp.asarray(np.where(mask, 0, np.inf).astype(np.float32))
        query_rows = cp.ascontiguousarray(cp.asarray(rotated, dtype=cp.float32))
        out = cp.empty((nq, row_blocks, k), dtype=cp.uint64)
        grid = (row_blocks, -(-nq // group))
        kernel(grid, (BLOCK_THREADS,),
               (device.words, np.int32(device.words.shape[0]), np.int32(device.n),
                np.int32(device.words.shape[1]), device.scale, row_bias, query_rows,
                query_bias, np.int32(nq), np.int32(dim), centroids, key_scale, np.int32(k),
                np.int32(size), np.int32(rows_per_block), tables, out),
               shared_mem=shared)
        candidates = out.reshape(nq, row_blocks * k)
        if candidates.size <= HOST_MERGE_MAX:
            best = np.sort(cp.asnumpy(candidates), axis=1)[:, :k]
        else:
            best = cp.asnumpy(cp.sort(candidates, axis=1)[:, :k])
        return unpack_keys(best)


def unpack_keys(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys float32 and rows int64 from the kernels' packed uint64 values (same shape);
    empty slots and masked rows (key +inf) give key +inf and row -1."""
    high = (packed >> np.uint64(32)).astype(np.uint32)
    rows = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    negative = high & np.uint32(0x80000000)
    bits = np.where(negative != 0, high ^ np.uint32(0x80000000), ~high)
    keys = bits.view(np.float32)
    empty = (packed == np.uint64(0xFFFFFFFFFFFFFFFF)) | ~np.isfinite(keys)
    return np.where(empty, np.float32(np.inf), keys), np.where(empty, -1, rows)
