"""Recovery edge cases: stale manifests, crash leftovers, forged log records.

A manifest put back from an older copy must not make ``open`` delete the segment files
that newer manifests committed: it is DataLoss naming manifest.json and the newer file,
and nothing is removed. Files left by a crash in the middle of a checkpoint (or of a
merge committed later) are still removed silently. Log records with a valid checksum
but content the collection could never have written (bad ids, NaN norms, missing or
mistyped columns) are DataLoss naming the log file, never a silent replay.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import vecstore
from tests.crash_image import settle_merges
from vecstore import rows
from vecstore.errors import DataLoss
from vecstore.storage import collection_store, records, wal
from vecstore.storage.manifest import MANIFEST, load_manifest, save_manifest

DIM = 8
FLOAT32, INT64 = pa.float32(), pa.int64()


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def collection_dir(root: Path, name: str = "c") -> Path:
    return root / "collections" / name


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a collection directory and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def arrow_files(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*.arrow")}


# --- a manifest put back from an older copy ---------------------------------------------


def _stale_manifest_setup(root: Path, later) -> tuple[Path, bytes]:
    """A collection whose manifest is put back to a copy taken before ``later(c)`` ran;
    returns its directory and the newest manifest's bytes."""
    with vecstore.open(root) as db:
        c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
        c.add(vectors(20), metadata={"year": np.arange(20)})
        c.flush()
    directory = collection_dir(root)
    old = (directory / MANIFEST).read_bytes()
    with vecstore.open(root) as db:
        later(db.get_collection("c"))
    new = (directory / MANIFEST).read_bytes()
    (directory / MANIFEST).write_bytes(old)
    return directory, new


def _add_and_flush(c) -> None:
    c.add(vectors(10, seed=1), metadata={"year": np.arange(10)})
    c.flush()
    c.add(vectors(5, seed=2))
    c.flush()


def _delete_and_flush(c) -> None:
    c.delete([1, 2, 3])
    c.flush()


@pytest.mark.parametrize("later", [_add_and_flush, _delete_and_flush],
                         ids=["new-segments", "new-tombstones"])
def test_a_manifest_put_back_from_an_older_copy_is_data_loss_and_deletes_nothing(
        tmp_path, later):
    directory, newest = _stale_manifest_setup(tmp_path, later)
    before = snapshot(directory)
    unreferenced = arrow_files(directory) - {"seg-00000001.arrow"}
    assert unreferenced
    db = vecstore.open(tmp_path)
    try:
        message = str(db.damaged["c"])
        assert MANIFEST in message
        assert any(name in message for name in unreferenced)
        with pytest.raises(DataLoss):
            db.get_collection("c")
    finally:
        db.close()
    assert snapshot(directory) == before
    (directory / MANIFEST).write_bytes(newest)
    with vecstore.open(tmp_path) as db:
        expected = 35 if later is _add_and_flush else 17
        assert len(db.get_collection("c")) == expected


# --- files left by a crash in the middle of a checkpoint --------------------------------


def _crash_image_at_manifest_swap(monkeypatch, root: Path, image: Path, action) -> None:
    """Copy ``root`` as a crash would leave it just before ``action`` swaps the manifest."""
    real = collection_store.save_manifest
    taken = []

    def copy_then_save(directory, manifest):
        if not taken:
            shutil.copytree(root, image)
            taken.append(True)
        real(directory, manifest)

    monkeypatch.setattr(collection_store, "save_manifest", copy_then_save)
    action()
    monkeypatch.setattr(collection_store, "save_manifest", real)
    assert taken


@pytest.mark.parametrize("durability", ["sync", "batch"])
@pytest.mark.parametrize("checkpoint", ["flush", "compact"])
def test_files_of_a_checkpoint_cut_short_are_removed_silently(tmp_path, monkeypatch,
                                                               durability, checkpoint):
    root, image = tmp_path / "db", tmp_path / "image"
    db = vecstore.open(root, durability=durability)
    c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
    x = vectors(30)
    c.add(x[:20])
    c.flush()
    c.delete([0, 1])
    c.add(x[20:], metadata={"year": np.arange(10)})
    _crash_image_at_manifest_swap(monkeypatch, root, image, getattr(c, checkpoint))
    db.close()
    leftovers = arrow_files(collection_dir(image)) - {"seg-00000001.arrow"}
    assert leftovers
    with vecstore.open(image) as reopened:
        assert not reopened.damaged
        got = reopened.get_collection("c")
        assert len(got) == 28 and 0 not in got
        np.testing.assert_array_equal(got.get(np.arange(2, 30)), x[2:])
        assert not leftovers & arrow_files(collection_dir(image))


