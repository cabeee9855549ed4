"""Compiling and launching the CUDA sources in ``vecstore/_cuda/``: NVRTC through CuPy
(or directly for Hopper-only code), one module per device, and the shared launch terms
(the packed key format, cuBLAS GEMM on the current stream)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vecstore.search.gpu.context import DEFAULT_SHARED_LIMIT, current_device, import_cupy

# Largest k a kernel keeps per block; bigger searches run on the CPU.
MAX_K = 1024
# The packed key of an empty result slot (unpack_keys).
EMPTY_SLOT = 0xFFFFFFFFFFFFFFFF
# cudaMemcpyKind value (driver_types.h): CuPy's own copies to the host refuse to be
# captured in a graph, so a fused search's results go back by the runtime call.
DEVICE_TO_HOST = 2


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


def kernel(source: str, name: str):
    """The compiled kernel ``name`` (a template instance) of ``_cuda/<source>``, loaded on
    the current device (a module belongs to one device's context, so each device keeps
    its own, as ``cupy.memoize(for_each_device=True)`` does)."""
    return _device_kernel(source, name, current_device())


@lru_cache(maxsize=128)
def _device_kernel(source: str, name: str, device: int):
    """``kernel`` on ``device`` (the current one)."""
    cupy = import_cupy()
    module = cupy.RawModule(code=kernel_source(source), options=("-std=c++17",),
                            name_expressions=[name])
    return module.get_function(name)


def hopper_kernel(source: str, name: str):
    """``kernel`` for sources with Hopper-only instructions (wgmma), which need the
    architecture-specific target sm_90a. CuPy compiles for the plain architecture, so the
    program is compiled here with NVRTC and its binary loaded as a module."""
    return _device_hopper_kernel(source, name, current_device())


@lru_cache(maxsize=32)
def _device_hopper_kernel(source: str, name: str, device: int):
    """``hopper_kernel`` on ``device`` (the current one)."""
    cupy = import_cupy()
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
    return ModuleFunction(module, module.get_function(lowered))


@dataclass
class ModuleFunction:
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


def tq_kernel(bits: int, group: int, table: bool, dim: int, given_table: bool, prod: bool,
               warp_top: bool):
    flags = ",".join(str(flag).lower() for flag in (table, dim, given_table, prod, warp_top))
    return kernel("tq_scan.cu", f"tq_scan<{bits},{group},{flags}>")


@lru_cache(maxsize=64)
def int8_table(centroids: bytes) -> tuple[tuple[np.uint32, ...], float]:
    """16 float32 ``centroids`` as tq_mma_scan's int8 table, four uint32 words of four
    centroids each (centroid i in byte i % 4 of word i // 4), and the scale they were
    rounded at (127 / max|centroid|)."""
    values = np.frombuffer(centroids, dtype=np.float32)
    scale = 127.0 / float(np.abs(values).max())
    rounded = np.rint(values * scale).astype(np.int8)
    return tuple(np.frombuffer(rounded.tobytes(), dtype=np.uint32)), scale


@lru_cache(maxsize=64)
def device_constant(data: bytes, dtype: str = "float32"):
    """Small constant arrays (a codec's centroids) on the device, uploaded once."""
    cupy = import_cupy()
    return cupy.asarray(np.frombuffer(data, dtype=dtype))


def gemm(cupy, a, a_rows: int, b, b_rows: int, depth: int, out, ld_out: int) -> None:
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
