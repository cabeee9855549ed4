"""Background size-tiered merges: the policy's bounds, and merges that run beside
writes, deletes, compaction, close and reopen without losing or resurrecting a row."""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vecstore
from vecstore import InvalidArgument, TieredMergePolicy
from vecstore.collection import Collection

DIM = 8
# flat codes (32 bytes) + id and norm: 44 bytes a row.
ROW_BYTES = 4 * DIM + 12


def vectors(ids, version: int = 0) -> np.ndarray:
    """(n, DIM) float32 rows, a function of (id, version)."""
    ids = np.asarray(ids, dtype=np.float32)[:, None]
    return np.sin(ids * (np.arange(DIM, dtype=np.float32) + 1) + version).astype(np.float32)


def settle(policy: TieredMergePolicy, sizes: list[int], max_bytes: int) -> tuple[list, int]:
    """Apply the policy's merges until none is due; the sizes and the bytes merged."""
    merged = 0
    while plan := policy.plan(sizes, max_bytes):
        total = sum(sizes[i] for i in plan)
        merged += total
        sizes = [s for i, s in enumerate(sizes) if i not in plan] + [total]
    return sizes, merged


@settings(max_examples=200, deadline=None)
@given(fanout=st.integers(2, 6),
       flushes=st.lists(st.integers(100, 5000), min_size=1, max_size=400))
def test_segments_and_write_amplification_stay_logarithmic(fanout, flushes):
    policy, max_bytes = TieredMergePolicy(fanout), 1 << 20
    sizes, merged = [], 0
    for size in flushes:
        sizes, more = settle(policy, [*sizes, size], max_bytes)
        merged += more
    small = [s for s in sizes if s < max_bytes]
    tiers = [policy.tier(s) for s in small]
    assert all(tiers.count(t) < fanout for t in set(tiers))
    span = math.log(max_bytes / min(flushes), fanout)
    assert len(small) <= (fanout - 1) * (span + 2)
    assert sum(sizes) == sum(flushes)
    assert (sum(flushes) + merged) / sum(flushes) <= 2 + span


def test_tiers_are_exact_at_powers_of_the_fanout():
    policy = TieredMergePolicy(3)
    assert [policy.tier(n) for n in (0, 1, 2, 3, 8, 9, 26, 27, 3**20 - 1, 3**20)] == \
        [0, 0, 0, 1, 1, 2, 2, 3, 19, 20]


@pytest.mark.parametrize("fanout", [0, 1, 2.5, True, "3"])
def test_bad_fanouts_are_refused(fanout):
    with pytest.raises(InvalidArgument, match="fanout"):
        TieredMergePolicy(fanout)
    with pytest.raises(InvalidArgument, match="merge_policy"):
        vecstore.open(merge_policy=3)


def test_a_thousand_small_flushes_leave_logarithmically_many_segments(tmp_path):
    db = vecstore.open(tmp_path / "db", durability="batch")
    c = db.create_collection("logs", dim=DIM, metric="ip", codec="flat")
    for i in range(1000):
        c.add(vectors(range(i * 100, (i + 1) * 100)), ids=np.arange(i * 100, (i + 1) * 100))
        c.flush()
    assert c.wait_for_merges(60)
    stats = c.stats()
    bound = 2 * (math.log(1000, 3) + 2)
    assert stats["rows"] == 100_000 and stats["segments"] <= bound
    assert 1.0 < stats["write_amplification"] <= 2 + math.log(1000, 3)
    queries = vectors([5, 70_000, 99_999], version=1)
    expected = c.search(queries, k=20)
    db.close()
    with vecstore.open(tmp_path / "db") as again:
        c = again.get_collection("logs")
        assert c.stats()["segments"] == stats["segments"]
        result = c.search(queries, k=20)
        np.testing.assert_array_equal(result.ids, expected.ids)
        c.compact()
        np.testing.assert_array_equal(c.search(queries, k=20).ids, expected.ids)
    files = os.listdir(tmp_path / "db" / "collections" / "logs")
    assert sorted(f for f in files if f.endswith(".arrow")) == \
        sorted(f for f in files if f.startswith("seg-"))


def _pause_merges(monkeypatch):
    """Make the next merge wait after reading its sources: (paused, resume) events."""
    paused, resume = threading.Event(), threading.Event()
    original = Collection._seal

    def seal(self, sources):
        if threading.current_thread().name.startswith("vecstore-merge") \
                and not paused.is_set():
            paused.set()
            resume.wait(30)
        return original(self, sources)

    monkeypatch.setattr(Collection, "_seal", seal)
    return paused, resume


