"""One search over a collection's snapshot: where it runs, how queries are blocked, which
rows it may return, how parts merge and ties break, and how candidates are reranked.

The collection takes a ``Snapshot`` (under its lock) and hands it to its
``SearchExecutor`` with validated queries. The executor keeps what searches reuse: in the
snapshot's part sets, the compiled part sets by scan path, the masks of the last
FILTER_CACHE filters and the filter's mask over the GPU arena; beside them, the compiled
layout of the memtable, extended as rows arrive, and the collection's GPU arena.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from vecstore import _native, _validate, metadata, rows
from vecstore.codecs.base import Codec
from vecstore.errors import GpuUnavailable, InvalidArgument, OutOfDeviceMemory
from vecstore.parts import Part, gather, search_masks
from vecstore.search import cpu
from vecstore.search.device import SharedScanner
from vecstore.search.rescore import rerank
from vecstore.search.topk import EMPTY_TIE, TopK

# Filters selecting fewer rows than this fraction of a segment scan a gathered copy (on
# the numpy path, and on the compiled FastScan paths).
GATHER_FRACTION = 0.25
COMPILED_GATHER_FRACTION = 1 / 64
# A snapshot keeps the masks and compiled part sets of this many filters, the last used;
# they sit in its part sets under FILTERS.
FILTER_CACHE = 16
FILTERS = "filters"
# The part sets' entry holding a filter's mask over the GPU arena.
ARENA_MASK = "gpu arena mask"
# The most candidates (query block rows * k * rescore) one scan step keeps: 80 MiB of
# keys, rows and ties.
SCAN_CANDIDATES = 1 << 22
DEVICES = ("auto", "cpu", "gpu")


def check_device(device) -> str:
    """``device`` if it is one of "auto", "cpu", "gpu", else InvalidArgument."""
    if device not in DEVICES:
        raise InvalidArgument(f"device must be one of {DEVICES}, got {device!r}")
    return device


class Snapshot(NamedTuple):
    """What a search sees: the same objects until a write, delete, flush, merge or train
    changes it.

    parts : list of Part
        Every segment and the memtable's filled rows.
    offsets : (parts + 1,) int64
        The position of each part's first row among all rows, then the row count.
    schema : pa.Schema
        The metadata fields filters are checked against.
    codec, rescore_codec : Codec, Codec or None
        The collection's codecs (the rescoring one None when it has none).
    part_sets : dict
        What searches build from the parts and keep: compiled part sets by scan path,
        filters under FILTERS, the arena mask under ARENA_MASK.
    """

    parts: list[Part]
    offsets: np.ndarray
    schema: pa.Schema
    codec: Codec
    rescore_codec: Codec | None
    part_sets: dict


class SearchExecutor:
    """Runs the searches of one collection (``name``, ``metric``) over its snapshots.

    ``rescore_column`` is the column rescoring reads (``rows.VECTOR``,
    ``rows.RESCORE_CODE``, or None when the collection keeps neither). ``device`` is the
    collection's setting ("auto", "cpu", "gpu"); the GPU arena is made on
    ``gpu_scanner``'s scanner. ``lock`` is the collection's: it guards the arena and,
    with ``memtable_serial`` (the serial of the collection's current memtable), the
    memtable's compiled layout.
    """

    def __init__(self, name: str, metric: cpu.Metric, *, rescore_column: str | None,
                 device: str, gpu_scanner: SharedScanner, lock: threading.RLock,
                 memtable_serial: Callable[[], int]):
        self.name = name
        self.metric = metric
        self.rescore_column = rescore_column
        self.device = check_device(device)
        self.gpu_scanner = gpu_scanner
        self._lock = lock
        self._memtable_serial = memtable_serial
        self._filter_lock = threading.Lock()
        self._arena = None
        self._memtable_layout: tuple = (None, None)

    @property
    def arena(self):
        """The collection's ``DeviceArena`` on the GPU, or None before a GPU search (and
        after ``release``)."""
        return self._arena

    def search(self, q: np.ndarray, k: int, *, rescore: int | None, filter, device: str | None,
               snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows of ``snapshot`` to validated queries ``q`` (nq, d) float32:
        distances (nq, k) float32 and ids (nq, k) int64 as ``Collection.search`` returns
        them. ``device`` (or the setting, when None) picks the scan; ``rescore`` and
        ``filter`` are as ``Collection.search`` takes them.

        Raises InvalidArgument for a rescore with nothing to rescore with, a bad device or
        a bad filter, GpuUnavailable when ``device="gpu"`` cannot run.
        """
        fetch_column = self._fetch_column(rescore)
        scan_parts = self._scan_parts
        if self._use_gpu(self.device if device is None else check_device(device),
                         k * (rescore or 1), snapshot.codec):
            scan_parts = self._scan_parts_gpu
        parts, offsets, schema, codec, rescore_codec, part_sets = snapshot
        expression = metadata.as_filter(filter, schema)
        if expression is not None:
            masks, part_sets = self._filter_masks(part_sets, parts, expression, schema)
        else:
            masks = search_masks(parts, None, schema)
        # No more than the stored rows can be found: scan for those, pad the rest.
        k_scan = max(1, min(k * (rescore or 1), int(offsets[-1])))
        k_keep = min(k, k_scan)
        distances = np.full((q.shape[0], k), np.inf, dtype=np.float32)
        found = np.full((q.shape[0], k), -1, dtype=np.int64)
        if not offsets[-1]:   # nothing stored (an untrained codec has no query state yet)
            return cpu.keys_to_distances(distances, self.metric), found
        # Queries are scanned in blocks whose candidate lists stay within SCAN_CANDIDATES.
        block_rows = max(1, min(SCAN_CANDIDATES // k_scan, cpu.QUERY_BLOCK))
        for start in range(0, q.shape[0], block_rows):
            block = slice(start, start + block_rows)
            top = scan_parts(q[block], k_scan, codec, parts, offsets, masks, part_sets)
            if fetch_column is not None:
                fetch = _rescore_fetch(parts, offsets, fetch_column, rescore_codec)
                top = TopK.of(*rerank(q[block], top.rows, top.ties, fetch, self.metric, k_keep))
            # Every scan breaks ties by id, so a candidate's tie is its id.
            ids = np.where(top.rows >= 0, top.ties, -1)
            distances[block, :k_keep], found[block, :k_keep] = top.sorted_ids(ids)
        return cpu.keys_to_distances(distances, self.metric), found

    def device_for(self, k: int, codec: Codec) -> str:
        """Where a search of k candidates by ``codec`` runs under the device setting:
        "gpu" when the setting allows the GPU, CuPy sees one and the codec has a kernel
        for that k, else "cpu"."""
        return "cpu" if self.device == "cpu" or self._gpu_unusable(k, codec) else "gpu"

    def prepare(self, snapshot_of: Callable[[], Snapshot]) -> None:
        """After a write: bring the GPU arena, when GPU searches made one, to the snapshot
        ``snapshot_of()`` gives, so that the first search after the write finds the
        device ready (the write pays the few rows it changed, not the search). An arena
        past its budget is left for that search to report."""
        arena = self._arena
        if arena is None:
            return
        snapshot = snapshot_of()
        if arena.codec is snapshot.codec:
            try:
                arena.prepare(snapshot.parts)
            except OutOfDeviceMemory:
                pass

    def release(self) -> None:
        """Free the collection's device memory (its arena and the plans built on it); the
        next GPU search makes a new arena."""
        with self._lock:
            arena, self._arena = self._arena, None
        if arena is not None:
            arena.scanner.forget(arena)

    # --- device choice ------------------------------------------------------------------

    def _use_gpu(self, device: str, k: int, codec: Codec) -> bool:
        """Whether this search runs on the GPU; GpuUnavailable when ``device="gpu"`` cannot."""
        if device == "cpu":
            return False
        reason = self._gpu_unusable(k, codec)
        if reason is not None and device == "gpu":
            raise GpuUnavailable(reason)
        return reason is None

    @staticmethod
    def _gpu_unusable(k: int, codec: Codec) -> str | None:
        """Why a search of k candidates by ``codec`` cannot run on the GPU, or None when
        it can."""
        from vecstore.search import gpu

        reason = gpu.unavailable_reason()
        if reason is None and not gpu.supports(codec):
            reason = f"codec {codec.spec!r} has no GPU kernel yet"
        if reason is None and k > gpu.MAX_K:
            reason = f"the GPU kernels keep at most {gpu.MAX_K} candidates per query"
        return reason

    # --- masks --------------------------------------------------------------------------

    def _filter_masks(self, cache: dict, parts: list[Part], expression,
                      schema: pa.Schema) -> tuple[list, dict]:
        """The masks of ``parts`` under a filter and the dict of their compiled part sets
        by path, kept in the snapshot's ``cache`` for its last FILTER_CACHE filters: a
        filter searched again skips evaluating it and laying out its parts."""
        key = str(expression)
        with self._filter_lock:
            filters = cache.setdefault(FILTERS, collections.OrderedDict())
            entry = filters.get(key)
            if entry is not None and entry[0].equals(expression):
                filters.move_to_end(key)
                return entry[1], entry[2]
        masks = search_masks(parts, expression, schema)
        part_sets: dict = {}
        with self._filter_lock:
            filters[key] = (expression, masks, part_sets)
            while len(filters) > FILTER_CACHE:
                filters.popitem(last=False)
        return masks, part_sets

    # --- the CPU scan -------------------------------------------------------------------

    def _scan_parts(self, q: np.ndarray, k: int, codec: Codec, parts: list[Part],
                    offsets: np.ndarray, masks: list, part_sets: dict | None = None) -> TopK:
        """One compiled scan of every part when the kernels serve it, else a scan and a
        merge per part. ``part_sets`` (the snapshot's compiled part sets by path, for
        searches that take the parts' own masks) keeps the set this scan builds."""
        path = _native.scan_path()
        native = None if part_sets is None else part_sets.get(path)
        pieces = None
        if native is None:
            pieces = self._scan_pieces(codec, parts, offsets, masks)
            native = cpu.part_set(codec, pieces, path) if pieces else None
            if part_sets is not None and native is not None:
                part_sets[path] = native
        state = codec.prepare_query(q) if q.shape[0] <= cpu.NATIVE_MAX_QUERIES else None
        if native is not None:
            found = cpu.scan_many(codec, q, k, self.metric, [], state, native)
            if found is not None:
                return found
        top = TopK(q.shape[0], k)
        state = codec.prepare_query(q) if state is None else state
        for codes, live, ids, row_map, offset, kept in (
                pieces if pieces is not None
                else self._scan_pieces(codec, parts, offsets, masks)):
            local = cpu.scan(codec, codes, q, k, self.metric, live, state=state,
                             row_ids=ids, stable=kept)
            top.merge(local, row_map, offset)
        return top

    def _scan_pieces(self, codec: Codec, parts: list[Part], offsets: np.ndarray,
                     masks: list) -> list[tuple]:
        """``parts`` as ``cpu.scan_many`` takes them: a part whose filter keeps few rows
        goes as a gathered copy of those rows, the others whole with their masks."""
        # The compiled scan bounds every row of a part whatever its mask and scores only
        # candidates, so a masked part costs what an unmasked one does: only very selective
        # filters pay for a gathered copy there.
        compiled = cpu.table_kind(codec) is not None and _native.scan_path() not in (
            _native.NUMPY, "scalar")
        fraction = COMPILED_GATHER_FRACTION if compiled else GATHER_FRACTION
        native = []
        for part, offset, mask in zip(parts, offsets, masks, strict=False):
            codes, ids = part.columns[rows.CODE], part.columns[rows.ID]
            if mask is not None and np.count_nonzero(mask) < fraction * part.rows:
                chosen = np.nonzero(mask)[0]
                if chosen.size:
                    native.append((codes[chosen], None, ids[chosen], chosen + offset, 0, False))
            elif part.rows:
                kept = True if part.stream is None else self._stream_layout(part.stream)
                native.append((codes, mask, ids, None, int(offset), kept))
        return native

    def _stream_layout(self, stream):
        """The compiled scan's layout of the memtable named ``stream``, extended as rows
        arrive; False for a memtable already sealed (an older snapshot's)."""
        with self._lock:
            if stream != self._memtable_serial():
                return False
            if self._memtable_layout[0] != stream:
                self._memtable_layout = (stream, cpu.StreamLayout())
            return self._memtable_layout[1]

    # --- the GPU scan -------------------------------------------------------------------

    def _scan_parts_gpu(self, q: np.ndarray, k: int, codec: Codec, parts: list[Part],
                        offsets: np.ndarray, masks: list,
                        part_sets: dict | None = None) -> TopK:
        """One scan of the whole snapshot on the GPU: every part sits in the collection's
        arena (``search/gpu/arena.py``) with its deleted rows biased out there; a filter
        goes up as one mask over the arena, kept with the snapshot's part sets."""
        arena = self._device_arena(codec)
        query_sq_norms = np.einsum("ij,ij->i", q, q) if self.metric == "l2" else None
        filtered = any(mask is not part.live for mask, part in zip(masks, parts, strict=True))

        def scan(view) -> TopK:
            mask = _arena_mask(view, masks, part_sets) if filtered else None
            keys, found = arena.scanner.scan(codec, view.device, q, self.metric, k,
                                             query_sq_norms, mask)
            ties = np.where(found >= 0, view.ids[np.maximum(found, 0)], EMPTY_TIE)
            # The kernels return each query's keys sorted, empty slots (+inf) last; only
            # equal keys, ordered by arena row rather than by id, need sorting again.
            tied = (keys[:, 1:] == keys[:, :-1]) & np.isfinite(keys[:, 1:])
            return TopK.of(keys, view.positions(found, offsets), ties, ordered=not tied.any())

        return arena.search(parts, scan)

    def _device_arena(self, codec: Codec):
        """The collection's arena on the database's GPU scanner, for ``codec``."""
        with self._lock:
            if self._arena is None or self._arena.codec is not codec:
                from vecstore.search.gpu.arena import DeviceArena

                self._arena = DeviceArena(self.gpu_scanner.get(), codec)
            return self._arena

    # --- rescoring ----------------------------------------------------------------------

    def _fetch_column(self, rescore: int | None) -> str | None:
        """The column holding finer vectors, or None when not rescoring."""
        if _validate.as_rescore(rescore) is None:
            return None
        if self.rescore_column is None:
            raise InvalidArgument(
                f"collection {self.name!r} keeps nothing to rescore with; create it with "
                "store_vectors='float16' or a rescore_codec"
            )
        return self.rescore_column


def _arena_mask(view, masks: list, part_sets: dict | None) -> np.ndarray:
    """The filter's mask over ``view``'s arena rows, the same object while the arena
    stays the same (so its bias goes up once)."""
    held = None if part_sets is None else part_sets.get(ARENA_MASK)
    if held is not None and held[0] is view.device:
        return held[1]
    mask = view.mask(masks)
    if part_sets is not None:
        part_sets[ARENA_MASK] = (view.device, mask)
    return mask


def _rescore_fetch(parts: list[Part], offsets: np.ndarray, column: str,
                   rescore_codec: Codec | None) -> Callable[[np.ndarray], np.ndarray]:
    """The rows (m, d) float32 at positions (m,) of ``column``: stored vectors, or codes
    decoded by ``rescore_codec``."""
    if column == rows.VECTOR:
        return lambda positions: gather(parts, offsets, positions, column).astype(np.float32)
    return lambda positions: rescore_codec.decode(gather(parts, offsets, positions, column))
