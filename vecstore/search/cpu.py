"""Exhaustive scan of codes on the CPU in bounded chunks with a running top-k."""

from __future__ import annotations

import threading
import weakref
from typing import Literal

import numpy as np

from vecstore import _native
from vecstore.codecs.base import Codec
from vecstore.search.topk import TopK

Metric = Literal["ip", "cosine", "l2"]

# Working memory of one chunk: its score block plus its decoded codes.
CHUNK_WORKING_BYTES = 32 << 20
MIN_CHUNK_ROWS = 256
MAX_CHUNK_ROWS = 65536
# Queries are scored in blocks of at most this many, so scores stay bounded for any batch.
QUERY_BLOCK = 4096
# Up to this many queries, codecs with byte tables scan in the compiled kernels.
NATIVE_MAX_QUERIES = 16
# The lookup tables the compiled scan reads (``table_kind``).
NIBBLES = "nibbles"
BYTES = "bytes"
# Rows a block of FastScan's blocked layout holds.
BLOCK_ROWS = 32
# Blocked layouts and row scales of stable code arrays by (id of the array, scan format,
# whether the layouts were built), each dropped when its array is.
_LAYOUTS: dict[tuple, tuple[tuple, tuple]] = {}


def chunk_rows(nq: int, dim: int) -> int:
    """Rows per chunk so that scores (nq x rows) and decoded rows (rows x dim) fit the budget."""
    per_row = 4 * (nq + 2 * dim)
    return int(np.clip(CHUNK_WORKING_BYTES // per_row, MIN_CHUNK_ROWS, MAX_CHUNK_ROWS))


def to_keys(scores: np.ndarray, metric: Metric, query_sq_norms: np.ndarray | None,
            code_norms: np.ndarray | None) -> np.ndarray:
    """Turn estimated inner products (nq, n) into keys where smaller is better, in place.

    For l2 the key is ||q||^2 - 2 <q, x> + ||x||^2 with the stored norms (n,).
    """
    if metric == "l2":
        scores *= -2
        scores += query_sq_norms[:, None]
        scores += np.square(code_norms)[None, :]
        return scores
    np.negative(scores, out=scores)
    return scores


def keys_to_distances(keys: np.ndarray, metric: Metric) -> np.ndarray:
    """FAISS-order distances from keys: similarities for ip/cosine (-inf padding),
    squared distances for l2 (+inf padding)."""
    return keys if metric == "l2" else -keys


def scan(codec: Codec, codes: np.ndarray, queries: np.ndarray, k: int, metric: Metric,
         live: np.ndarray | None = None, state=None,
         row_ids: np.ndarray | None = None, stable=False) -> TopK:
    """Score ``queries`` (nq, d) float32 against ``codes`` (n, code_size) uint8.

    Rows where ``live`` (n,) bool is False are never returned. ``state`` is
    ``codec.prepare_query(queries)`` when the caller already has it. Equal scores go to
    the smaller of ``row_ids`` (n,) int64 (default: the smaller row). ``stable`` says how
    the compiled scan may keep a layout of ``codes`` (see ``native_part``). Returns the
    running top-k over row positions; ``TopK.sorted`` turns it into final results.
    """
    nq = queries.shape[0]
    if state is None:
        state = codec.prepare_query(queries)
    if codes.shape[0]:
        ties = np.arange(codes.shape[0], dtype=np.int64) if row_ids is None else row_ids
        native = scan_many(codec, queries, k, metric, [(codes, live, ties, None, 0, stable)],
                           state)
        if native is not None:
            return native
    query_sq_norms = np.einsum("ij,ij->i", queries, queries) if metric == "l2" else None
    top = TopK(nq, k)
    step = chunk_rows(nq, codec.dim)
    for start in range(0, codes.shape[0], step):
        chunk = codes[start : start + step]
        scores = codec.score(state, chunk)
        code_norms = codec.norms(chunk) if metric == "l2" else None
        keys = to_keys(scores, metric, query_sq_norms, code_norms)
        if live is not None:
            dead = ~live[start : start + step]
            if dead.any():
                keys[:, dead] = np.inf
        top.push(keys, start, None if row_ids is None else row_ids[start : start + step])
    return top


class QueryTables:
    """The lookup tables of one query state for the compiled scan: ``nibbles``
    (``codec.score_nibble_tables``) where the codec has them, else ``bytes``
    (``codec.score_tables``); the codec's shared ``levels`` and the queries' score
    ``offsets`` where it has them; float32, C-contiguous, or None."""

    def __init__(self, codec: Codec, state):
        kind = table_kind(codec)
        self.nibbles = _contiguous(codec.score_nibble_tables(state)) if kind == NIBBLES else None
        self.bytes = _contiguous(codec.score_tables(state)) if kind == BYTES else None
        levels = getattr(codec, "score_levels", None)
        self.levels = None if levels is None else _contiguous(levels)
        offsets = getattr(codec, "score_offsets", None)
        self.offsets = None if offsets is None else _contiguous(offsets(state))


def _contiguous(tables: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(tables, dtype=np.float32)


def table_kind(codec: Codec) -> str | None:
    """Which lookup tables the compiled scan reads for ``codec``'s codes: ``NIBBLES``
    (code bytes read as 4-bit values, which also take the FastScan pass), ``BYTES`` or
    None (no compiled path)."""
    fmt = getattr(codec, "scan_format", None)
    if fmt is None:
        return None
    return NIBBLES if fmt.table_bits == 4 else BYTES


def takes_fastscan(codec: Codec, path: str) -> bool:
    """Whether ``codec``'s codes take the FastScan pass on ``path``: nibble tables on the
    SIMD paths, byte tables of shared levels (one value a byte, no tail) on ``avx512``."""
    kind = table_kind(codec)
    if kind == NIBBLES:
        return path not in ("scalar", _native.NUMPY)
    return (kind == BYTES and path == "avx512"
            and codec.scan_format.split == codec.scan_format.n_bytes
            and getattr(codec, "score_levels", None) is not None)


def _tail_from(fmt) -> int:
    """Where a row's tail code bytes start in its stored bytes."""
    return fmt.values[3] if fmt.values[0] else fmt.split


def _blocked(codes: np.ndarray, fmt) -> tuple[np.ndarray, np.ndarray | None]:
    """FastScan's blocked layouts of the head and (where ``fmt`` splits) the tail of the
    code bytes of ``codes``."""
    head = _native.block_codes(codes, fmt.split, fmt.values)
    if fmt.split == fmt.n_bytes:
        return head, None
    return head, _native.block_codes(codes[:, _tail_from(fmt) :], fmt.n_bytes - fmt.split)


def _row_scales(codec: Codec, codes: np.ndarray, fmt) -> tuple:
    """Score scales, tail scales (None without a split) and norms of ``codes``, (n,)
    float32 each."""
    tails = codec.score_tail_scales(codes) if fmt.split < fmt.n_bytes else None
    return codec.score_scales(codes), tails, codec.norms(codes)


def native_part(codec: Codec, codes: np.ndarray, live: np.ndarray | None, ties: np.ndarray,
                row_map: np.ndarray | None, offset: int, fastscan: bool, stable) -> tuple:
    """One part for ``_native.part_set``. ``stable`` says how its codes may be kept:
    False (not at all), True (the array never changes: its layout is kept while it lives)
    or the ``StreamLayout`` of an append-only stream. With ``fastscan``, kept codes carry
    their blocked layouts; the compiled module lays out the others."""
    fmt = codec.scan_format
    if isinstance(stable, StreamLayout) and fastscan:
        (blocked, tail), (scales, tails, norms) = stable.view(codec, codes, fmt)
    elif stable is True:
        (blocked, tail), (scales, tails, norms) = _stable_layout(codec, codes, fmt, fastscan)
    else:
        (blocked, tail), (scales, tails, norms) = (None, None), _row_scales(codec, codes, fmt)
    return (blocked if fastscan else None, tail if fastscan else None, codes, scales, tails,
            norms, None if live is None else np.ascontiguousarray(live, dtype=bool),
            np.ascontiguousarray(ties, dtype=np.int64), row_map, offset)


def part_set(codec: Codec, parts: list[tuple], path: str):
    """The compiled module's ``PartSet`` of ``parts`` (as ``scan_many`` takes them) for
    scans on ``path``, or None where the compiled kernels do not serve this codec or
    path. A set stays valid while its parts' arrays are unchanged."""
    if path == _native.NUMPY or table_kind(codec) is None:
        return None
    fastscan = takes_fastscan(codec, path)
    native = [native_part(codec, codes, live, ids, row_map, offset, fastscan, stable)
              for codes, live, ids, row_map, offset, stable in parts]
    return _native.part_set(codec.scan_format, native, fastscan)


class StreamLayout:
    """FastScan's blocked layouts, score scales and norms of an append-only stream of
    codes (the memtable), extended as rows arrive: rows already written never change, so
    only the new ones (and the last partial block) are laid out. Safe to share between
    searches; a search of an older snapshot reads the first rows only."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rows = 0
        self._blocked = [np.empty(0, dtype=np.uint8), np.empty(0, dtype=np.uint8)]
        self._scales = [np.empty(0, dtype=np.float32) for _ in range(3)]

    def view(self, codec: Codec, codes: np.ndarray, fmt) -> tuple[tuple, tuple]:
        """The layouts of ``codes`` (the stream's first n rows) as ``_blocked`` gives them
        and their ``_row_scales``."""
        n = codes.shape[0]
        widths = (fmt.split, fmt.n_bytes - fmt.split)
        with self._lock:
            if n > self._rows:
                start = self._rows // BLOCK_ROWS * BLOCK_ROWS
                for i, layout in enumerate(_blocked(codes[start:], fmt)):
                    if layout is None:
                        continue
                    first = _native.blocked_size(start, widths[i])
                    size = _native.blocked_size(n, widths[i])
                    self._blocked[i] = _grown(self._blocked[i], size)
                    self._blocked[i][first:size] = layout
                for i, values in enumerate(_row_scales(codec, codes[start:], fmt)):
                    if values is not None:
                        self._scales[i] = _grown(self._scales[i], n)
                        self._scales[i][start:n] = values
                self._rows = n
            blocked = tuple(None if width == 0 else
                            self._blocked[i][: _native.blocked_size(n, width)]
                            for i, width in enumerate(widths))
            scales, tails, norms = (values[:n] for values in self._scales)
            return blocked, (scales, tails if widths[1] else None, norms)


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` if it holds ``size`` entries, else a copy with room for twice that."""
    if array.shape[0] >= size:
        return array
    if array.dtype == np.uint8:
        grown = _native.empty_layout(2 * size)
    else:
        grown = np.empty(2 * size, dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


def _stable_layout(codec: Codec, codes: np.ndarray, fmt, fastscan: bool
                   ) -> tuple[tuple, tuple]:
    """``_blocked`` (with ``fastscan``, else no layouts) and ``_row_scales`` of ``codes``,
    built once per array and kept while the array lives."""
    key = (id(codes), fmt, fastscan)
    layout = _LAYOUTS.get(key)
    if layout is None:
        blocked = _blocked(codes, fmt) if fastscan else (None, None)
        layout = (blocked, _row_scales(codec, codes, fmt))
        _LAYOUTS[key] = layout
        weakref.finalize(codes, _LAYOUTS.pop, key, None)
    return layout


def scan_many(codec: Codec, queries: np.ndarray, k: int, metric: Metric, parts: list[tuple],
              state=None, native=None) -> TopK | None:
    """One compiled scan of several parts with one top-k, or None where the compiled
    kernels do not serve this codec, batch or path (then scan part by part).

    ``parts`` holds (codes (n, code_size) uint8, live (n,) bool or None, ids (n,) int64
    for ties, row map (n,) int64 or None, offset, stable) per part; rows come back
    numbered by the row map, else by offset + row. ``native`` is their ``part_set`` for
    the current path when the caller keeps one.
    """
    path = _native.scan_path()
    nq = queries.shape[0]
    # Codecs whose table sums only rank rows (Hamming distances) map them to scores
    # afterwards; l2 keys need each row's score, which such sums do not give.
    ranks_only = getattr(codec, "ranks_by_table_sums", False)
    if ranks_only and metric == "l2":
        return None
    # Batches beyond one block pay off only through the FastScan pass; otherwise the numpy
    # path's matrix product is faster.
    if nq > NATIVE_MAX_QUERIES and not takes_fastscan(codec, path):
        return None
    if native is None:
        native = part_set(codec, parts, path) if parts else None
    if native is None:
        return None
    query_sq_norms = np.einsum("ij,ij->i", queries, queries).astype(np.float32) \
        if metric == "l2" else np.zeros(nq, np.float32)
    keys, rows, ties = [], [], []
    for start in range(0, nq, NATIVE_MAX_QUERIES):
        block = slice(start, start + NATIVE_MAX_QUERIES)
        block_state = state if state is not None and nq <= NATIVE_MAX_QUERIES \
            else codec.prepare_query(queries[block])
        tables = QueryTables(codec, block_state)
        scores = codec.table_sum_scores(block_state) if ranks_only else None
        if ranks_only and scores is None:
            return None
        found = _native.scan_topk(native, tables.nibbles, tables.bytes, k, metric == "l2",
                                  query_sq_norms[block], path, tables.levels, tables.offsets)
        keys.append(found[0] if scores is None else _ranked_keys(found[0], scores))
        rows.append(found[1])
        ties.append(found[2])
    if len(keys) == 1:
        return TopK.of(keys[0], rows[0], ties[0], ordered=True)
    return TopK.of(np.concatenate(keys), np.concatenate(rows), np.concatenate(ties),
                   ordered=True)


def _ranked_keys(sums: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Keys (nq, k) float32 of table sums (nq, k) that are distances into ``scores``
    (nq, D + 1), +inf staying +inf."""
    found = np.isfinite(sums)
    distances = np.where(found, sums, 0).astype(np.int64)
    return np.where(found, -np.take_along_axis(scores, distances, axis=1), np.float32(np.inf))
