"""The CUDA device a scanner runs on: CuPy, imported on first use, the device's
properties, and what every launch shares on it (pinned staging for uploads, a buffer of
zeros, dense rotation matrices, launch geometry)."""

from __future__ import annotations

import contextlib
import threading
from functools import lru_cache

import numpy as np

from vecstore.errors import GpuUnavailable, InvalidArgument

# Threads per block of the one-thread-per-row kernels.
BLOCK_THREADS = 256
DEFAULT_SHARED_LIMIT = 48 * 1024


def import_cupy():
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
        import_cupy()
    except GpuUnavailable as exc:
        return str(exc)
    return None


def current_device() -> int:
    return import_cupy().cuda.runtime.getDevice()


def pow2_at_least(n: int) -> int:
    """The least power of two >= n (1 for n <= 1)."""
    return 1 << (max(n, 1) - 1).bit_length()


class DeviceContext:
    """The current CUDA device as the scanner's launches see it.

    ``scan_blocks_per_multiprocessor`` sets the blocks of one-thread-per-row scans.
    """

    def __init__(self):
        self.cupy = import_cupy()
        properties = self.cupy.cuda.runtime.getDeviceProperties(self.cupy.cuda.Device().id)
        self.multiprocessors = int(properties["multiProcessorCount"])
        # The fused batch kernel uses wgmma, which only Hopper (compute capability 9.0) has.
        self.hopper = int(properties["major"]) == 9
        self.shared_limit = int(properties.get("sharedMemPerBlockOptin", DEFAULT_SHARED_LIMIT))
        self.scan_blocks_per_multiprocessor = 4
        self._rotation_rows: dict[int, tuple] = {}
        self._zero_buffer = None
        self._staging = threading.local()

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

    @contextlib.contextmanager
    def pinned(self, arrays: list[np.ndarray]):
        """``arrays`` (contiguous) copied into this thread's pinned buffer, each at a
        16-byte boundary, yielding their addresses (np.uint64) for kernels launched in the
        block to read in place: pinned memory is mapped into the device's address space,
        so nothing is copied to the device or allocated there."""
        starts = np.cumsum([0] + [-(-a.nbytes // 16) * 16 for a in arrays])
        staged = self._staged(int(starts[-1]))
        for array, start in zip(arrays, starts, strict=False):
            staged[start : start + array.nbytes] = array.reshape(-1).view(np.uint8)
        try:
            yield [np.uint64(staged.ctypes.data + int(start)) for start in starts[:-1]]
        finally:
            self._staging.copied.record()

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
            staging.buffer = cupyx.empty_pinned(pow2_at_least(max(nbytes, 1)), dtype=np.uint8)
        return staging.buffer[:nbytes]

    def rotation_rows(self, codec):
        """A dense rotation's matrix (D, d) float32 on the device, uploaded once."""
        rotation = codec.rotation
        held = self._rotation_rows.get(id(rotation))
        if held is None or held[0] is not rotation:
            held = (rotation, self.cupy.asarray(rotation.matrix, dtype=self.cupy.float32))
            self._rotation_rows[id(rotation)] = held
        return held[1]

    def rotate(self, codec, queries: np.ndarray):
        """Rotated queries (nq, D) float32 for numpy queries (nq, d): on the device for
        dense rotations (the matrix is uploaded once per codec), else on the host."""
        from vecstore.codecs.rotation import DenseRotation

        if not isinstance(codec.rotation, DenseRotation):
            return codec.prepare_query(queries).rotated
        return self.upload(queries) @ self.rotation_rows(codec).T

    def zeros(self, count: int):
        """A device float32 array of ``count`` zeros (kept for reuse; never written)."""
        if self._zero_buffer is None or self._zero_buffer.size < count:
            self._zero_buffer = self.cupy.zeros(pow2_at_least(count), dtype=self.cupy.float32)
        return self._zero_buffer[:count]

    def row_blocks(self, n: int) -> tuple[int, int]:
        """Blocks and rows per block of a one-thread-per-row scan of n rows:
        ``scan_blocks_per_multiprocessor`` blocks per multiprocessor, rows per block a
        multiple of a warp (so that the blocks share the rows evenly)."""
        row_blocks = max(1, min(-(-n // BLOCK_THREADS),
                                self.scan_blocks_per_multiprocessor * self.multiprocessors))
        rows_per_block = -(-n // row_blocks)
        rows_per_block = -(-rows_per_block // 32) * 32
        return -(-n // rows_per_block), rows_per_block

    def check_shared(self, shared: int, what: str) -> None:
        """InvalidArgument unless a block may use ``shared`` bytes (for ``what``)."""
        if shared > self.shared_limit:
            raise InvalidArgument(f"{what} needs {shared} bytes of shared memory per block; "
                                  f"this GPU allows {self.shared_limit}")

