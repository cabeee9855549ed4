"""Exhaustive scan on an NVIDIA GPU: codes resident in device memory, scored and reduced to
a top-k by the kernels in ``vecstore/_cuda/``.

CuPy is imported only when a GPU path is asked for, so the CPU package never needs it.
Kernels compile with NVRTC at first use (CuPy caches the binaries on disk). One job per
module, imported in this order:

- ``context``: CuPy, the device's properties, staging uploads, launch geometry;
- ``kernels``: compiling the CUDA sources per device, the packed key format, GEMM;
- ``layouts``: codes in the kernels' layout (``DeviceCodes``), from each codec's
  ``DeviceFormat``;
- ``launches``: the CUDA-core scans, the merge of candidates, the arena's bias updates;
- ``batch_scan``: the tensor-core search of query batches;
- ``single_query`` and ``batch_plan``: searches replayed as CUDA graphs;
- ``scanner``: ``GpuScanner``, resident codes within a budget, dispatching each search;
- ``arena``: a collection's whole snapshot as one part (``DeviceArena``).
"""

from vecstore.search.gpu.context import unavailable_reason
from vecstore.search.gpu.kernels import MAX_K
from vecstore.search.gpu.layouts import supports

__all__ = ["MAX_K", "supports", "unavailable_reason"]
