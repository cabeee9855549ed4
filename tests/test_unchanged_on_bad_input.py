"""Bad input leaves the database unchanged on disk.

Each case makes one bad call on an open on-disk database and checks the specific error
type, then compares the whole directory before and after: every directory and every
file's bytes (the log, the manifests, segments, tombstones, the empty LOCK file). The
in-memory view must not change either (row count, metadata schema, search answers), and
an untrained data-dependent codec must stay untrained, with no manifest change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import vecstore
from vecstore import AlreadyExists, InvalidArgument, Locked, NotFound

DIM = 16


@dataclass
class Env:
    path: Path
    db: vecstore.Database
    c: vecstore.Collection  # flat/ip: segments, tombstones, and rows only in the log
    pq: vecstore.Collection  # pq4x4, not yet trained, empty


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def env(tmp_path):
    path = tmp_path / "db"
    db = vecstore.open(path)
    try:
        c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
        c.add(rows(100), ids=np.arange(100),
              metadata={"tag": list(range(100)), "name": [f"n{i}" for i in range(100)]})
        c.flush()
        c.delete([3, 4, 5])
        c.flush()  # tombstones
        c.add(rows(20, 1), ids=np.arange(100, 120), metadata={"tag": list(range(20))})
        c.delete([110])  # the log holds an add and a delete
        pq = db.create_collection("pq", dim=DIM, metric="ip", codec="pq4x4")
        assert not pq.codec.is_trained
        yield Env(path, db, c, pq)
    finally:
        db.close()


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every directory (None) and file (its bytes) under ``root``, by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = path.read_bytes() if path.is_file() else None
    return out


def memory_view(e: Env):
    q = rows(3, 99)
    res = e.c.search(q, 7)
    return (e.db.list_collections(), len(e.c), e.c.metadata_schema, e.c.stats(),
            res.ids.tolist(), res.distances.tolist(), len(e.pq), e.pq.codec.is_trained,
            e.pq.metadata_schema)


def assert_unchanged(e: Env, call, error) -> None:
    before, view = snapshot(e.path), memory_view(e)
    assert "LOCK" in before and before["LOCK"] == b""
    assert any(name.endswith(".log") for name in before)  # the log has records
    with pytest.raises(error):
        call(e)
    after = snapshot(e.path)
    assert sorted(after) == sorted(before), "files or directories appeared or vanished"
    for name in before:
        assert after[name] == before[name], f"{name} changed"
    assert memory_view(e) == view
    assert not e.pq.codec.is_trained


x3 = rows(3, 5)
NEW3 = [1000, 1001, 1002]

BAD_CALLS = {
    # --- add: vectors
    "add-wrong-dim": (lambda e: e.c.add(rows(3)[:, :15], ids=NEW3), InvalidArgument),
    "add-1d-wrong-dim": (lambda e: e.c.add(np.ones(DIM + 1)), InvalidArgument),
    "add-nan": (lambda e: e.c.add(np.where(np.eye(3, DIM) > 0, np.nan, x3), ids=NEW3),
                InvalidArgument),
    "add-inf": (lambda e: e.c.add(np.where(np.eye(3, DIM) > 0, -np.inf, x3)), InvalidArgument),
    "add-empty-batch": (lambda e: e.c.add(np.empty((0, DIM), np.float32)), InvalidArgument),
    "add-empty-list": (lambda e: e.c.add([]), InvalidArgument),
    "add-3d": (lambda e: e.c.add(np.ones((2, 2, DIM))), InvalidArgument),
    "add-0d": (lambda e: e.c.add(np.float32(1.0)), InvalidArgument),
    "add-string-dtype": (lambda e: e.c.add(np.array([["a"] * DIM])), InvalidArgument),
    "add-object-dtype": (lambda e: e.c.add(np.array([[None] * DIM])), InvalidArgument),
    "add-bool-dtype": (lambda e: e.c.add(np.ones((2, DIM), bool)), InvalidArgument),
    "add-complex-dtype": (lambda e: e.c.add(np.ones((2, DIM), complex)), InvalidArgument),
    "add-ragged": (lambda e: e.c.add([[1.0] * DIM, [1.0] * (DIM - 1)]), InvalidArgument),
    # --- add: ids
    "add-ids-short": (lambda e: e.c.add(x3, ids=[1000, 1001]), InvalidArgument),
    "add-ids-long": (lambda e: e.c.add(x3, ids=[1000, 1001, 1002, 1003]), InvalidArgument),
    "add-ids-negative": (lambda e: e.c.add(x3, ids=[1000, -1, 1002]), InvalidArgument),
    "add-ids-float": (lambda e: e.c.add(x3, ids=[1000.0, 1001.5, 1002.0]), InvalidArgument),
    "add-ids-2d": (lambda e: e.c.add(x3, ids=[[1000, 1001, 1002]]), InvalidArgument),
    "add-ids-strings": (lambda e: e.c.add(x3, ids=["a", "b", "c"]), InvalidArgument),
    "add-ids-uint64-huge": (lambda e: e.c.add(x3, ids=np.array([1, 2, 2**63 + 5], np.uint64)),
                            InvalidArgument),
    "add-ids-duplicate": (lambda e: e.c.add(x3, ids=[1000, 1001, 1000]), InvalidArgument),
    "add-ids-in-segment": (lambda e: e.c.add(x3, ids=[1000, 7, 1002]), AlreadyExists),
    "add-ids-only-in-log": (lambda e: e.c.add(x3, ids=[1000, 1001, 105]), AlreadyExists),
    # --- add: metadata
    "meta-short": (lambda e: e.c.add(x3, ids=NEW3, metadata={"tag": [1, 2]}), InvalidArgument),
    "meta-long": (lambda e: e.c.add(x3, metadata={"tag": [1, 2, 3, 4]}), InvalidArgument),
    "meta-table-rows": (lambda e: e.c.add(x3, metadata=pa.table({"tag": [1]})),
                        InvalidArgument),
    "meta-reserved-id": (lambda e: e.c.add(x3, metadata={"id": [1, 2, 3]}), InvalidArgument),
    "meta-reserved-code": (lambda e: e.c.add(x3, metadata={"code": [b"a", b"b", b"c"]}),
                           InvalidArgument),
    "meta-reserved-vector": (lambda e: e.c.add(x3, metadata={"vector": [1.0, 2.0, 3.0]}),
                             InvalidArgument),
    "meta-reserved-norm": (lambda e: e.c.add(x3, metadata={"norm": [1.0, 2.0, 3.0]}),
                           InvalidArgument),
    "meta-reserved-rescore-code": (
        lambda e: e.c.add(x3, metadata={"rescore_code": [1, 2, 3]}), InvalidArgument),
    "meta-strings-into-int": (lambda e: e.c.add(x3, ids=NEW3, metadata={"tag": ["a", "b", "c"]}),
                              InvalidArgument),
    "meta-fraction-into-int": (lambda e: e.c.add(x3, metadata={"tag": [1.5, 2.0, 3.0]}),
                               InvalidArgument),
    "meta-list-into-string": (lambda e: e.c.add(x3, metadata={"name": [[1], [2], [3]]}),
                              InvalidArgument),
    "meta-int-too-big": (lambda e: e.c.add(x3, metadata={"big": [2**70, 1, 2]}),
                         InvalidArgument),
    "meta-all-null": (lambda e: e.c.add(x3, metadata={"empty": [None, None, None]}),
                      InvalidArgument),
    "meta-mixed-types": (lambda e: e.c.add(x3, metadata={"mixed": [1, "a", 2.5]}),
                         InvalidArgument),
    "meta-scalar": (lambda e: e.c.add(x3, metadata={"tag": 5}), InvalidArgument),
    "meta-not-a-dict": (lambda e: e.c.add(x3, metadata=[{"tag": 1}] * 3), InvalidArgument),
    "meta-non-string-name": (lambda e: e.c.add(x3, metadata={1: [1, 2, 3]}), InvalidArgument),
    "meta-empty-name": (lambda e: e.c.add(x3, metadata={"": [1, 2, 3]}), InvalidArgument),
    "meta-duplicate-names": (
        lambda e: e.c.add(x3, metadata=pa.Table.from_arrays([pa.array([1, 2, 3])] * 2,
                                                            names=["t", "t"])),
        InvalidArgument),
    "meta-good-then-bad-field": (
        lambda e: e.c.add(x3, metadata={"fresh": [1, 2, 3], "tag": ["x", "y", "z"]}),
        InvalidArgument),
    # --- upsert
    "upsert-no-ids": (lambda e: e.c.upsert(x3, None), InvalidArgument),
    "upsert-duplicate-ids": (lambda e: e.c.upsert(x3, [7, 7, 8]), InvalidArgument),
    "upsert-negative-ids": (lambda e: e.c.upsert(x3, [7, -3, 8]), InvalidArgument),
    "upsert-wrong-dim": (lambda e: e.c.upsert(rows(3)[:, :4], [7, 8, 9]), InvalidArgument),
    "upsert-nan": (lambda e: e.c.upsert(np.full((3, DIM), np.nan), [7, 8, 9]), InvalidArgument),
    "upsert-bad-metadata": (lambda e: e.c.upsert(x3, [7, 8, 9], {"tag": ["a", "b", "c"]}),
                            InvalidArgument),
    "upsert-reserved-metadata": (lambda e: e.c.upsert(x3, [7, 8, 9], {"id": [1, 2, 3]}),
                                 InvalidArgument),
    # --- delete
    "delete-negative": (lambda e: e.c.delete([7, -1]), InvalidArgument),
    "delete-float": (lambda e: e.c.delete([7.0, 8.5]), InvalidArgument),
    "delete-2d": (lambda e: e.c.delete([[7, 8]]), InvalidArgument),
    # --- get
    "get-absent": (lambda e: e.c.get([7, 5000]), NotFound),
    "get-deleted": (lambda e: e.c.get([3]), NotFound),
    "get-deleted-in-log": (lambda e: e.c.get([110]), NotFound),
    "get-negative": (lambda e: e.c.get([-1]), InvalidArgument),
    "get-metadata-absent": (lambda e: e.c.get_metadata([7, 5000]), NotFound),
    # --- search
    "search-k-0": (lambda e: e.c.search(x3, 0), InvalidArgument),
    "search-k-negative": (lambda e: e.c.search(x3, -1), InvalidArgument),
    "search-k-too-big": (lambda e: e.c.search(x3, 16385), InvalidArgument),
    "search-k-float": (lambda e: e.c.search(x3, 2.0), InvalidArgument),
    "search-k-string": (lambda e: e.c.search(x3, "3"), InvalidArgument),
    "search-k-bool": (lambda e: e.c.search(x3, True), InvalidArgument),
    "search-wrong-dim": (lambda e: e.c.search(np.ones(DIM - 1)), InvalidArgument),
    "search-nan": (lambda e: e.c.search(np.full(DIM, np.nan)), InvalidArgument),
    "search-empty": (lambda e: e.c.search(np.empty((0, DIM))), InvalidArgument),
    "filter-unknown-field": (lambda e: e.c.search(x3, filter={"nope": 1}), InvalidArgument),
    "filter-unknown-operator": (lambda e: e.c.search(x3, filter={"tag": {"~=": 3}}),
                                InvalidArgument),
    "filter-empty-dict": (lambda e: e.c.search(x3, filter={}), InvalidArgument),
    "filter-empty-condition": (lambda e: e.c.search(x3, filter={"tag": {}}), InvalidArgument),
    "filter-not-boolean": (lambda e: e.c.search(x3, filter=pc.field("tag") + 1),
                           InvalidArgument),
    "filter-unknown-field-expression": (lambda e: e.c.search(x3, filter=pc.field("nope") > 1),
                                        InvalidArgument),
    "filter-type-mismatch": (lambda e: e.c.search(x3, filter={"name": {">": 5}}),
                             InvalidArgument),
    "filter-string": (lambda e: e.c.search(x3, filter="tag > 3"), InvalidArgument),
    "filter-on-no-fields": (lambda e: e.pq.search(x3, filter={"tag": 1}), InvalidArgument),
    "rescore-nothing-to-rescore-with": (lambda e: e.c.search(x3, rescore=2), InvalidArgument),
    "rescore-0": (lambda e: e.c.search(x3, rescore=0), InvalidArgument),
    "rescore-too-big": (lambda e: e.c.search(x3, rescore=65), InvalidArgument),
    "rescore-float": (lambda e: e.c.search(x3, rescore=1.5), InvalidArgument),
    "rescore-bool": (lambda e: e.c.search(x3, rescore=True), InvalidArgument),
    # --- train
    "train-non-empty": (lambda e: e.c.train(rows(32)), InvalidArgument),
    # --- the database
    "create-name-slash": (lambda e: e.db.create_collection("a/b", dim=DIM), InvalidArgument),
    "create-name-dotdot": (lambda e: e.db.create_collection("..", dim=DIM), InvalidArgument),
    "create-name-dot": (lambda e: e.db.create_collection(".", dim=DIM), InvalidArgument),
    "create-name-empty": (lambda e: e.db.create_collection("", dim=DIM), InvalidArgument),
    "create-name-hidden": (lambda e: e.db.create_collection(".c", dim=DIM), InvalidArgument),
    "create-name-too-long": (lambda e: e.db.create_collection("x" * 129, dim=DIM),
                             InvalidArgument),
    "create-name-not-str": (lambda e: e.db.create_collection(7, dim=DIM), InvalidArgument),
    "create-unknown-metric": (lambda e: e.db.create_collection("n", dim=DIM, metric="dot"),
                              InvalidArgument),
    "create-unknown-codec": (lambda e: e.db.create_collection("n", dim=DIM, codec="tq9"),
                             InvalidArgument),
    "create-codec-unfit-dim": (lambda e: e.db.create_collection("n", dim=DIM, codec="pq5x4"),
                               InvalidArgument),
    "create-bad-dim": (lambda e: e.db.create_collection("n", dim=1), InvalidArgument),
    "create-bad-rotation": (lambda e: e.db.create_collection("n", dim=DIM, rotation="spin"),
                            InvalidArgument),
    "create-bad-store-vectors": (
        lambda e: e.db.create_collection("n", dim=DIM, store_vectors="int8"), InvalidArgument),
    "create-store-and-rescore": (
        lambda e: e.db.create_collection("n", dim=DIM, store_vectors="float16",
                                         rescore_codec="tq8"), InvalidArgument),
    "create-duplicate": (lambda e: e.db.create_collection("c", dim=DIM), AlreadyExists),
    "create-duplicate-other-config": (
        lambda e: e.db.create_collection("pq", dim=8, codec="flat"), AlreadyExists),
    "drop-unknown": (lambda e: e.db.drop_collection("nope"), NotFound),
    "drop-not-str": (lambda e: e.db.drop_collection(None), InvalidArgument),
    "drop-path": (lambda e: e.db.drop_collection("../c"), InvalidArgument),
    "get-collection-unknown": (lambda e: e.db.get_collection("nope"), NotFound),
    "open-again": (lambda e: vecstore.open(e.path), Locked),
    "open-bad-durability": (lambda e: vecstore.open(e.path, durability="never"),
                            InvalidArgument),
    # --- the untrained pq4x4 collection: nothing trains it, nothing touches its manifest
    "pq-wrong-dim": (lambda e: e.pq.add(rows(64)[:, :8]), InvalidArgument),
    "pq-nan": (lambda e: e.pq.add(np.where(np.eye(64, DIM) > 0, np.nan, rows(64))),
               InvalidArgument),
    "pq-empty": (lambda e: e.pq.add(np.empty((0, DIM))), InvalidArgument),
    "pq-ids-short": (lambda e: e.pq.add(rows(64), ids=np.arange(63)), InvalidArgument),
    "pq-ids-duplicate": (lambda e: e.pq.add(rows(64), ids=np.r_[np.arange(63), 0]),
                         InvalidArgument),
    "pq-ids-negative": (lambda e: e.pq.add(rows(64), ids=np.arange(-1, 63)), InvalidArgument),
    "pq-meta-reserved": (lambda e: e.pq.add(rows(64), metadata={"code": list(range(64))}),
                         InvalidArgument),
    "pq-meta-all-null": (lambda e: e.pq.add(rows(64), metadata={"x": [None] * 64}),
                         InvalidArgument),
    "pq-meta-short": (lambda e: e.pq.add(rows(64), metadata={"x": list(range(63))}),
                      InvalidArgument),
    "pq-meta-mixed": (lambda e: e.pq.add(rows(64), metadata={"x": [1, "a"] * 32}),
                      InvalidArgument),
    "pq-too-few-rows-to-train": (lambda e: e.pq.add(rows(3)), InvalidArgument),
    "pq-upsert-no-ids": (lambda e: e.pq.upsert(rows(64), None), InvalidArgument),
    "pq-train-wrong-dim": (lambda e: e.pq.train(rows(64)[:, :8]), InvalidArgument),
    "pq-train-too-few": (lambda e: e.pq.train(rows(3)), InvalidArgument),
    "pq-train-inf": (lambda e: e.pq.train(np.where(np.eye(64, DIM) > 0, np.inf, rows(64))),
                     InvalidArgument),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_call_raises_and_leaves_the_directory_unchanged(env, case):
    call, error = BAD_CALLS[case]
    assert_unchanged(env, call, error)


@pytest.mark.parametrize("ids", [[5000], [5000, 5000, 6000], [3, 110], [], np.array([], int)],
                         ids=["absent", "absent-repeated", "already-deleted", "empty-list",
                              "empty-array"])
def test_delete_of_absent_ids_returns_zero_and_changes_nothing(env, ids):
    before, view = snapshot(env.path), memory_view(env)
    assert env.c.delete(ids) == 0
    assert env.pq.delete(ids) == 0
    assert snapshot(env.path) == before
    assert memory_view(env) == view


def test_the_snapshot_sees_a_real_change(env):
    """The comparison is sensitive: a valid add changes the log, and a first add to the
    untrained pq collection trains it and rewrites its manifest."""
    before = snapshot(env.path)
    env.c.add(x3, ids=NEW3)
    mid = snapshot(env.path)
    assert mid != before
    env.pq.add(rows(64))
    assert env.pq.codec.is_trained
    after = snapshot(env.path)
    assert after["collections/pq/manifest.json"] != mid["collections/pq/manifest.json"]


def test_bad_calls_in_a_row_then_reopen(env):
    """After a run of bad calls the database closes and reopens to the same rows."""
    expected = len(env.c)
    for case in ("add-ids-in-segment", "meta-strings-into-int", "upsert-no-ids",
                 "pq-too-few-rows-to-train", "create-duplicate"):
        call, error = BAD_CALLS[case]
        with pytest.raises(error):
            call(env)
    env.db.close()
    with vecstore.open(env.path) as db:
        assert len(db.get_collection("c")) == expected
        pq = db.get_collection("pq")
        assert len(pq) == 0 and not pq.codec.is_trained


@pytest.mark.parametrize("call", ["add", "train"])
def test_a_failed_first_add_trains_neither_codec(env, call):
    """With two data-dependent codecs (pq4x4 search codes, pq8x8 rescoring codes), a
    first batch that can train the first but not the second (pq8x8 needs 256 rows) is
    rejected as a whole: neither codec keeps a training from rows that were refused,
    and no manifest changes."""
    two = env.db.create_collection("two", dim=DIM, metric="ip", codec="pq4x4",
                                   rescore_codec="pq8x8")
    before = snapshot(env.path)
    with pytest.raises(InvalidArgument, match="256"):
        getattr(two, call)(rows(20))
    assert snapshot(env.path) == before
    assert len(two) == 0
    assert (two.codec.is_trained, two.rescore_codec.is_trained) == (False, False)
