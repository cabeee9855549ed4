"""The embedded database and collection API: behaviour, results layout and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import vecstore
from vecstore import AlreadyExists, Closed, InvalidArgument, NotFound


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def db():
    with vecstore.open() as database:
        yield database


def test_database_lifecycle(db):
    a = db.create_collection("a", dim=8)
    db.create_collection("b.v2", dim=16, metric="l2", codec="flat")
    assert db.list_collections() == ["a", "b.v2"]
    assert db.get_collection("a") is a
    assert "a" in db
    db.drop_collection("a")
    assert db.list_collections() == ["b.v2"]
    with pytest.raises(NotFound, match="'a'"):
        db.get_collection("a")
    with pytest.raises(NotFound):
        db.drop_collection("a")
    with pytest.raises(NotFound, match="'a' was dropped"):
        a.search(np.ones(8))


def test_collection_defaults_and_repr(db):
    c = db.create_collection("docs", dim=384)
    assert (c.metric, c.codec.spec, c.dim, len(c)) == ("cosine", "tq4", 384, 0)
    assert c.code_size == 384 * 4 // 8 + 4
    assert "tq4" in repr(c)


def test_close_is_idempotent_and_blocks_use():
    db = vecstore.open()
    c = db.create_collection("c", dim=4, codec="flat")
    db.close()
    db.close()
    with pytest.raises(Closed):
        db.list_collections()
    with pytest.raises(Closed):
        c.add(np.ones((1, 4)))


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "-x", "a b", "x" * 129, 5, None])
def test_bad_collection_names(db, name):
    with pytest.raises(InvalidArgument):
        db.create_collection(name, dim=4)
    with pytest.raises(InvalidArgument):
        db.get_collection(name)
    with pytest.raises(InvalidArgument):
        db.drop_collection(name)
    assert db.list_collections() == []


def test_create_collection_errors(db):
    db.create_collection("x", dim=4)
    with pytest.raises(AlreadyExists):
        db.create_collection("x", dim=4)
    with pytest.raises(InvalidArgument, match="metric"):
        db.create_collection("y", dim=4, metric="dot")
    with pytest.raises(InvalidArgument, match="unknown codec spec 'tq9'"):
        db.create_collection("y", dim=4, codec="tq9")
    for dim in (0, 1, 2.5, True):
        with pytest.raises(InvalidArgument, match="dim"):
            db.create_collection("y", dim=dim)
    assert db.list_collections() == ["x"]


def test_add_assigns_ids_and_get_returns_vectors(db):
    c = db.create_collection("c", dim=6, metric="ip", codec="flat")
    x = np.arange(18, dtype=np.float64).reshape(3, 6)
    ids = c.add(x)
    np.testing.assert_array_equal(ids, [0, 1, 2])
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(c.add(x[0], ids=[10]), [10])
    np.testing.assert_array_equal(c.add(x[:2]), [11, 12])
    assert len(c) == 6 and 10 in c and 3 not in c and "10" not in c
    got = c.get([12, 0])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x[[1, 0]].astype(np.float32))
    with pytest.raises(NotFound, match="3, 4"):
        c.get([0, 3, 4])


def test_cosine_collections_store_unit_vectors(db):
    c = db.create_collection("c", dim=3, metric="cosine", codec="flat")
    c.add([[3.0, 0.0, 4.0]], ids=[7])
    np.testing.assert_allclose(c.get([7]), [[0.6, 0.0, 0.8]], rtol=1e-6)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_search_result_layout_and_padding(db, metric):
    c = db.create_collection("c", dim=5, metric=metric, codec="flat")
    c.add(unit_rows(3, 5, 0), ids=[5, 6, 7])
    result = c.search(unit_rows(2, 5, 1), k=5)
    assert isinstance(result, vecstore.SearchResult)
    distances, ids = result
    assert distances.dtype == np.float32 and ids.dtype == np.int64
    assert distances.shape == ids.shape == (2, 5)
    np.testing.assert_array_equal(ids[:, 3:], -1)
    assert sorted(ids[0, :3]) == [5, 6, 7]
    pad = np.inf if metric == "l2" else -np.inf
    assert (distances[:, 3:] == pad).all()
    real = distances[:, :3]
    steps = np.diff(real, axis=1)
    assert (steps >= 0).all() if metric == "l2" else (steps <= 0).all()


def test_single_query_is_one_row(db):
    c = db.create_collection("c", dim=4, codec="flat", metric="ip")
    c.add(np.eye(4))
    distances, ids = c.search(np.array([0, 0, 1.0, 0]), k=2)
    assert ids.shape == (1, 2) and ids[0, 0] == 2
    assert distances[0, 0] == pytest.approx(1.0)


def test_k_up_to_the_cap_pads_beyond_the_rows(db):
    c = db.create_collection("c", dim=4, codec="tq4", metric="ip")
    c.add(np.eye(4))
    distances, ids = c.search(np.ones(4), k=16384)
    assert ids.shape == (1, 16384)
    assert sorted(ids[0, :4]) == [0, 1, 2, 3] and (ids[0, 4:] == -1).all()
    assert np.isfinite(distances[0, :4]).all() and (distances[0, 4:] == -np.inf).all()


def test_empty_collection_search_is_all_padding(db):
    c = db.create_collection("c", dim=4, codec="tq2", metric="l2")
    distances, ids = c.search(np.ones((3, 4)), k=4)
    assert (ids == -1).all() and np.isinf(distances).all()


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_flat_search_matches_brute_force(db, metric):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 24)).astype(np.float32) * rng.uniform(0.1, 3, (500, 1))
    q = rng.standard_normal((9, 24)).astype(np.float32)
    c = db.create_collection("c", dim=24, metric=metric, codec="flat")
    ids = c.add(x, ids=np.arange(1000, 1500))
    distances, found = c.search(q, k=10)
    if metric == "l2":
        exact = ((q[:, None, :] - x[None]) ** 2).sum(-1)
        order = np.argsort(exact, axis=1)[:, :10]
        np.testing.assert_allclose(distances, np.take_along_axis(exact, order, 1), rtol=1e-4,
                                   atol=1e-4)
    else:
        xs = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
        qs = q / np.linalg.norm(q, axis=1, keepdims=True) if metric == "cosine" else q
        exact = qs @ xs.T
        order = np.argsort(-exact, axis=1)[:, :10]
        np.testing.assert_allclose(distances, np.take_along_axis(exact, order, 1), rtol=1e-5,
                                   atol=1e-5)
    np.testing.assert_array_equal(found, ids[order])


def test_delete_hides_ids_and_counts(db):
    c = db.create_collection("c", dim=8, codec="flat", metric="ip")
    x = unit_rows(50, 8, 4)
    c.add(x)
    assert c.delete([3, 4, 4, 999]) == 2
    assert len(c) == 48 and 3 not in c
    _, found = c.search(x, k=50)
    assert not np.isin(found, [3, 4]).any()
    assert (found[:, -2:] == -1).all()
    assert c.delete([]) == 0


def test_many_deletes_compact_and_keep_answers(db):
    c = db.create_collection("c", dim=8, codec="flat", metric="ip")
    x = unit_rows(300, 8, 5)
    c.add(x)
    doomed = np.arange(0, 300, 3)
    for chunk in np.array_split(doomed, 10):
        c.delete(chunk)
    survivors = np.setdiff1d(np.arange(300), doomed)
    assert len(c) == survivors.size
    _, found = c.search(x[survivors[:5]], k=1)
    np.testing.assert_array_equal(found[:, 0], survivors[:5])
    np.testing.assert_array_equal(c.get(survivors[-3:]), x[survivors[-3:]])
    new = c.add(x[:2])
    np.testing.assert_array_equal(new, [300, 301])


def _state(c):
    return len(c), c.search(np.ones(c.dim, dtype=np.float32), k=50)


@pytest.mark.parametrize(
    ("vectors", "ids", "message"),
    [
        (np.ones((2, 7)), None, "dimension 7"),
        (np.array([[1.0, np.nan, 0, 0, 0, 0, 0, 0]]), None, "NaN or Inf"),
        (np.array([[1.0, np.inf, 0, 0, 0, 0, 0, 0]]), None, "NaN or Inf"),
        (np.array([["a"] * 8]), None, "numeric"),
        (np.ones((1, 8), dtype=bool), None, "numeric"),
        (np.ones((1, 8), dtype=complex), None, "numeric"),
        (np.ones((0, 8)), None, "empty"),
        (np.ones((2, 2, 8)), None, "1-D or 2-D"),
        (np.ones((2, 8)), [1, 1], "duplicate ids"),
        (np.ones((2, 8)), [1], "2 vectors"),
        (np.ones((2, 8)), [1.0, 2.0], "integers"),
        (np.ones((2, 8)), [-1, 2], "non-negative"),
        (np.zeros((1, 8)), None, "zero"),
    ],
)
def test_bad_add_raises_and_changes_nothing(db, vectors, ids, message):
    c = db.create_collection("c", dim=8, metric="cosine", codec="tq3")
    c.add(unit_rows(20, 8, 6))
    before_len, before = _state(c)
    with pytest.raises(InvalidArgument, match=message):
        c.add(vectors, ids=ids)
    after_len, after = _state(c)
    assert before_len == after_len
    np.testing.assert_array_equal(before.ids, after.ids)


def test_add_existing_id_raises_and_changes_nothing(db):
    c = db.create_collection("c", dim=8, codec="flat")
    c.add(unit_rows(3, 8, 7), ids=[1, 2, 3])
    with pytest.raises(AlreadyExists, match="3"):
        c.add(unit_rows(2, 8, 8), ids=[3, 4])
    assert len(c) == 3 and 4 not in c
    assert isinstance(AlreadyExists("x"), ValueError)


@pytest.mark.parametrize("k", [0, -3, 2.0, "5", True, None, 16385])
def test_bad_k(db, k):
    c = db.create_collection("c", dim=4, codec="flat")
    c.add(np.eye(4))
    with pytest.raises(InvalidArgument, match="k must be"):
        c.search(np.ones(4), k=k)


def test_bad_queries(db):
    c = db.create_collection("c", dim=4)
    c.add(np.eye(4))
    with pytest.raises(InvalidArgument, match="queries have dimension 3"):
        c.search(np.ones(3))
    with pytest.raises(InvalidArgument, match="zero"):
        c.search(np.zeros(4))
    with pytest.raises(InvalidArgument, match="NaN"):
        c.search(np.array([np.nan, 1, 1, 1]))
    # Queries sum their norms in float32: Inf, a norm past the limit and one whose
    # float32 sum overflows are each refused, naming the first such row.
    with pytest.raises(InvalidArgument, match=r"NaN or Inf \(first at row 1\)"):
        c.search(np.array([[1, 1, 1, 1], [1, np.inf, 1, 1]]))
    with pytest.raises(InvalidArgument, match="row 1 has norm 2e\\+18"):
        c.search(np.array([[1, 1, 1, 1], [2e18, 0, 0, 0]]))
    with pytest.raises(InvalidArgument, match="row 0 has norm inf"):
        c.search(np.array([[3e38, 3e38, 0, 0]]))


def test_errors_are_builtin_subclasses():
    assert issubclass(InvalidArgument, ValueError)
    assert issubclass(NotFound, KeyError)
    assert str(NotFound("no collection named 'x'")) == "no collection named 'x'"


def test_trained_codecs_learn_from_the_first_batch(db, wordnet):
    c = db.create_collection("pq", dim=384, metric="ip", codec="pq48x8")
    with pytest.raises(InvalidArgument):
        c.add(wordnet["base"][:10])
    assert len(c) == 0 and not c.codec.is_trained
    c.add(wordnet["base"][:5000])
    assert c.codec.is_trained
    c.add(wordnet["base"][5000:6000])
    _, found = c.search(wordnet["base"][:20], k=1)
    assert (found[:, 0] == np.arange(20)).mean() >= 0.9
    with pytest.raises(InvalidArgument, match="already holds vectors"):
        c.train(wordnet["base"][:1000])


def test_explicit_train_before_small_adds(db, wordnet):
    c = db.create_collection("mib", dim=384, metric="cosine", codec="mib2")
    c.train(wordnet["base"][:2000])
    assert c.codec.is_trained
    c.add(wordnet["base"][:3])
    assert len(c) == 3


def test_a_repeated_filter_sees_rows_written_since(wordnet):
    """Filter masks are kept per snapshot: a filter searched again after adds, deletes and
    a flush still sees exactly the rows that match now."""
    x, q = wordnet["base"][:3000], wordnet["queries"][:1]
    c = vecstore.open(device="cpu").create_collection("f", dim=384, metric="ip", codec="tq4")
    c.add(x[:1000], metadata={"g": np.arange(1000) % 10})
    wanted = {"g": 3}
    first = c.search(q, k=2000, filter=wanted).ids
    assert set(first[first >= 0]) == set(range(3, 1000, 10))
    c.add(x[1000:2000], metadata={"g": np.arange(1000, 2000) % 10})
    c.delete(np.arange(3, 500, 10))
    c.flush()
    c.add(x[2000:], metadata={"g": np.arange(2000, 3000) % 10})
    again = c.search(q, k=2000, filter=wanted).ids
    assert set(again[again >= 0]) == set(range(503, 3000, 10))
    other = c.search(q, k=2000, filter={"g": 4}).ids
    assert set(other[other >= 0]) == set(range(4, 3000, 10))
