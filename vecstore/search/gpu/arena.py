"""A collection's whole snapshot on the GPU as one part, so that a search is one scan.

A ``DeviceArena`` keeps every part of a collection (its segments and its memtable) in the
buffers of one ``DeviceCodes``, as ranges of rows. The scanner then searches all of them
with one launch (or one replayed graph) and one copy back, however many parts there are.

- A part goes up once. The memtable grows in place while its range is the last one; when
  another part lands after it, it moves to the end on the device.
- Deleted rows carry a +inf row bias in the arena itself. A part whose live mask is a new
  array is compared with the mask last applied (kept: masks are replaced, never
  modified), and only the rows whose state changed are written (a delete changes a few).
  The scanner's unmasked paths, the single-query and batch plans, so skip deleted rows
  with nothing extra per search.
- A part that leaves the snapshot (merged, or flushed from the memtable) leaves dead rows,
  which a rebuild drops once they outnumber the live ones.
- Row ids stay on the host beside the arena, so the k rows a search returns are turned
  into ids and snapshot positions by a lookup of k values, not of the part.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

from vecstore import rows as row_columns
from vecstore.search.gpu.layouts import DeviceCodes, host_layout

# Least capacity of a new arena, in rows; it then grows by doubling.
MIN_CAPACITY = 1024
# Searches scan the rows in use rounded up to a power of two of at least this many rows
# and of at least 1/SCAN_GRANULES of them (the rows past the end are dead): the scanned
# count, and with it the scanner's plans and captured graphs, then change only once in
# that many added rows, at a cost of at most 1/SCAN_GRANULES more rows scanned.
MIN_SCAN_GRANULE = 1024
SCAN_GRANULES = 64


@dataclass
class _Range:
    """Rows [start, start + rows) of the arena hold part ``key``'s first ``rows`` rows;
    ``live`` is the part's live mask their biases were last set from (None: all live, as
    rows go up), for its length (rows past it went up later, live). Live masks are
    replaced, never modified (a memtable's is a view of its live column, which only grows
    past the rows viewed), so the mask kept here keeps its values."""

    key: object
    start: int
    rows: int
    live: np.ndarray | None = None


def part_key(part) -> object:
    """What names a part's rows in the arena: its stream (the memtable, whose rows only
    grow) or its segment key."""
    return ("stream", part.stream) if part.stream is not None else ("segment", part.key)


@dataclass
class ArenaView:
    """What a search of one snapshot reads: the arena's codes (``n`` rows), the id of
    every arena row, and where each part of the snapshot lies in the arena."""

    device: DeviceCodes
    ids: np.ndarray         # (n,) int64, the id of every arena row (-1 for dead rows)
    starts: np.ndarray      # (parts,) int64, arena row of each part's first row (-1: empty)
    sizes: np.ndarray       # (parts,) int64, each part's rows

    def __post_init__(self):
        held = np.nonzero(self.sizes)[0]
        self._held = held[np.argsort(self.starts[held], kind="stable")]
        self._held_starts = self.starts[self._held]

    def positions(self, arena_rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Snapshot positions (same shape, int64) of ``arena_rows`` (-1 stays -1), given
        the snapshot's part ``offsets`` (parts + 1,)."""
        at = np.searchsorted(self._held_starts, arena_rows, side="right") - 1
        which = self._held[np.maximum(at, 0)]
        found = offsets[which] + (arena_rows - self.starts[which])
        return np.where(arena_rows >= 0, found, -1)

    def mask(self, masks: list) -> np.ndarray:
        """The arena rows (n,) bool a search may return, from the snapshot's per-part
        ``masks`` (None: every row of the part); dead rows are never returned."""
        out = np.zeros(self.device.n, dtype=bool)
        for start, size, part_mask in zip(self.starts, self.sizes, masks, strict=True):
            if size:
                out[start : start + size] = True if part_mask is None else part_mask[:size]
        return out


