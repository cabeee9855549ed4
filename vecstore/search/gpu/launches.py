"""Launches of the CUDA-core kernels: the fused scan of TurboQuant, table and tq{b}-prod
codes (``tq_scan.cu``), the popcount scan of Hamming codes (``hamming_scan.cu``), the merge
of per-block candidates (``merge_topk.cu``) and the arena's new rows and row-bias
updates (``arena.cu``). Each takes the ``DeviceContext`` it runs on."""

from __future__ import annotations

import numpy as np

from vecstore.search.gpu import kernels
from vecstore.search.gpu.context import (
    BLOCK_THREADS,
    DEFAULT_SHARED_LIMIT,
    DeviceContext,
    pow2_at_least,
)
from vecstore.search.gpu.layouts import DeviceCodes, code_format, family

# Queries one block scores together, by batch size.
QUERY_GROUPS = (1, 4, 8)
# Single queries at widths dividing 32 score by a (dim x levels) table up to this size.
TABLE_BYTES = 32 * 1024
# Threads of the kernel that merges per-block candidates into each query's k best.
MERGE_THREADS = 256
# Up to this k, scan and merge kernels keep each warp's k best in registers (WarpTopK in
# _cuda/topk.cuh) instead of a shared list per block that is sorted with barriers; the
# merge then runs up to MERGE_WARP_THREADS threads, a lane per block's list.
WARP_TOP_MAX_K = 32
MERGE_WARP_THREADS = 1024
# New arena rows go through pinned host memory in pieces of at most this many bytes.
PLACE_ROWS_BYTES = 8 << 20


def top_list_size(k: int, warp_top: bool) -> int:
    """The ``size`` of a scan kernel's shared list per query: with warp lists (WarpTopK)
    the warps' lists side by side for the final combine (BLOCK_THREADS values), else the
    block's k best plus room for two steps of candidates (BlockTopK)."""
    return BLOCK_THREADS if warp_top else pow2_at_least(k + 2 * BLOCK_THREADS)


def scan_fused(context: DeviceContext, codec, device: DeviceCodes, queries: np.ndarray,
               k: int, key_scale, row_bias, query_bias):
    """tq_scan: CUDA cores, one thread per row; per-block candidates (nq, blocks, k)."""
    cp = context.cupy
    kind = family(codec)
    unused = kernels.device_constant(np.zeros(1, dtype=np.float32).tobytes())
    tables = sketched = unused
    if kind == "table":
        tables = cp.asarray(codec.query_tables(queries))
        rotated = cp.zeros((queries.shape[0], code_format(codec).values), dtype=cp.float32)
    elif kind == "prod":
        state = codec.prepare_query(queries)
        rotated, sketched = state.rotated, cp.asarray(state.sketched, dtype=cp.float32)
    else:
        rotated = context.rotate(codec, queries)
    query_rows = cp.ascontiguousarray(cp.asarray(rotated, dtype=cp.float32))
    launch, out = fused_launch(context, codec, device, query_rows, k, key_scale, row_bias,
                               query_bias, tables, sketched)
    launch()
    return out


def fused_launch(context: DeviceContext, codec, device: DeviceCodes, query_rows, k: int,
                 key_scale, row_bias, query_bias, tables, sketched):
    """tq_scan's launch for rotated queries (nq, D) float32 on the device (zeros for
    "table" codecs, whose ``tables`` (nq, D, levels) hold the scores); ``sketched``
    (nq, D) are tq{b}-prod's sketched queries. Returns a callable that launches it on
    the current stream and its output, per-block candidates (nq, blocks, k) uint64."""
    cp = context.cupy
    fmt = code_format(codec)
    given, prod = family(codec) == "table", family(codec) == "prod"
    nq, dim, levels = query_rows.shape[0], fmt.values, 1 << fmt.bits
    signs, residual = (device.signs, device.residual) if prod else (device.words, sketched)
    centroids = kernels.device_constant(
        (np.zeros(levels, dtype=np.float32) if given else fmt.centroids).tobytes())
    group = 1 if given else next(g for g in QUERY_GROUPS if g >= min(nq, QUERY_GROUPS[-1]))
    # Groups of queries keep the block's lists: a warp's list per query costs
    # registers, and blocks per multiprocessor with them (NQ = 4: 46 -> 76).
    warp_top = k <= WARP_TOP_MAX_K and group == 1
    size = top_list_size(k, warp_top)
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
    context.check_shared(static + shared, f"k={k} with {dim} values of {fmt.bits} bits")
    kernel = kernels.tq_kernel(fmt.bits, group, table, dim, given, prod, warp_top)
    if static + shared > DEFAULT_SHARED_LIMIT:
        kernel.max_dynamic_shared_size_bytes = shared
    row_blocks, rows_per_block = context.row_blocks(device.n)
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


