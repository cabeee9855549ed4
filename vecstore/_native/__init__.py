"""vecstore's compiled CPU scan kernels (``_scan``: C++17 bound with nanobind, built by
scikit-build-core) and the choice of scan path.

Paths, fastest first: ``avx512`` (AVX-512 F/BW/VL with VBMI and VNNI), ``avx2``,
``scalar`` (portable C++) and ``numpy`` (the reference, always there). On ``avx512`` and
``avx2``, codes of 1-, 2- and 4-bit TurboQuant widths first take a FastScan pass
(quantized nibble tables in SIMD registers over a blocked copy of the codes) that bounds
each row's score, so only rows that can reach the top k are scored exactly; ``scalar``
scores every row exactly. Every path reports the numpy path's keys. The fastest path is
used unless the ``VECSTORE_SIMD`` environment variable names another. Scans split rows
across ``set_num_threads(n)`` threads (all cores by default) and release the GIL.
"""

from __future__ import annotations

import os

import numpy as np

from vecstore.errors import InvalidArgument

try:
    from vecstore._native import _scan
except ImportError:  # a source tree that was never built: the numpy path only
    _scan = None

PATH_VARIABLE = "VECSTORE_SIMD"
NUMPY = "numpy"
_threads = os.cpu_count() or 1


def available_paths() -> list[str]:
    """The scan paths this machine can run, fastest first; ``numpy`` is always last."""
    return [*(_scan.available_paths() if _scan is not None else []), NUMPY]


def scan_path() -> str:
    """The path scans take: ``VECSTORE_SIMD`` when set, else the fastest available.

    Raises InvalidArgument when ``VECSTORE_SIMD`` names a path this machine cannot run.
    """
    paths = available_paths()
    chosen = os.environ.get(PATH_VARIABLE, "").strip().lower()
    if not chosen:
        return paths[0]
    if chosen not in paths:
        raise InvalidArgument(f"{PATH_VARIABLE}={chosen!r:.40}: this machine runs {paths}")
    return chosen


def set_num_threads(n: int) -> None:
    """Scan with ``n`` threads (>= 1); like ``faiss.omp_set_num_threads``."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgument(f"the number of threads must be a positive integer, got {n!r}")
    _threads = n


def get_num_threads() -> int:
    """The number of threads scans use."""
    return _threads


def cpu_features() -> dict:
    """What runs here: ``path`` (the scan path in use), ``paths`` (all this machine runs),
    ``threads``, and ``module`` (the compiled module's file, None without one)."""
    return {"path": scan_path(), "paths": available_paths(), "threads": _threads,
            "module": None if _scan is None else _scan.__file__}


def scan_topk(nibble_tables, byte_tables, n_bytes: int, parts, k: int, l2: bool,
              query_sq_norms, path: str):
    """Per query the exact k best rows over ``parts`` (see ``_scan.scan_topk``): keys,
    rows and ties (nq, k). Tables are (nq, 2 * n_bytes, 16) nibble tables or, for codecs
    without them, (nq, n_bytes, 256) byte tables. Each part is (blocked or None, codes,
    scales, norms, live or None, ties, row map or None, offset)."""
    blocked, codes, scales, norms, live, ties, row_maps, offsets = (
        list(column) for column in zip(*parts, strict=True))
    return _scan.scan_topk(nibble_tables, byte_tables, n_bytes, blocked, codes, scales, norms,
                           live, ties, row_maps, offsets, k, 1 if l2 else 0, query_sq_norms,
                           path, _threads)


def blocked_size(n: int, n_bytes: int) -> int:
    """Bytes of FastScan's blocked layout of ``n`` rows of ``n_bytes`` code bytes."""
    return _scan.blocked_size(n, n_bytes)


def block_codes(codes, n_bytes: int) -> np.ndarray:
    """The first ``n_bytes`` of each row of ``codes`` (n, >= n_bytes) uint8 in FastScan's
    blocked layout (1-D uint8; numpy's allocation, so large layouts get huge pages)."""
    out = np.empty(blocked_size(codes.shape[0], n_bytes), dtype=np.uint8)
    _scan.block_codes(codes, n_bytes, out)
    return out
