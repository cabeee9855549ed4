"""On-disk databases: layout, reopening, locking, the log, segments, manifest, compaction."""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import pyarrow as pa
import pytest

import vecstore
from vecstore.errors import Closed, DataLoss, InvalidArgument, Locked
from vecstore.storage import wal
from vecstore.storage.manifest import MANIFEST, Manifest, load_manifest, save_manifest

DIM = 16


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def collection_dir(root, name="c"):
    return root / "collections" / name


def test_a_database_directory_survives_close_and_reopen(tmp_path):
    x = vectors(500)
    with vecstore.open(tmp_path / "db") as db:
        c = db.create_collection("c", dim=DIM, metric="l2", codec="tq4", seed=7,
                                 store_vectors="float16")
        c.add(x[:300])
        c.flush()
        c.add(x[300:])
        c.delete([5, 350])
        before = c.search(x[:20], 10, rescore=4)
    assert (tmp_path / "db" / "VECSTORE").exists()
    with vecstore.open(tmp_path / "db") as db:
        assert db.list_collections() == ["c"]
        c = db.get_collection("c")
        assert (c.metric, c.codec.spec, c.store_vectors) == ("l2", "tq4", "float16")
        assert len(c) == 498 and 5 not in c and 350 not in c and 499 in c
        after = c.search(x[:20], 10, rescore=4)
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_array_equal(after.distances, before.distances)
        np.testing.assert_array_equal(c.get([0, 499]), x[[0, 499]].astype(np.float16))


def test_the_log_alone_restores_writes_that_were_never_flushed(tmp_path):
    x = vectors(200)
    db = vecstore.open(tmp_path / "db")
    c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
    c.add(x[:100])
    c.upsert(x[100:150], ids=np.arange(50))
    c.delete(np.arange(90, 100))
    expected = c.search(x, 5)
    logs = sorted(p.name for p in collection_dir(tmp_path / "db").iterdir())
    assert any(name.startswith("wal-") for name in logs)
    assert not any(name.startswith("seg-") for name in logs)
    db._dir.close()  # drop the lock as a crashed process would, without flushing
    with vecstore.open(tmp_path / "db") as db:
        c = db.get_collection("c")
        assert len(c) == 90
        np.testing.assert_array_equal(c.get(np.arange(50)), x[100:150])
        np.testing.assert_array_equal(c.search(x, 5).ids, expected.ids)


def test_replaying_the_log_twice_gives_the_same_state(tmp_path):
    x = vectors(300)
    db = vecstore.open(tmp_path / "db")
    c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
    c.add(x[:200], metadata={"tag": np.arange(200)})
    c.flush()
    c.delete(np.arange(0, 60, 2))
    c.upsert(x[200:], ids=np.arange(150, 250), metadata={"tag": np.arange(100) + 1000})
    expected = c.search(x, 7, filter={"tag": {">=": 150}})
    db._dir.close()
    for _ in range(2):  # each open replays the log again; neither flushes
        db = vecstore.open(tmp_path / "db")
        c = db.get_collection("c")
        assert len(c) == 220 and c.stats()["memtable_rows"] == 100
        np.testing.assert_array_equal(c.search(x, 7, filter={"tag": {">=": 150}}).ids,
                                      expected.ids)
        db._dir.close()


def test_close_flushes_so_the_log_is_empty_after_a_clean_shutdown(tmp_path):
    with vecstore.open(tmp_path / "db") as db:
        db.create_collection("c", dim=DIM, codec="flat").add(vectors(10))
    names = [p.name for p in collection_dir(tmp_path / "db").iterdir()]
    assert not [n for n in names if n.startswith("wal-")]
    assert len([n for n in names if n.startswith("seg-")]) == 1


def test_a_second_opener_gets_a_clear_error_and_the_lock_is_released_on_close(tmp_path):
    db = vecstore.open(tmp_path / "db")
    with pytest.raises(Locked, match="already open"):
        vecstore.open(tmp_path / "db")
    db.close()
    vecstore.open(tmp_path / "db").close()