def _flushed(c: Collection, batches: int, rows: int = 50, first: int = 0) -> None:
    for b in range(batches):
        ids = np.arange(first + b * rows, first + (b + 1) * rows)
        c.add(vectors(ids), ids=ids)
        c.flush()


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_deletes_and_upserts_during_a_merge_stay_applied(tmp_path, monkeypatch, where):
    db = vecstore.open(None if where == "memory" else tmp_path / "db")
    c = db.create_collection("live", dim=DIM, metric="ip", codec="flat")
    paused, resume = _pause_merges(monkeypatch)
    _flushed(c, 3)
    assert paused.wait(10), "no merge started"
    assert c.delete([3, 60, 149]) == 3
    c.upsert(vectors([10, 11], version=7), ids=[10, 11])
    hits_before = c.search(vectors([60, 10], version=0), k=1).ids[:, 0]
    resume.set()
    assert c.wait_for_merges(10)
    assert c.stats()["merges"] == 1 and c.stats()["rows"] == 150 - 3
    for absent in (3, 60, 149):
        assert absent not in c
    np.testing.assert_allclose(c.get([10, 11]), vectors([10, 11], version=7), rtol=1e-6)
    np.testing.assert_array_equal(c.search(vectors([60, 10], version=0), k=1).ids[:, 0],
                                  hits_before)
    if where == "disk":
        db.close()
        db = vecstore.open(tmp_path / "db")
        c = db.get_collection("live")
        assert len(c) == 147 and 60 not in c
        np.testing.assert_allclose(c.get([10]), vectors([10], version=7), rtol=1e-6)
    db.close()


def test_a_merge_whose_sources_were_compacted_is_given_up(tmp_path, monkeypatch):
    db = vecstore.open(tmp_path / "db")
    c = db.create_collection("race", dim=DIM, metric="ip", codec="flat")
    paused, resume = _pause_merges(monkeypatch)
    _flushed(c, 3)
    assert paused.wait(10)
    c.delete([0])
    c.compact()
    resume.set()
    assert c.wait_for_merges(10)
    assert c.stats()["merges"] == 0 and len(c) == 149
    directory = tmp_path / "db" / "collections" / "race"
    listed = {r.segment.file for r in c._store.manifest.segments}
    assert {p.name for p in directory.glob("*.arrow")} == listed
    db.close()


def test_close_waits_for_a_running_merge(tmp_path, monkeypatch):
    db = vecstore.open(tmp_path / "db")
    c = db.create_collection("closing", dim=DIM, metric="ip", codec="flat")
    paused, resume = _pause_merges(monkeypatch)
    _flushed(c, 3)
    assert paused.wait(10)
    closer = threading.Thread(target=db.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close returned while a merge was writing"
    resume.set()
    closer.join(10)
    assert not closer.is_alive()
    with vecstore.open(tmp_path / "db") as again:
        assert len(again.get_collection("closing")) == 150


def test_merges_off_leave_every_flushed_segment(tmp_path):
    with vecstore.open(tmp_path / "db", merge_policy=None) as db:
        c = db.create_collection("off", dim=DIM, metric="ip", codec="flat")
        _flushed(c, 12)
        assert c.wait_for_merges(1)
        assert c.stats()["segments"] == 12 and c.stats()["merges"] == 0


def _flush_while_merges_lag(tmp_path, monkeypatch, backlog: int) -> int:
    """The most segments seen after 80 fast flushes with slowed-down merges."""
    import time

    monkeypatch.setattr("vecstore.collection.MERGE_BACKLOG", backlog)
    original = Collection._seal

    def slow_seal(self, sources):
        if threading.current_thread().name.startswith("vecstore-merge"):
            time.sleep(0.05)
        return original(self, sources)

    monkeypatch.setattr(Collection, "_seal", slow_seal)
    most = 0
    with vecstore.open(tmp_path / "db", durability="batch") as db:
        c = db.create_collection("slow", dim=DIM, metric="ip", codec="flat")
        for b in range(80):
            ids = np.arange(b * 20, (b + 1) * 20)
            c.add(vectors(ids), ids=ids)
            c.flush()
            most = max(most, c.stats()["segments"])
        assert c.wait_for_merges(30) and len(c) == 1600
    return most


def test_flushes_wait_for_merges_that_fall_behind(tmp_path, monkeypatch):
    """Flushing keeps going while merges lag, but leaves at most MERGE_BACKLOG small
    segments (plus the one a flush adds) for searches to visit; without the wait, the
    same writes pile up more."""
    assert _flush_while_merges_lag(tmp_path / "a", monkeypatch, backlog=12) <= 13
    assert _flush_while_merges_lag(tmp_path / "b", monkeypatch, backlog=10**6) > 13