def _merge_rows(c, ids: np.ndarray) -> tuple[rows.Columns, pa.Table]:
    x = vectors(ids.size, seed=7)
    columns = {rows.ID: ids, rows.CODE: c.codec.encode(x),
               rows.NORM: np.linalg.norm(x, axis=1).astype(np.float32)}
    return columns, pa.table({"year": pa.array(np.zeros(ids.size, dtype=np.int64))})


def test_a_merge_committed_after_other_commits_keeps_its_files(tmp_path):
    with vecstore.open(tmp_path) as db:
        c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
        c.add(vectors(10), metadata={"year": np.arange(10)})
        c.flush()
        store = c._store
        *_, merged = store.write_segment(*_merge_rows(c, np.arange(100, 104)))
        c.add(vectors(5, seed=3), metadata={"year": np.arange(5)})
        c.flush()
        assert (store.directory / merged.segment.file).exists()
        store.commit((*store.manifest.segments, merged), next_id=store.manifest.next_id,
                     metadata_schema=store.manifest.metadata_schema)
    with vecstore.open(tmp_path) as db:
        assert not db.damaged
        assert len(db.get_collection("c")) == 19
        assert 103 in db.get_collection("c")


def test_a_merge_cut_short_after_other_commits_is_removed_silently(tmp_path):
    root, image = tmp_path / "db", tmp_path / "image"
    db = vecstore.open(root)
    c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
    c.add(vectors(10), metadata={"year": np.arange(10)})
    c.flush()
    *_, merged = c._store.write_segment(*_merge_rows(c, np.arange(100, 104)))
    for seed in (3, 4):
        c.add(vectors(5, seed=seed) + seed)
        c.flush()
    c.delete([0])
    settle_merges(db)
    shutil.copytree(root, image)
    db.close()
    with vecstore.open(image) as reopened:
        assert not reopened.damaged
        assert len(reopened.get_collection("c")) == 19
        assert merged.segment.file not in arrow_files(collection_dir(image))


# --- forged log records -----------------------------------------------------------------


@pytest.fixture(scope="module")
def log_image(tmp_path_factory) -> Path:
    """A crash image of three collections, each with a segment and a non-empty log."""
    root = tmp_path_factory.mktemp("db")
    image = tmp_path_factory.mktemp("image") / "db"
    db = vecstore.open(root)
    for name, options in (("plain", {}), ("vectors", {"store_vectors": "float32"}),
                          ("rescore", {"rescore_codec": "fp16"})):
        c = db.create_collection(name, dim=DIM, metric="ip", codec="flat", **options)
        c.add(vectors(10), metadata={"year": np.arange(10)})
        c.flush()
        c.add(vectors(4, seed=1), ids=[20, 21, 22, 23], metadata={"year": np.arange(4)})
        c.delete([20])
    settle_merges(db)
    shutil.copytree(root, image)
    db.close()
    return image


def _log(directory: Path) -> tuple[Path, list[wal.WalRecord]]:
    (path,) = wal.wal_files(directory)
    return path, wal.read_wal_file(path, repair=False)


def _template(directory: Path) -> pa.Table:
    """The table of the logged add: ids 20..23 with codes, norms and metadata."""
    _, records = _log(directory)
    return next(r.table for r in records if r.op == wal.OP_ADD)


def _set(table: pa.Table, name: str, array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


def _ids(table, values):
    return _set(table, rows.ID, pa.array(values, type=pa.int64()))


def _fresh(table):
    return _ids(table, [30, 31, 32, 33])


def _norms(table, values):
    return _set(_fresh(table), rows.NORM, pa.array(values, type=pa.float32()))


def _vector_array(fill, value_type=FLOAT32, dim=DIM) -> pa.Array:
    flat = np.full(4 * dim, fill, dtype=value_type.to_pandas_dtype())
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=value_type), dim)