def test_a_second_process_cannot_open_the_directory_for_writing(tmp_path):
    import subprocess
    import sys

    with vecstore.open(tmp_path / "db"):
        code = ("import vecstore, sys\n"
                "try:\n    vecstore.open(sys.argv[1])\n"
                "except vecstore.Locked as e:\n    print('locked', e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "db")],
                             capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.startswith("locked")


def test_close_is_idempotent_and_use_after_close_raises(tmp_path):
    db = vecstore.open(tmp_path / "db")
    c = db.create_collection("c", dim=DIM, codec="flat")
    c.add(vectors(3))
    db.close()
    db.close()
    for call in (lambda: c.add(vectors(1)), lambda: c.search(vectors(1)), lambda: c.flush(),
                 lambda: c.compact(), lambda: c.delete([0]), lambda: db.list_collections(),
                 lambda: db.create_collection("d", dim=DIM)):
        with pytest.raises(Closed):
            call()
    with vecstore.open(tmp_path / "db") as db, db.get_collection("c") as c:
        assert len(c) == 3
    with pytest.raises(Closed):
        c.get([0])


def test_open_rejects_files_foreign_directories_and_bad_options(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="is a file"):
        vecstore.open(tmp_path / "file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(InvalidArgument, match="not a vecstore database"):
        vecstore.open(tmp_path / "other")
    with pytest.raises(InvalidArgument, match="durability"):
        vecstore.open(tmp_path / "db", durability="eventually")
    with pytest.raises(InvalidArgument, match="sync_interval"):
        vecstore.open(tmp_path / "db", sync_interval=0)
    with pytest.raises(InvalidArgument, match="segment_bytes"):
        vecstore.open(tmp_path / "db", segment_bytes=-1)
    assert not (tmp_path / "db").exists()


def test_trained_codecs_and_auto_ids_persist(tmp_path):
    x = vectors(600, seed=3)
    with vecstore.open(tmp_path / "db") as db:
        c = db.create_collection("pq", dim=DIM, metric="ip", codec="pq4x4")
        c.add(x[:400])
        c.delete([399])
        expected = c.search(x[:10], 5)
    with vecstore.open(tmp_path / "db") as db:
        c = db.get_collection("pq")
        np.testing.assert_array_equal(c.search(x[:10], 5).ids, expected.ids)
        assert c.add(x[400:402]).tolist() == [400, 401]


def test_training_is_in_the_manifest_before_any_code_is_logged(tmp_path):
    db = vecstore.open(tmp_path / "db")
    c = db.create_collection("pq", dim=DIM, metric="ip", codec="pq4x4")
    c.add(vectors(300))
    config = load_manifest(collection_dir(tmp_path / "db", "pq")).config["codec"]
    assert config == c.codec.to_config()
    db._dir.close()
    with vecstore.open(tmp_path / "db") as db:
        assert len(db.get_collection("pq")) == 300


def test_drop_removes_the_directory_and_the_name_can_be_reused(tmp_path):
    with vecstore.open(tmp_path / "db") as db:
        db.create_collection("c", dim=DIM).add(vectors(5))
        db.drop_collection("c")
        assert not collection_dir(tmp_path / "db").exists()
        db.create_collection("c", dim=DIM * 2)
    with vecstore.open(tmp_path / "db") as db:
        assert db.get_collection("c").dim == DIM * 2 and len(db.get_collection("c")) == 0


def test_leftovers_of_interrupted_creates_and_drops_are_removed(tmp_path):
    vecstore.open(tmp_path / "db").close()
    for leftover in (".creating-c-1", ".dropping-d-2"):
        (tmp_path / "db" / "collections" / leftover).mkdir()
    with vecstore.open(tmp_path / "db") as db:
        assert db.list_collections() == []
    assert list((tmp_path / "db" / "collections").iterdir()) == []


def test_a_damaged_collection_does_not_stop_the_others(tmp_path):
    with vecstore.open(tmp_path / "db") as db:
        db.create_collection("good", dim=DIM, codec="flat").add(vectors(20))
        db.create_collection("bad", dim=DIM, codec="flat").add(vectors(20))
    segment = next(collection_dir(tmp_path / "db", "bad").glob("seg-*.arrow"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    with vecstore.open(tmp_path / "db") as db:
        assert db.list_collections() == ["bad", "good"]
        assert len(db.get_collection("good")) == 20
        with pytest.raises(DataLoss, match=segment.name):
            db.get_collection("bad")
        assert set(db.damaged) == {"bad"}
        db.drop_collection("bad")
        assert db.list_collections() == ["good"]


def test_segments_are_arrow_files_with_the_documented_schema(tmp_path):
    with vecstore.open(tmp_path / "db") as db:
        c = db.create_collection("c", dim=DIM, metric="ip", codec="tq3",
                                 store_vectors="float32")
        c.add(vectors(10), metadata={"lang": ["en"] * 10, "year": np.arange(10)})
    segment = next(collection_dir(tmp_path / "db").glob("seg-*.arrow"))
    table = pa.ipc.open_file(pa.memory_map(str(segment))).read_all()
    schema = table.schema
    assert schema.names == ["id", "code", "norm", "vector", "lang", "year"]
    assert schema.field("id").type == pa.int64()
    assert schema.field("code").type == pa.binary(c.code_size)
    assert schema.field("norm").type == pa.float32()
    assert schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert schema.field("year").type == pa.int64()
    codec_config = json.loads(schema.metadata[b"vecstore.codec"])
    assert codec_config == c.codec.to_config()
    assert schema.metadata[b"vecstore.format"] == b"1"
    np.testing.assert_allclose(table.column("norm").to_numpy(),
                               np.linalg.norm(vectors(10), axis=1), rtol=1e-6)


def test_searches_read_segments_through_memory_maps(tmp_path):
    with vecstore.open(tmp_path / "db") as db:
        c = db.create_collection("c", dim=DIM, codec="flat")
        c.add(vectors(50))
        c.flush()
        codes = c._segments[0].columns["code"]
        assert not codes.flags.owndata and not codes.flags.writeable


def test_compaction_rewrites_segments_without_deleted_rows(tmp_path):
    x = vectors(2000)
    with vecstore.open(tmp_path / "db", segment_bytes=20_000) as db:
        c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
        c.add(x)
        c.flush()
        c.delete(np.arange(0, 2000, 4))
        c.flush()
        directory = collection_dir(tmp_path / "db")
        assert list(directory.glob("del-*.arrow"))
        before = c.search(x[:30], 10)
        size_before = sum(p.stat().st_size for p in directory.iterdir())
        c.compact()
        assert not list(directory.glob("del-*.arrow"))
        assert c.stats()["deleted_rows"] == 0
        assert sum(p.stat().st_size for p in directory.iterdir()) < 0.85 * size_before
        np.testing.assert_array_equal(c.search(x[:30], 10).ids, before.ids)
        referenced = load_manifest(directory).files()
        assert {p.name for p in directory.glob("*.arrow")} == referenced


def test_mostly_deleted_segments_are_rewritten_automatically(tmp_path):
    with vecstore.open(tmp_path / "db") as db:
        c = db.create_collection("c", dim=DIM, codec="flat")
        c.add(vectors(100))
        c.flush()
        c.delete(np.arange(60))
        # 100 rows flushed, then the 40 live ones rewritten.
        assert c.stats() == {"rows": 40, "segments": 1, "memtable_rows": 0, "deleted_rows": 0,
                             "code_bytes": 40 * c.code_size, "merges": 0,
                             "write_amplification": 1.4}


def test_upsert_replaces_rows_and_their_metadata(tmp_path):
    x = vectors(20)
    with vecstore.open(tmp_path / "db") as db:
        c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
        c.add(x[:10], metadata={"tag": np.arange(10)})
        c.flush()
        c.upsert(x[10:13], ids=[2, 3, 50], metadata={"tag": [20, 30, 500]})
        assert len(c) == 11
        np.testing.assert_array_equal(c.get([2, 3, 50]), x[10:13])
        assert c.get_metadata([3, 50, 4]).column("tag").to_pylist() == [30, 500, 4]
    with vecstore.open(tmp_path / "db") as db:
        c = db.get_collection("c")
        assert c.get_metadata([3, 50, 4]).column("tag").to_pylist() == [30, 500, 4]
        assert c.search(x[10], 1).ids[0, 0] == 2


def test_the_log_checks_frames_and_cuts_a_torn_tail(tmp_path):
    table = pa.table({"id": pa.array([1, 2], pa.int64())})
    path = tmp_path / wal.wal_name(1)
    writer = wal.WalWriter(path, "sync", 0.05)
    frames = [wal.encode_record(seq, wal.OP_DELETE, table) for seq in (1, 2, 3)]
    for frame in frames:
        writer.append(frame)
    writer.close()
    assert [r.seq for r in wal.read_wal(tmp_path, 0)] == [1, 2, 3]
    assert [r.seq for r in wal.read_wal(tmp_path, 2)] == [3]
    good = len(frames[0]) + len(frames[1])
    with open(path, "r+b") as f:
        f.truncate(good + 7)
    with pytest.warns(RuntimeWarning, match="torn tail"):
        assert [r.seq for r in wal.read_wal(tmp_path, 0)] == [1, 2]
    assert path.stat().st_size == good
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r.seq for r in wal.read_wal(tmp_path, 0)] == [1, 2]


def test_damage_with_valid_records_after_it_is_data_loss(tmp_path):
    table = pa.table({"id": pa.array([1], pa.int64())})
    path = tmp_path / wal.wal_name(1)
    path.write_bytes(b"".join(wal.encode_record(s, wal.OP_DELETE, table) for s in (1, 2, 3)))
    data = bytearray(path.read_bytes())
    data[20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataLoss, match="valid records after it"):
        list(wal.read_wal(tmp_path, 0))


def test_a_gap_in_log_sequence_numbers_is_data_loss(tmp_path):
    table = pa.table({"id": pa.array([1], pa.int64())})
    (tmp_path / wal.wal_name(1)).write_bytes(wal.encode_record(1, wal.OP_DELETE, table))
    (tmp_path / wal.wal_name(3)).write_bytes(wal.encode_record(3, wal.OP_DELETE, table))
    with pytest.raises(DataLoss, match="missing"):
        list(wal.read_wal(tmp_path, 0))


def test_batch_durability_syncs_on_an_interval(tmp_path):
    writer = wal.WalWriter(tmp_path / wal.wal_name(1), "batch", 0.02)
    writer.append(wal.encode_record(1, wal.OP_DELETE, pa.table({"id": pa.array([1])})))
    assert writer._dirty
    deadline = time.monotonic() + 5
    while writer._dirty and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not writer._dirty
    writer.close()
    writer.close()


def test_the_manifest_round_trips_and_detects_damage(tmp_path):
    schema = pa.schema([pa.field("lang", pa.string())])
    manifest = Manifest(config={"name": "c"}, version=3, next_id=9, wal_seq=4,
                        metadata_schema=schema)
    save_manifest(tmp_path, manifest)
    assert load_manifest(tmp_path) == manifest
    text = (tmp_path / MANIFEST).read_text().replace('"next_id": 9', '"next_id": 8')
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(DataLoss, match="checksum"):
        load_manifest(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