class DeviceArena:
    """One collection's parts in one ``DeviceCodes`` of ``scanner``, for ``codec``.

    ``search(parts, scan)`` syncs the arena with a snapshot's parts and runs ``scan`` on
    its view under the arena's lock: the arena changes only between searches, so a
    search never sees rows move. ``uploaded_rows`` counts the rows copied up and
    ``rebuilds`` the times the parts were laid out anew (for tests and benchmarks).
    """

    def __init__(self, scanner, codec):
        self.scanner, self.codec, self.cupy = scanner, codec, scanner.cupy
        self._ranges: dict[object, _Range] = {}
        self._end = 0                 # rows in use, live or dead
        self._dead = 0
        self._device: DeviceCodes | None = None
        self._base_sq_norms = None    # (capacity,) device float32, before masking
        self._ids = np.empty(0, dtype=np.int64)
        self._lock = threading.Lock()
        # The parts list of the last search and its view: a snapshot searched again (the
        # same list object) needs no sync.
        self._last: tuple | None = None
        self.uploaded_rows = 0
        self.rebuilds = 0
        scanner.hold(self)

    @property
    def device(self) -> DeviceCodes | None:
        """The arena's codes as the last search saw them."""
        return self._device

    @property
    def nbytes(self) -> int:
        """Device bytes the arena holds."""
        if self._device is None:
            return 0
        return self._device.nbytes + self._base_sq_norms.nbytes

    def search(self, parts, scan):
        """``scan(view)`` for the ``ArenaView`` holding exactly the rows of ``parts`` (a
        snapshot's nonempty parts are placed; each has ``columns``, ``rows``, ``live``
        and its key), run while nothing else changes the arena."""
        with self._lock:
            return scan(self._view(parts))

    def prepare(self, parts) -> None:
        """Bring the arena to ``parts`` now (after a write), so that the first search of
        that snapshot finds it ready."""
        with self._lock:
            self._view(parts)

    def _view(self, parts) -> ArenaView:
        if self._last is None or self._last[0] is not parts:
            self._last = (parts, self._sync(parts))
        return self._last[1]

    def _sync(self, parts) -> ArenaView:
        before = self._device
        keys = {part_key(part) for part in parts if part.rows}
        for key in [key for key in self._ranges if key not in keys]:
            self._kill(self._ranges.pop(key))
        if self._dead > max(sum(part.rows for part in parts), MIN_CAPACITY):
            self._reset()
        for part in parts:
            if part.rows:
                self._place(part)
        for part in parts:
            if part.rows:
                self._set_live(self._ranges[part_key(part)], part.live)
        starts = np.array([self._ranges[part_key(part)].start if part.rows else -1
                           for part in parts], dtype=np.int64)
        sizes = np.array([part.rows for part in parts], dtype=np.int64)
        if self._device is None:
            self._reserve(MIN_CAPACITY, None)
        scanned = self._scanned_rows()
        if self._device.n != scanned:
            self._device = replace(self._device, n=scanned)
        if self._device is not before:
            self.scanner.prune()
        return ArenaView(self._device, self._ids[:scanned], starts, sizes)

    @property
    def rows_in_use(self) -> int:
        """Arena rows holding parts' rows, live or dead (searches scan a few more)."""
        return self._end

    def _scanned_rows(self) -> int:
        """The rows a search scans: the rows in use rounded up to the scan granule,
        within the capacity."""
        granule = max(MIN_SCAN_GRANULE, 1 << max(0, (self._end // SCAN_GRANULES)).bit_length())
        return min(self._device.words.shape[1], -(-self._end // granule) * granule)

    def _reset(self) -> None:
        """Drop every range and the buffers, so that the parts are laid out anew (in new
        buffers: plans built on the old ones keep reading what they were built on)."""
        self._ranges, self._end, self._dead = {}, 0, 0
        self._device = self._base_sq_norms = None
        self._ids = np.empty(0, dtype=np.int64)
        self.rebuilds += 1

    def _place(self, part) -> None:
        """Give ``part`` its range: a new part's rows go up; a grown memtable's new rows
        go up after its range, which first moves to the end if another range follows."""
        key = part_key(part)
        codes, ids = part.columns[row_columns.CODE], part.columns[row_columns.ID]
        held = self._ranges.get(key)
        if held is None:
            held = self._ranges[key] = _Range(key, self._end, 0)
        if part.rows == held.rows:
            return
        if held.start + held.rows != self._end:
            self._move_to_end(held)
        self._upload(codes[held.rows:], ids[held.rows:], held.start + held.rows)
        held.rows = part.rows
        self._end = held.start + held.rows

    def _move_to_end(self, held: _Range) -> None:
        """Copy ``held``'s rows to the end of the arena on the device, leaving dead rows."""
        start, rows = self._end, held.rows
        self._reserve(start + rows, None)
        device = self._device
        old, new = slice(held.start, held.start + rows), slice(start, start + rows)
        for buffer in (*device.buffers(), device.zeros, self._base_sq_norms):
            if buffer is not None:
                buffer[..., new] = buffer[..., old]
        self._ids[new] = self._ids[old]
        self._kill(held)
        held.start = start
        self._end = start + rows

    def _kill(self, held: _Range) -> None:
        """Mark ``held``'s rows dead: +inf biases, no ids."""
        span = slice(held.start, held.start + held.rows)
        self._device.zeros[span] = np.inf
        self._device.sq_norms[span] = np.inf
        self._ids[span] = -1
        self._dead += held.rows

    def _set_live(self, held: _Range, live: np.ndarray | None) -> None:
        """Set ``held``'s biases from the part's live mask (None: all live), its first
        held.rows rows. Nothing happens for the mask last applied or another view of its
        array; otherwise only the rows whose state changed go up, to one kernel launch
        (a delete changes a few)."""
        if live is held.live:
            return
        if live is not None and held.live is not None and _base(live) is _base(held.live):
            held.live = live
            return
        changed, now_live = _changed_rows(held.live, live, held.rows)
        if changed.size:
            rows = changed + held.start
            self.scanner.set_row_biases(np.where(now_live, rows, ~rows),
                                        self._base_sq_norms, self._device)
        held.live = live

    def _upload(self, codes: np.ndarray, ids: np.ndarray, start: int) -> None:
        """Write rows ``codes`` (m, code_size) uint8 with ``ids`` (m,) int64 at arena row
        ``start``, all live."""
        m = codes.shape[0]
        if m == 0:
            return
        layout = host_layout(self.codec, codes)
        self._reserve(start + m, layout)
        self.scanner.place_rows([None if values is None else values[..., :m]
                                 for values in layout], start, self._device,
                                self._base_sq_norms)
        self._ids[start : start + m] = ids
        self.uploaded_rows += m
        self.scanner.uploaded_rows += m

    def _reserve(self, rows: int, like: list | None) -> None:
        """Grow the buffers by doubling to hold at least ``rows`` rows; ``like`` (a host
        layout) gives their shapes and dtypes when there are none yet."""
        capacity = 0 if self._device is None else self._device.words.shape[1]
        if rows <= capacity:
            return
        capacity = max(-(-rows // 32) * 32, 2 * capacity, MIN_CAPACITY)
        cp, old = self.cupy, self._device
        if old is None and like is None:
            like = host_layout(
                self.codec, np.zeros((1, self.codec.code_size), dtype=np.uint8))
        like = old.buffers() if old is not None else like
        buffers = [None if values is None else cp.zeros(
            (values.shape[0], capacity) if values.ndim == 2 else (capacity,),
            dtype=values.dtype) for values in like]
        zeros = cp.full(capacity, np.inf, dtype=cp.float32)
        base = cp.zeros(capacity, dtype=cp.float32)
        grown = sum(b.nbytes for b in (*buffers, zeros, base) if b is not None)
        self.scanner.check_budget(grown - self.nbytes, rows - self._end)
        used = slice(0, self._end)
        if old is not None:
            for buffer, previous in zip(buffers, old.buffers(), strict=True):
                if buffer is not None:
                    buffer[..., used] = previous[..., used]
            zeros[used] = old.zeros[used]
            base[used] = self._base_sq_norms[used]
        words, scale, sq_norms, signs, residual = buffers
        sq_norms[self._end:] = np.inf
        self._device = DeviceCodes(words, scale, sq_norms, self._end, zeros, signs, residual)
        self._base_sq_norms = base
        ids = np.full(capacity, -1, dtype=np.int64)
        ids[used] = self._ids[used]
        self._ids = ids


def _base(mask: np.ndarray) -> np.ndarray:
    """The array ``mask`` views (itself when it owns its data)."""
    return mask if mask.base is None else mask.base


def _changed_rows(before: np.ndarray | None, after: np.ndarray | None,
                  rows: int) -> tuple[np.ndarray, np.ndarray | bool]:
    """The rows (c,) int64 among the first ``rows`` whose state differs between the masks
    ``before`` (rows past its length are live) and ``after`` (None: all live), and their
    state in ``after``, (c,) bool (or True for all)."""
    if after is None:
        return (np.empty(0, dtype=np.int64) if before is None
                else np.flatnonzero(~before)), True
    after = after[:rows]
    if before is None:
        changed = np.flatnonzero(~after)
    else:
        seen = before.size
        changed = np.flatnonzero(after[:seen] != before)
        changed = np.concatenate([changed, seen + np.flatnonzero(~after[seen:])])
    return changed, after[changed]