def _vectors(table, fill, value_type=FLOAT32, dim=DIM):
    return _set(_fresh(table), rows.VECTOR, _vector_array(fill, value_type, dim))


def _codes(table, name, width):
    codes = np.zeros((4, width), dtype=np.uint8)
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), 4,
                                                 [None, pa.py_buffer(codes)])
    return _set(_fresh(table), name, array)


def _drop(table, name):
    return _fresh(table).drop_columns([name])


def _metadata(table, array):
    return _set(_fresh(table), "year", array)


def _delete(_, values, value_type=INT64):
    return pa.table({rows.ID: pa.array(values, type=value_type)})


# (collection, op, forge(template) -> table): each must be DataLoss naming the log.
FORGERIES = {
    "id-minus-one": ("plain", wal.OP_ADD, lambda t: _ids(t, [30, 31, -1, 33])),
    "negative-id": ("plain", wal.OP_ADD, lambda t: _ids(t, [30, -7, 32, 33])),
    "duplicate-ids-add": ("plain", wal.OP_ADD, lambda t: _ids(t, [30, 31, 30, 33])),
    "duplicate-ids-upsert": ("plain", wal.OP_UPSERT, lambda t: _ids(t, [21, 21, 30, 31])),
    "null-id": ("plain", wal.OP_ADD, lambda t: _ids(t, [30, None, 32, 33])),
    "int32-ids": ("plain", wal.OP_ADD,
                  lambda t: _set(t, rows.ID, pa.array([30, 31, 32, 33], type=pa.int32()))),
    "nan-norm": ("plain", wal.OP_ADD, lambda t: _norms(t, [1.0, np.nan, 1.0, 1.0])),
    "inf-norm": ("plain", wal.OP_ADD, lambda t: _norms(t, [1.0, np.inf, 1.0, 1.0])),
    "negative-norm": ("plain", wal.OP_ADD, lambda t: _norms(t, [1.0, -1.0, 1.0, 1.0])),
    "float64-norms": ("plain", wal.OP_ADD,
                      lambda t: _set(_fresh(t), rows.NORM, pa.array([1.0] * 4))),
    "missing-code": ("plain", wal.OP_ADD, lambda t: _drop(t, rows.CODE)),
    "missing-norm": ("plain", wal.OP_ADD, lambda t: _drop(t, rows.NORM)),
    "narrow-codes": ("plain", wal.OP_ADD, lambda t: _codes(t, rows.CODE, 4 * DIM - 1)),
    "wide-codes": ("plain", wal.OP_UPSERT, lambda t: _codes(t, rows.CODE, 4 * DIM + 8)),
    "codes-as-binary": ("plain", wal.OP_ADD,
                        lambda t: _set(_fresh(t), rows.CODE, pa.array([b"x"] * 4))),
    "unexpected-vectors": ("plain", wal.OP_ADD,
                           lambda t: _fresh(t).append_column(rows.VECTOR,
                                                             _vector_array(1.0))),
    "metadata-type-conflict": ("plain", wal.OP_ADD,
                               lambda t: _metadata(t, pa.array(["a", "b", "c", "d"]))),
    "null-typed-metadata": ("plain", wal.OP_ADD, lambda t: _metadata(t, pa.nulls(4))),
    "nan-vector": ("vectors", wal.OP_ADD, lambda t: _vectors(t, np.nan)),
    "inf-vector": ("vectors", wal.OP_UPSERT, lambda t: _vectors(t, np.inf)),
    "float16-vectors": ("vectors", wal.OP_ADD, lambda t: _vectors(t, 1.0, pa.float16())),
    "short-vectors": ("vectors", wal.OP_ADD, lambda t: _vectors(t, 1.0, dim=DIM - 1)),
    "missing-vectors": ("vectors", wal.OP_ADD, lambda t: _drop(t, rows.VECTOR)),
    "missing-rescore-codes": ("rescore", wal.OP_ADD, lambda t: _drop(t, rows.RESCORE_CODE)),
    "wrong-rescore-width": ("rescore", wal.OP_ADD,
                            lambda t: _codes(t, rows.RESCORE_CODE, 2 * DIM + 1)),
    "delete-negative-id": ("plain", wal.OP_DELETE, lambda t: _delete(t, [3, -1])),
    "delete-null-id": ("plain", wal.OP_DELETE, lambda t: _delete(t, [3, None])),
    "delete-float-ids": ("plain", wal.OP_DELETE, lambda t: _delete(t, [3.0], pa.float64())),
    "delete-extra-column": ("plain", wal.OP_DELETE,
                            lambda t: _delete(t, [3]).append_column("x", pa.array([1]))),
}


