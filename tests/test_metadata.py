"""Metadata columns and filtered search, in memory and on disk."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import vecstore
from vecstore.errors import InvalidArgument

DIM = 8
N = 3000
LANGS = np.array(["en", "de", "fr"])


def data():
    rng = np.random.default_rng(1)
    x = rng.integers(-4, 5, size=(N, DIM)).astype(np.float32)
    meta = {"lang": LANGS[np.arange(N) % 3].tolist(), "year": 1990 + np.arange(N) % 40}
    return x, meta


def brute_force(x, mask, q, k):
    scores = q @ x.T
    scores[:, ~mask] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(N), scores.shape), -scores), axis=1)[:, :k]
    return np.where(np.isfinite(np.take_along_axis(scores, order, 1)), order, -1)


@pytest.fixture(params=["memory", "disk"])
def collection(request, tmp_path):
    db = vecstore.open(None if request.param == "memory" else tmp_path / "db",
                       segment_bytes=20_000)
    c = db.create_collection("c", dim=DIM, metric="ip", codec="flat")
    x, meta = data()
    c.add(x[:1000], metadata={k: v[:1000] for k, v in meta.items()})
    c.flush()
    c.add(x[1000:], metadata={k: v[1000:] for k, v in meta.items()})
    yield c
    db.close()


FILTERS = [
    ({"lang": "en"}, lambda m: m["lang"] == "en"),
    ({"lang": ["de", "fr"]}, lambda m: m["lang"] != "en"),
    ({"year": {">=": 2025}}, lambda m: m["year"] >= 2025),
    ({"year": {">": 1995, "<=": 1997}, "lang": "fr"},
     lambda m: (m["year"] > 1995) & (m["year"] <= 1997) & (m["lang"] == "fr")),
    ({"year": {"in": [1990, 2000]}}, lambda m: np.isin(m["year"], [1990, 2000])),
    ({"year": {"!=": 1990}}, lambda m: m["year"] != 1990),
    (pc.field("year") == 2029, lambda m: m["year"] == 2029),
    ((pc.field("lang") == "de") | (pc.field("year") < 1992),
     lambda m: (m["lang"] == "de") | (m["year"] < 1992)),
]


@pytest.mark.parametrize("filter, expected", FILTERS)
def test_filters_apply_before_top_k(collection, filter, expected):
    x, meta = data()
    mask = expected({"lang": np.array(meta["lang"]), "year": meta["year"]})
    q = x[:7] + 0.25
    found = collection.search(q, 30, filter=filter)
    np.testing.assert_array_equal(found.ids, brute_force(x, mask, q, 30))
    assert (found.ids >= 0).sum(axis=1).min() == min(30, mask.sum())


def test_a_filter_matching_fewer_than_k_rows_pads(collection):
    found = collection.search(np.ones(DIM), 100, filter={"year": 1990, "lang": "en"})
    matching = (np.arange(N) % 3 == 0) & (np.arange(N) % 40 == 0)
    assert sorted(found.ids[0][found.ids[0] >= 0]) == np.nonzero(matching)[0].tolist()
    assert (found.distances[0][found.ids[0] < 0] == -np.inf).all()


def test_deleted_rows_never_match_a_filter(collection):
    collection.delete(np.arange(0, N, 3))
    found = collection.search(np.ones(DIM), 50, filter={"lang": "en"})
    assert (found.ids == -1).all()


def test_filters_survive_reopening(tmp_path):
    x, meta = data()
    with vecstore.open(tmp_path / "db") as db:
        db.create_collection("c", dim=DIM, metric="ip", codec="flat").add(x, metadata=meta)
    with vecstore.open(tmp_path / "db") as db:
        c = db.get_collection("c")
        assert c.metadata_schema == pa.schema([("lang", pa.string()), ("year", pa.int64())])
        mask = np.array(meta["lang"]) == "de"
        np.testing.assert_array_equal(c.search(x[:3], 10, filter={"lang": "de"}).ids,
                                      brute_force(x, mask, x[:3], 10))


def test_the_schema_grows_and_missing_fields_are_null():
    c = vecstore.open().create_collection("c", dim=DIM, codec="flat")
    c.add(np.ones((2, DIM)), metadata={"lang": ["en", "de"]})
    c.add(np.ones((2, DIM)), metadata={"year": [2001, 2002]})
    c.add(np.ones((1, DIM)))
    table = c.get_metadata([4, 0, 3, 1])
    assert table.column_names == ["id", "lang", "year"]
    assert table.column("lang").to_pylist() == [None, "en", None, "de"]
    assert table.column("year").to_pylist() == [None, None, 2002, None]
    found = c.search(np.ones(DIM), 5, filter={"year": None})
    assert sorted(found.ids[0][found.ids[0] >= 0]) == [0, 1, 4]


def test_values_cast_to_a_fields_type_or_are_rejected():
    c = vecstore.open().create_collection("c", dim=DIM, codec="flat")
    c.add(np.ones((1, DIM)), metadata={"year": [2001]})
    c.add(np.ones((1, DIM)), metadata={"year": pa.array([2002], pa.int32())})
    assert c.metadata_schema.field("year").type == pa.int64()
    with pytest.raises(InvalidArgument, match="year"):
        c.add(np.ones((1, DIM)), metadata={"year": ["soon"]})
    assert len(c) == 2


@pytest.mark.parametrize("metadata, message", [
    ({"lang": ["en"]}, "1 rows for 2 vectors"),
    ({"id": [1, 2]}, "reserved"),
    ({"vector": [1, 2]}, "reserved"),
    ({"x": [None, None]}, "only nulls"),
    ({"x": 5}, "sequence"),
    ({3: [1, 2]}, "strings"),
    ([1, 2], "dict of columns"),
])
def test_bad_metadata_is_rejected_and_nothing_is_added(metadata, message):
    c = vecstore.open().create_collection("c", dim=DIM, codec="flat")
    with pytest.raises(InvalidArgument, match=message):
        c.add(np.ones((2, DIM)), metadata=metadata)
    assert len(c) == 0 and c.metadata_schema == pa.schema([])


@pytest.mark.parametrize("filter, message", [
    ({"nope": 1}, "unknown metadata field"),
    ({"year": {"~": 1}}, "unknown filter operator"),
    ({}, "empty"),
    (pc.field("year") + 1, "booleans"),
    (pc.field("nope") == 1, "cannot be applied"),
    ("year > 3", "Expression or a dict"),
])
def test_bad_filters_are_rejected(collection, filter, message):
    with pytest.raises(InvalidArgument, match=message):
        collection.search(np.ones(DIM), 5, filter=filter)


def test_a_filter_needs_metadata():
    c = vecstore.open().create_collection("c", dim=DIM, codec="flat")
    c.add(np.ones((2, DIM)))
    with pytest.raises(InvalidArgument, match="no metadata fields"):
        c.search(np.ones(DIM), 1, filter={"lang": "en"})


def test_filtered_search_with_rescoring(tmp_path):
    x, meta = data()
    with vecstore.open(tmp_path / "db") as db:
        c = db.create_collection("c", dim=DIM, metric="ip", codec="tq2", store_vectors="float32")
        c.add(x, metadata=meta)
        mask = np.array(meta["lang"]) == "fr"
        found = c.search(x[:5], 10, rescore=8, filter={"lang": "fr"})
        assert mask[found.ids].all()
