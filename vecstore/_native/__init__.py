"""vecstore's compiled CPU scan kernels (``_scan``: C++17 bound with nanobind, built by
scikit-build-core) and the choice of scan path.

Paths, fastest first: ``avx512`` (AVX-512 F/BW/VL with VBMI and VNNI), ``avx2``,
``scalar`` (portable C++) and ``numpy`` (the reference, always there). On ``avx512`` and
``avx2``, codes read as nibbles (and on ``avx512`` byte codes of shared levels) first take
a FastScan pass (quantized tables in SIMD registers over a blocked copy of the codes) that
bounds each row's score, so only rows that can reach the top k are scored exactly;
``scalar`` scores every row exactly. Every path reports the numpy path's keys. The fastest path is
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


_PATHS = (*(_scan.available_paths() if _scan is not None else ()), NUMPY)


def available_paths() -> list[str]:
    """The scan paths this machine can run, fastest first; ``numpy`` is always last."""
    return list(_PATHS)


def scan_path() -> str:
    """The path scans take: ``VECSTORE_SIMD`` when set, else the fastest available.

    Raises InvalidArgument when ``VECSTORE_SIMD`` names a path this machine cannot run.
    """
    chosen = os.environ.get(PATH_VARIABLE)
    if not chosen:
        return _PATHS[0]
    chosen = chosen.strip().lower()
    if chosen not in _PATHS:
        raise InvalidArgument(f"{PATH_VARIABLE}={chosen!r:.40}: this machine runs "
                              f"{list(_PATHS)}")
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


def part_set(fmt, parts, lay_out: bool):
    """The parts of a search, checked and held by the compiled module for any number of
    scans (``_scan.PartSet``), their codes read as the codec's ``ScanFormat`` ``fmt``
    says. Each part is (blocked or None, blocked tail or None, codes, scales, tail scales
    or None, norms, live or None, ties, row map or None, offset); with ``lay_out`` parts
    without blocked layouts get them, kept with the set."""
    columns = [list(column) for column in zip(*parts, strict=True)] if parts else [[]] * 10
    blocked, tails, codes, scales, tail_scales, norms, live, ties, row_maps, offsets = columns
    return _scan.PartSet(fmt.n_bytes, fmt.values, fmt.split, blocked, tails, codes, scales,
                         tail_scales, norms, live, ties, row_maps, offsets, lay_out)


def scan_topk(parts, nibble_tables, byte_tables, k: int, l2: bool, query_sq_norms,
              path: str, levels=None, offsets=None):
    """Per query the exact k best rows of the ``part_set`` ``parts``: keys, rows and ties
    (nq, k). Tables are (nq, 2 * n_bytes, 16) nibble tables or, for codecs without them,
    (nq, n_bytes, 256) byte tables. ``levels`` ((16,) or (256,) float32), for codes whose
    tables are coordinate times a shared level, lets ``avx512`` take a level-dot kernel.
    ``offsets`` (nq,) float32 are added to every score of their query."""
    return _scan.scan_topk(parts, nibble_tables, byte_tables, levels, k, 1 if l2 else 0,
                           query_sq_norms, offsets, path, _threads)


def compiled() -> bool:
    """Whether the compiled module is built."""
    return _scan is not None


def nibble_tables(rotated, levels, bits: int, n_bytes: int) -> np.ndarray:
    """TurboQuant's nibble tables (nq, 2 * n_bytes, 16) float32 of rotated queries (nq, D)
    float32, bit for bit as ``tables.value_tables`` builds them in numpy (needs the
    compiled module)."""
    return _scan.nibble_tables(np.ascontiguousarray(rotated, dtype=np.float32),
                               np.ascontiguousarray(levels, dtype=np.float32), bits, n_bytes)


def normalize_rows(x) -> tuple[np.ndarray, np.ndarray]:
    """Norms (n,) float32 (summed in float64, rounded once) and unit rows (n, d) float32 of
    x (n, d) float32, zero rows staying zero, on ``get_num_threads()`` threads."""
    return _scan.normalize_rows(np.ascontiguousarray(x, dtype=np.float32), _threads)


def quantize_pack(rotated, unit, matrix, boundaries, bits: int, margin: float,
                  codes: np.ndarray) -> None:
    """Writes the nearest-centroid indices (the count of ``boundaries`` strictly below) of
    ``rotated`` (n, D) float32, a float32 product of ``unit`` (n, d) and the rotation
    whose rows are ``matrix`` (D, d) float64, packed at ``bits`` bits into the first bytes
    of each row of ``codes`` (n, >= packed) uint8; coordinates within ``margin`` of a
    boundary are computed again in float64 and rounded once, as the numpy encoder
    computes every one."""
    _scan.quantize_pack(rotated, unit, matrix, boundaries, bits, margin, codes, _threads)


def blocked_size(n: int, n_bytes: int) -> int:
    """Bytes of FastScan's blocked layout of ``n`` rows of ``n_bytes`` code bytes."""
    return _scan.blocked_size(n, n_bytes)


# Layouts of at least this many bytes start on a 2 MiB boundary, so that the huge pages
# numpy asks the kernel for cover all of them (a scan of 4 KiB pages misses the TLB).
HUGE_PAGE = 2 << 20


def empty_layout(nbytes: int) -> np.ndarray:
    """An uninitialized (nbytes,) uint8 array, 2 MiB-aligned from HUGE_PAGE bytes on."""
    if nbytes < HUGE_PAGE:
        return np.empty(nbytes, dtype=np.uint8)
    buffer = np.empty(nbytes + HUGE_PAGE, dtype=np.uint8)
    start = -buffer.ctypes.data % HUGE_PAGE
    return buffer[start : start + nbytes]


def block_codes(codes, n_bytes: int, values=(0, 0, 0, 0)) -> np.ndarray:
    """The ``n_bytes`` code bytes of each row of ``codes`` (n, stored bytes) uint8, made
    as ``values`` (bits, count, head, tail_from) say (``ScanFormat``; the first n_bytes
    stored bytes by default), in FastScan's blocked layout (1-D uint8, ``empty_layout``)."""
    out = empty_layout(blocked_size(codes.shape[0], n_bytes))
    _scan.block_codes(codes, n_bytes, tuple(values), out)
    return out