def scan_hamming(context: DeviceContext, codec, device: DeviceCodes, queries: np.ndarray,
                 k: int, key_scale, row_bias, query_bias):
    """hamming_scan: popcount over 32-bit words; per-block candidates (nq, blocks, k)."""
    cp = context.cupy
    state = codec.prepare_query(queries)
    n_words = device.words.shape[0]
    bits = np.zeros((queries.shape[0], n_words * 4), dtype=np.uint8)
    bits[:, : state.bits.shape[1]] = state.bits
    factor = (state.norms * np.float32(codec.rms_norm)).astype(np.float32)
    warp_top = k <= WARP_TOP_MAX_K
    size = top_list_size(k, warp_top)
    shared = size * 8 + 8
    context.check_shared(shared, f"k={k}")
    kernel = kernels.kernel("hamming_scan.cu",
                            f"hamming_scan<{n_words},{str(warp_top).lower()}>")
    if shared > DEFAULT_SHARED_LIMIT:
        kernel.max_dynamic_shared_size_bytes = shared
    row_blocks, rows_per_block = context.row_blocks(device.n)
    out = cp.empty((queries.shape[0], row_blocks, k), dtype=cp.uint64)
    kernel((row_blocks, queries.shape[0]), (BLOCK_THREADS,),
           (device.words, np.int32(device.n), np.int32(device.words.shape[1]),
            device.scale, row_bias, cp.asarray(bits.view("<u4")), cp.asarray(factor),
            query_bias, np.float32(np.pi / codec.rot_dim), key_scale, np.int32(k),
            np.int32(size), np.int32(rows_per_block), out),
           shared_mem=shared)
    return out


def merge(context: DeviceContext, candidates, k: int):
    """Each query's k best of per-block candidates (nq, blocks, k) uint64, sorted, as
    (nq, k) uint64 on the device (merge_topk; a single block's are sorted already)."""
    launch, best = merge_launch(context, candidates, k)
    launch()
    return best


def merge_launch(context: DeviceContext, candidates, k: int,
                 unpacked: tuple[int, int] | None = None):
    """``merge`` as a callable that launches it on the current stream, and its
    output. ``unpacked``: addresses of (nq, k) float32 keys and int64 rows (as
    ``unpack_keys``) that the kernel writes too, even for a single block."""
    nq, blocks = candidates.shape[0], candidates.shape[1]
    if blocks == 1 and unpacked is None:
        return lambda: None, candidates.reshape(nq, k)
    best = context.cupy.empty((nq, k), dtype=context.cupy.uint64)
    keys, rows = (np.uint64(address) for address in unpacked or (0, 0))
    if k <= WARP_TOP_MAX_K:
        threads = min(MERGE_WARP_THREADS, max(32, pow2_at_least(blocks)))
        shared = threads * 8
        kernel = kernels.kernel("merge_topk.cu", "merge_topk_warps")
        args = (candidates, np.int32(blocks), np.int32(k), best, keys, rows)
    else:
        threads = MERGE_THREADS
        size = pow2_at_least(k + 2 * MERGE_THREADS)
        shared = size * 8 + 8
        context.check_shared(shared, f"k={k}")
        kernel = kernels.kernel("merge_topk.cu", "merge_topk")
        if shared > DEFAULT_SHARED_LIMIT:
            kernel.max_dynamic_shared_size_bytes = shared
        args = (candidates, np.int32(blocks), np.int32(k), np.int32(size), best, keys, rows)

    def launch():
        kernel((nq,), (threads,), args, shared_mem=shared)

    return launch, best


def set_row_biases(context: DeviceContext, changes: np.ndarray, base_sq_norms,
                   device: DeviceCodes) -> None:
    """Write the row biases of ``device`` for the rows named by ``changes`` (c,) int64:
    a live row as itself (bias 0, or its ``base_sq_norms`` value for l2), a deleted one
    as ~row (+inf). One launch (_cuda/arena.cu), which reads ``changes`` from pinned
    host memory."""
    with context.pinned([np.asarray(changes, dtype=np.int64)]) as (address,):
        kernels.kernel("arena.cu", "set_row_biases")(
            (-(-changes.size // BLOCK_THREADS),), (BLOCK_THREADS,),
            (address, np.int32(changes.size), base_sq_norms, device.zeros, device.sq_norms))


def place_rows(context: DeviceContext, layout: list[np.ndarray | None], start: int,
               device: DeviceCodes, base_sq_norms) -> None:
    """Write m new rows at row ``start`` of ``device``, live: ``layout`` is their host
    layout (words (W, m) uint32, scale, sq_norms (m,) float32, signs (S, m) uint32 and
    residual (m,) float32 or None; ``layouts.host_layout`` cut to m rows). Launches of
    _cuda/arena.cu read the rows from pinned host memory, PLACE_ROWS_BYTES at a time."""
    words, scale, sq_norms, signs, residual = layout
    m = scale.shape[0]
    row_bytes = sum(a.itemsize * (a.shape[0] if a.ndim == 2 else 1)
                    for a in layout if a is not None)
    step = max(1, PLACE_ROWS_BYTES // row_bytes)
    null = np.uint64(0)
    for first in range(0, m, step):
        rows = slice(first, min(m, first + step))
        count = rows.stop - rows.start
        chunk = [np.ascontiguousarray(a[..., rows]) for a in layout if a is not None]
        with context.pinned(chunk) as addresses:
            held = iter(addresses)
            words_in, scale_in, sq_norms_in = next(held), next(held), next(held)
            signs_in = null if signs is None else next(held)
            residual_in = null if residual is None else next(held)
            kernels.kernel("arena.cu", "place_rows")(
                (-(-count // BLOCK_THREADS),), (BLOCK_THREADS,),
                (words_in, np.int32(words.shape[0]), signs_in,
                 np.int32(0 if signs is None else signs.shape[0]), scale_in, sq_norms_in,
                 residual_in, np.int32(count), np.int64(start + rows.start),
                 np.int64(device.words.shape[1]), device.words,
                 null if signs is None else device.signs, device.scale, device.sq_norms,
                 null if residual is None else device.residual, base_sq_norms, device.zeros))