def _append_forged(image: Path, tmp_path: Path, name: str, op: int, forge) -> tuple[Path, int]:
    """A copy of ``image`` with a forged record appended to ``name``'s log."""
    root = tmp_path / "db"
    shutil.copytree(image, root)
    path, records = _log(collection_dir(root, name))
    seq = records[-1].seq + 1
    table = forge(_template(collection_dir(root, name)))
    with open(path, "ab") as f:
        f.write(wal.encode_record(seq, op, table))
    return root, seq


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_log_record_is_data_loss_naming_the_log(log_image, tmp_path, forgery):
    name, op, forge = FORGERIES[forgery]
    root, seq = _append_forged(log_image, tmp_path, name, op, forge)
    log_path, _ = _log(collection_dir(root, name))
    db = vecstore.open(root)
    try:
        assert set(db.damaged) == {name}
        message = str(db.damaged[name])
        assert log_path.name in message and MANIFEST not in message
        assert str(seq) in message
        with pytest.raises(DataLoss):
            db.get_collection(name)
        assert len(db.get_collection("plain" if name != "plain" else "vectors")) == 13
    finally:
        db.close()


@pytest.mark.parametrize("name", ["plain", "vectors", "rescore"])
def test_a_valid_appended_record_replays(log_image, tmp_path, name):
    root, _ = _append_forged(log_image, tmp_path, name, wal.OP_ADD, _fresh)
    with vecstore.open(root) as db:
        assert not db.damaged
        c = db.get_collection(name)
        assert len(c) == 17 and 33 in c
        assert c.get_metadata([33]).column("year").to_pylist() == [3]


@pytest.mark.parametrize("forgery", ["metadata-type-conflict", "unexpected-vectors",
                                     "wide-codes"])
def test_a_record_that_cannot_be_replayed_names_the_log_not_the_manifest(
        log_image, tmp_path, monkeypatch, forgery):
    name, op, forge = FORGERIES[forgery]
    root, _ = _append_forged(log_image, tmp_path, name, op, forge)
    log_path, _ = _log(collection_dir(root, name))
    monkeypatch.setattr(records.RecordCheck, "check", lambda self, logged: None)
    db = vecstore.open(root)
    try:
        message = str(db.damaged[name])
        assert log_path.name in message and MANIFEST not in message
    finally:
        db.close()


def test_a_config_this_version_cannot_build_still_names_the_manifest(log_image, tmp_path):
    root = tmp_path / "db"
    shutil.copytree(log_image, root)
    directory = collection_dir(root, "plain")
    body = load_manifest(directory)
    save_manifest(directory, replace(body, config={**body.config, "codec": {"codec": "unknown"}}))
    db = vecstore.open(root)
    try:
        assert str(directory / MANIFEST) in str(db.damaged["plain"])
    finally:
        db.close()


def test_unlisted_files_without_an_origin_are_removed_as_before(tmp_path):
    with vecstore.open(tmp_path) as db:
        c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
        c.add(vectors(10))
        c.flush()
    directory = collection_dir(tmp_path)
    sink = pa.BufferOutputStream()
    table = pa.table({rows.ID: pa.array([1, 2], type=pa.int64())})
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    (directory / "del-00000090.arrow").write_bytes(sink.getvalue().to_pybytes())
    (directory / "seg-00000091.arrow").write_bytes(b"ARROW1\x00\x00torn")
    with vecstore.open(tmp_path) as db:
        assert not db.damaged and len(db.get_collection("c")) == 10
    assert arrow_files(directory) == {"seg-00000001.arrow"}
