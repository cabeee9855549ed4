"""Regression tests of the embedded write and search paths under hostile input: a train
racing the first insert, limits on dim and on the size of one search, id exhaustion,
values near float32's maximum, flush failures after a logged write, and calls on a
dropped collection."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import vecstore
from vecstore.codecs.registry import MAX_DIM, MAX_MATRIX_DIM, make_codec
from vecstore.collection import Collection
from vecstore.errors import InvalidArgument, NotFound
from vecstore.search.executor import SearchExecutor


@pytest.fixture
def on_disk(tmp_path):
    with vecstore.open(tmp_path / "db") as db:
        yield db


def _paused_encoder(monkeypatch):
    """Make the next ``Collection._encode`` wait: returns (started, resume) events."""
    started, resume = threading.Event(), threading.Event()
    original = Collection._encode
    calls = []

    def encode(self, *args):
        calls.append(1)
        if len(calls) == 1:
            started.set()
            resume.wait(30)
        return original(self, *args)

    monkeypatch.setattr(Collection, "_encode", encode)
    return started, resume


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_train_racing_the_first_add_leaves_rows_encoded_by_the_installed_codec(
        wordnet, tmp_path, monkeypatch, where):
    x = wordnet["base"][:1500]
    other = wordnet["base"][5000:7000]
    db = vecstore.open(None if where == "memory" else tmp_path / "db")
    c = db.create_collection("race", dim=x.shape[1], metric="ip", codec="pq8x8")
    started, resume = _paused_encoder(monkeypatch)
    errors = []
    writer = threading.Thread(target=lambda: _capture(errors, c.add, x))
    writer.start()
    assert started.wait(30), "the add never reached its encoding step"
    c.train(other)   # the collection is still empty, so the retrain is allowed
    resume.set()
    writer.join(60)
    assert not errors
    np.testing.assert_array_equal(c.codec.encode(x), _stored_codes(c))
    # The same as training on ``other`` first, then adding: no row is left in old codes.
    reference = vecstore.open().create_collection("ref", dim=x.shape[1], metric="ip",
                                                  codec="pq8x8")
    reference.train(other)
    reference.add(x)
    np.testing.assert_array_equal(c.search(x, k=1).ids, reference.search(x, k=1).ids)
    db.close()


def _capture(errors, fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # reported by the test's assertion
        errors.append(exc)


def _stored_codes(c: Collection) -> np.ndarray:
    mem = c._memtable
    return mem.columns["code"][: mem.count]


def test_dim_is_bounded_before_anything_is_allocated(on_disk):
    with pytest.raises(InvalidArgument, match=f"2..{MAX_DIM}"):
        on_disk.create_collection("huge", dim=30000, rotation="dense")
    with pytest.raises(InvalidArgument, match="dense rotation"):
        on_disk.create_collection("dense", dim=MAX_MATRIX_DIM + 1, rotation="dense")
    with pytest.raises(InvalidArgument, match="QJL sketch"):
        on_disk.create_collection("prod", dim=MAX_MATRIX_DIM + 8, codec="tq3-prod")
    with pytest.raises(InvalidArgument, match="PCA basis"):
        on_disk.create_collection("pca", dim=MAX_MATRIX_DIM + 8, codec="fp8-pca64")
    assert on_disk.list_collections() == []
    assert make_codec("tq2", dim=MAX_DIM).dim == MAX_DIM


def test_search_size_is_bounded_before_results_are_allocated(on_disk, wordnet):
    c = on_disk.create_collection("small", dim=384, metric="ip")
    c.add(wordnet["base"][:10])
    queries = np.repeat(wordnet["queries"][:1], 8000, axis=0)
    with pytest.raises(InvalidArgument, match="at most 4194304"):
        c.search(queries, k=16384)
    with pytest.raises(InvalidArgument, match="candidates"):
        c.search(queries[:1], k=16384, rescore=8)
    result = c.search(queries[:256], k=16384)
    assert result.ids.shape == (256, 16384)
    assert (result.ids[:, :10] >= 0).all() and (result.ids[:, 10:] == -1).all()


def test_query_blocks_shrink_with_k(monkeypatch, wordnet):
    """Large k scans fewer queries at a time, so candidates stay within SCAN_CANDIDATES."""
    db = vecstore.open()
    c = db.create_collection("blocks", dim=384, metric="ip", codec="tq4")
    c.add(wordnet["base"][:3000])
    seen = []
    original = SearchExecutor._scan_parts

    def scan(self, q, k, *args):
        seen.append((q.shape[0], k))
        return original(self, q, k, *args)

    monkeypatch.setattr(SearchExecutor, "_scan_parts", scan)
    monkeypatch.setattr("vecstore.search.executor.SCAN_CANDIDATES", 2000 * 40)
    blocked = c.search(wordnet["queries"][:100], k=2000, device="cpu")
    assert [n for n, _ in seen] == [40, 40, 20]
    monkeypatch.setattr("vecstore.search.executor.SCAN_CANDIDATES", 1 << 22)
    whole = c.search(wordnet["queries"][:100], k=2000, device="cpu")
    assert seen[-1] == (100, 2000)
    # Only the summation order of the blocks' matrix products differs.
    np.testing.assert_allclose(blocked.distances, whole.distances, rtol=1e-5, atol=1e-6)
    assert np.mean(blocked.ids == whole.ids) > 0.999


def test_automatic_ids_after_the_largest_id_fail_cleanly(on_disk, wordnet):
    c = on_disk.create_collection("ids", dim=384, metric="ip", codec="flat")
    top = np.iinfo(np.int64).max
    c.add(wordnet["base"][:1], ids=[top])
    with pytest.raises(InvalidArgument, match="no automatic ids left"):
        c.add(wordnet["base"][1:3])
    assert len(c) == 1
    assert c.add(wordnet["base"][1:3], ids=[5, 6]).tolist() == [5, 6]
    assert sorted(c.search(wordnet["base"][:3], k=3).ids[0].tolist()) == [5, 6, top]


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_values_near_float32_max_are_refused(on_disk, wordnet, metric):
    c = on_disk.create_collection("big", dim=384, metric=metric, codec="tq4")
    x = wordnet["base"][:51].copy()
    huge = x.copy()
    huge[7] = np.float32(3e38)
    with pytest.raises(InvalidArgument, match="row 7 has norm"):
        c.add(huge)
    assert len(c) == 0
    c.add(x)
    with pytest.raises(InvalidArgument, match="queries at row 0 has norm"):
        c.search(huge[7], k=10)
    scaled = x * np.float32(1e17 / np.sqrt(384))   # norms up to 1e17 are fine
    c.add(scaled)
    result = c.search(np.concatenate([x[:2], scaled[:2]]), k=100)
    assert (result.ids >= 0).all() and np.isfinite(result.distances).all()


def test_float16_stored_vectors_refuse_values_float16_cannot_hold(on_disk, wordnet):
    c = on_disk.create_collection("f16", dim=384, metric="ip", codec="tq4",
                                  store_vectors="float16")
    x = wordnet["base"][:4] * np.float32(1e6)
    with pytest.raises(InvalidArgument, match="float16"):
        c.add(x)
    assert len(c) == 0
    c.add(wordnet["base"][:4])
    assert np.isfinite(c.get([0, 1, 2, 3])).all()


def test_a_failed_automatic_flush_keeps_the_acknowledged_write(tmp_path, wordnet, monkeypatch):
    db = vecstore.open(tmp_path / "db", segment_bytes=4096)
    c = db.create_collection("flaky", dim=384, metric="ip", codec="tq4")

    def broken(*args, **kwargs):
        raise RuntimeError("segment writer broke")

    monkeypatch.setattr(c._store, "write_segment", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = c.add(wordnet["base"][:100])
    assert ids.tolist() == list(range(100)) and len(c) == 100
    assert any("automatic flush failed" in str(w.message) for w in caught)
    monkeypatch.undo()
    db.close()
    with vecstore.open(tmp_path / "db") as again:
        assert len(again.get_collection("flaky")) == 100


def test_database_close_closes_every_collection_when_one_fails(tmp_path, wordnet, monkeypatch):
    db = vecstore.open(tmp_path / "db")
    first = db.create_collection("a", dim=384, codec="tq4")
    second = db.create_collection("b", dim=384, codec="tq4")
    first.add(wordnet["base"][:10])
    second.add(wordnet["base"][:20])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(first._store, "write_segment", broken)
    with pytest.raises(OSError, match="disk full"):
        db.close()
    monkeypatch.undo()
    assert second._closed and second.stats()["memtable_rows"] == 0
    with vecstore.open(tmp_path / "db") as again:
        assert len(again.get_collection("a")) == 10
        assert len(again.get_collection("b")) == 20


def test_calls_on_a_dropped_collection_are_not_found_not_retryable(on_disk, wordnet):
    c = on_disk.create_collection("gone", dim=384, codec="tq4")
    c.add(wordnet["base"][:5])
    on_disk.drop_collection("gone")
    again = on_disk.create_collection("gone", dim=384, codec="tq4")
    for call in (lambda: c.add(wordnet["base"][:1]), lambda: c.search(wordnet["base"][0]),
                 lambda: c.delete([1])):
        with pytest.raises(NotFound, match="'gone' was dropped"):
            call()
    assert len(again) == 0



def test_a_remote_insert_racing_a_drop_is_not_retried_into_the_new_collection(wordnet,
                                                                               monkeypatch):
    """The servicer has the collection in hand when it is dropped (and re-created): the
    insert fails NOT_FOUND, which the client does not retry, so nothing lands in the new
    collection of the same name."""
    pytest.importorskip("grpc_health", reason="the server extra is not installed")
    from vecstore.server import serve
    from vecstore.server.servicer import VecstoreServicer

    original = VecstoreServicer._collection
    raced = []

    def collection_then_drop(self, name):
        found = original(self, name)
        if not raced:
            raced.append(name)
            self.db.drop_collection(name)
            self.db.create_collection(name, dim=384, codec="tq4")
        return found

    monkeypatch.setattr(VecstoreServicer, "_collection", collection_then_drop)
    with serve(None, port=0) as server, vecstore.Client(server.address) as client:
        docs = client.create_collection("docs", dim=384, codec="tq4")
        with pytest.raises(NotFound, match="'docs' was dropped"):
            docs.add(wordnet["base"][:3])
        assert raced == ["docs"]
        assert len(client.get_collection("docs")) == 0


@pytest.mark.parametrize("codec", ["pq2x8", "mib", "fp8-pca8", "tq4"])
def test_searching_an_empty_collection_finds_nothing_whatever_the_codec(codec):
    c = vecstore.open().create_collection("empty", dim=16, metric="l2", codec=codec)
    result = c.search(np.ones((2, 16), np.float32), k=3)
    assert (result.ids == -1).all() and np.isposinf(result.distances).all()
