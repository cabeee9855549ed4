"""The GPU arena's bookkeeping, run on the CPU with numpy standing in for CuPy: which rows
go up, where each part lies, which rows are dead, and how arena rows map back to ids and
snapshot positions. (tests/test_gpu.py checks searches over the arena on a real GPU.)"""

from __future__ import annotations

import numpy as np
import pytest

import vecstore
from vecstore import rows
from vecstore.errors import OutOfDeviceMemory
from vecstore.search.gpu.arena import DeviceArena
from vecstore.search.gpu.layouts import host_layout


class NumpyScanner:
    """What an arena asks of its scanner, on numpy arrays, with a byte budget."""

    cupy = np

    def __init__(self, budget_bytes: int = 1 << 40):
        self.budget_bytes = budget_bytes
        self.holders: list = []
        self.uploaded_rows = 0
        self.prunes = 0

    def hold(self, holder) -> None:
        self.holders.append(holder)

    def prune(self) -> None:
        self.prunes += 1

    def forget(self, holder) -> None:
        self.holders.remove(holder)

    @staticmethod
    def place_rows(layout, start, device, base_sq_norms) -> None:
        span = slice(start, start + layout[1].shape[0])
        for target, values in zip(device.buffers(), layout, strict=True):
            if values is not None:
                target[..., span] = values
        base_sq_norms[span] = layout[2]
        device.zeros[span] = 0

    @staticmethod
    def set_row_biases(changes, base_sq_norms, device) -> None:
        rows = np.where(changes >= 0, changes, ~changes)
        device.zeros[rows] = np.where(changes >= 0, 0, np.inf)
        device.sq_norms[rows] = np.where(changes >= 0, base_sq_norms[rows], np.inf)

    def check_budget(self, needed: int, rows: int) -> None:
        if sum(holder.nbytes for holder in self.holders) + needed > self.budget_bytes:
            raise OutOfDeviceMemory(f"{rows} rows need {needed} bytes")


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def snapshot(collection):
    current = collection._snapshot()
    return current.parts, current.offsets


def assert_arena_holds(arena: DeviceArena, view, parts, offsets) -> None:
    """Every live row of the snapshot is in the arena with its codes, scale, id and a
    zero bias; every other arena row has a +inf bias; positions map back."""
    device = view.device
    live_rows = []
    for part, start, size in zip(parts, view.starts, view.sizes, strict=True):
        assert size == part.rows
        if not size:
            continue
        span = slice(start, start + size)
        words, scale, sq_norms, signs, residual = host_layout(arena.codec,
                                                                   part.columns[rows.CODE])
        np.testing.assert_array_equal(device.words[:, span], words[:, :size])
        np.testing.assert_array_equal(device.scale[span], scale)
        np.testing.assert_array_equal(view.ids[span], part.columns[rows.ID])
        alive = np.ones(size, dtype=bool) if part.live is None else part.live[:size]
        np.testing.assert_array_equal(device.zeros[span], np.where(alive, 0, np.inf))
        np.testing.assert_array_equal(device.sq_norms[span], np.where(alive, sq_norms, np.inf))
        live_rows.append(np.arange(start, start + size)[alive])
    live = np.concatenate(live_rows) if live_rows else np.empty(0, dtype=np.int64)
    dead = np.setdiff1d(np.arange(device.n), live)
    assert np.isinf(device.zeros[dead]).all() and np.isinf(device.sq_norms[dead]).all()
    positions = view.positions(live, offsets)
    all_ids = np.concatenate([part.columns[rows.ID] for part in parts])
    np.testing.assert_array_equal(all_ids[positions], view.ids[live])
    assert (view.positions(np.array([-1]), offsets) == -1).all()


def test_the_arena_follows_adds_deletes_flushes_and_merges():
    with vecstore.open(device="cpu", segment_bytes=40_000, merge_policy=None) as db:
        c = db.create_collection("c", dim=32, metric="l2", codec="tq4")
        arena = DeviceArena(NumpyScanner(), c.codec)
        search = lambda: arena.search(*snapshot(c)[:1], lambda view: view)  # noqa: E731

        c.add(unit_rows(3000, 32, 1))
        c.flush()
        c.add(unit_rows(500, 32, 2), ids=np.arange(10_000, 10_500))
        parts, offsets = snapshot(c)
        assert len(parts) >= 3
        assert_arena_holds(arena, search(), parts, offsets)
        assert arena.uploaded_rows == 3500

        # Deletes and a small add upload only the new rows (segments hold 1,500 rows).
        c.delete(np.arange(0, 3000, 7))
        c.add(unit_rows(200, 32, 3), ids=np.arange(20_000, 20_200))
        c.delete(np.array([10_001, 20_002]))
        view = search()
        assert arena.uploaded_rows == 3700
        assert_arena_holds(arena, view, *snapshot(c))

        # A flush moves the memtable's 698 live rows into a segment: the old range dies.
        c.flush()
        view = search()
        assert arena.uploaded_rows == 3700 + 698
        assert_arena_holds(arena, view, *snapshot(c))
        assert np.count_nonzero(view.ids >= 0) == sum(p.rows for p in snapshot(c)[0])

        # More deletes in segments that already had some: only the changed rows' biases
        # move, and nothing goes up.
        c.delete(np.arange(1, 3000, 50))
        view = search()
        assert arena.uploaded_rows == 3700 + 698
        assert_arena_holds(arena, view, *snapshot(c))

        # Compaction replaces every segment: the dead rows then outnumber the live ones,
        # and the arena is laid out anew.
        c.compact()
        parts, offsets = snapshot(c)
        view = search()
        assert arena.rebuilds == 1
        assert arena.rows_in_use == sum(p.rows for p in parts) <= view.device.n
        assert_arena_holds(arena, view, parts, offsets)


def test_a_memtable_followed_by_another_range_moves_to_the_end():
    with vecstore.open(device="cpu", merge_policy=None) as db:
        c = db.create_collection("c", dim=16, metric="ip", codec="tq2")
        c.add(unit_rows(200, 16, 4))
        arena = DeviceArena(NumpyScanner(), c.codec)
        memtable_first, offsets = snapshot(c)
        arena.search(memtable_first, lambda view: view)
        other = vecstore.open(device="cpu").create_collection("d", dim=16, metric="ip",
                                                              codec="tq2")
        other.add(unit_rows(300, 16, 5), ids=np.arange(1000, 1300))
        other.flush()
        # A snapshot whose segment lands after the memtable's range, then the memtable grows.
        segment = snapshot(other)[0][0]
        c.add(unit_rows(50, 16, 6), ids=np.arange(500, 550))
        memtable = snapshot(c)[0][0]
        view = arena.search([segment, memtable], lambda view: view)
        offsets = np.cumsum([0, segment.rows, memtable.rows])
        assert_arena_holds(arena, view, [segment, memtable], offsets)
        assert view.starts.tolist() == [200, 500]
        assert arena.uploaded_rows == 200 + 300 + 50
        # 750 rows in use (200 dead); a search scans a whole granule, the rest dead.
        assert arena.rows_in_use == 750 and view.device.n == 1024


def test_a_filter_mask_covers_only_the_snapshot_rows():
    with vecstore.open(device="cpu", merge_policy=None) as db:
        c = db.create_collection("c", dim=16, metric="ip", codec="tq4")
        c.add(unit_rows(100, 16, 7))
        c.flush()
        c.add(unit_rows(40, 16, 8))
        arena = DeviceArena(NumpyScanner(), c.codec)
        parts, _ = snapshot(c)
        view = arena.search(parts, lambda view: view)
        masks = [np.arange(part.rows) % 2 == 0 for part in parts]
        mask = view.mask(masks)
        expected = np.concatenate([m for m, p in zip(masks, parts, strict=True) if p.rows])
        assert mask.shape == (view.device.n,)
        np.testing.assert_array_equal(mask[np.concatenate(
            [np.arange(s, s + n) for s, n in zip(view.starts, view.sizes, strict=True)
             if n])], expected)


def test_an_arena_past_its_budget_raises_and_keeps_what_it_held():
    with vecstore.open(device="cpu", merge_policy=None) as db:
        c = db.create_collection("c", dim=32, metric="ip", codec="tq4")
        c.add(unit_rows(1000, 32, 9))
        scanner = NumpyScanner(budget_bytes=200_000)
        arena = DeviceArena(scanner, c.codec)
        arena.search(snapshot(c)[0], lambda view: view)
        held = arena.nbytes
        c.add(unit_rows(20_000, 32, 10), ids=np.arange(5000, 25_000))
        with pytest.raises(OutOfDeviceMemory):
            arena.search(snapshot(c)[0], lambda view: view)
        assert arena.nbytes == held


def test_a_growing_memtable_keeps_its_deleted_rows_dead():
    with vecstore.open(device="cpu", merge_policy=None) as db:
        c = db.create_collection("c", dim=16, metric="l2", codec="tq4")
        arena = DeviceArena(NumpyScanner(), c.codec)
        search = lambda: arena.search(snapshot(c)[0], lambda view: view)  # noqa: E731
        c.add(unit_rows(300, 16, 11))
        search()
        c.delete(np.arange(0, 300, 3))
        assert_arena_holds(arena, search(), *snapshot(c))
        # New rows go up live beside the dead ones, which stay dead.
        c.add(unit_rows(100, 16, 12), ids=np.arange(1000, 1100))
        assert_arena_holds(arena, search(), *snapshot(c))
        assert arena.uploaded_rows == 400
        # An upsert deletes its old row and appends the new one; a delete of a new row.
        c.upsert(unit_rows(1, 16, 13), ids=np.array([1]))
        c.delete(np.array([1050]))
        view = search()
        assert_arena_holds(arena, view, *snapshot(c))
        assert arena.uploaded_rows == 401
        assert np.count_nonzero(np.isfinite(view.device.zeros)) == len(c)


def test_writes_bring_a_collection_arena_to_their_snapshot():
    """Once GPU searches gave a collection an arena, each add, upsert, delete, flush and
    compaction brings it to the new snapshot, so that the search after the write has
    nothing to sync."""
    with vecstore.open(device="cpu", merge_policy=None) as db:
        c = db.create_collection("c", dim=16, metric="l2", codec="tq4")
        c.add(unit_rows(300, 16, 14))
        c.flush()
        c.add(unit_rows(50, 16, 15), ids=np.arange(1000, 1050))
        arena = DeviceArena(NumpyScanner(), c.codec)
        c._executor._arena = arena
        writes = [lambda: c.delete(np.array([3, 1001])),
                  lambda: c.add(unit_rows(20, 16, 16), ids=np.arange(2000, 2020)),
                  lambda: c.upsert(unit_rows(2, 16, 17), ids=np.array([5, 2003])),
                  c.flush, c.compact]
        for number, write in enumerate(writes):
            write()
            prepared_parts, view = arena._last
            assert prepared_parts is c._snapshot().parts
            assert_arena_holds(arena, view, *snapshot(c))
            if number == 2:   # the adds and the upsert sent their own rows only
                assert arena.uploaded_rows == 350 + 20 + 2
        # A delete of absent ids changes nothing, so it prepares nothing.
        before = arena._last
        assert c.delete(np.array([99_999])) == 0
        assert arena._last is before
