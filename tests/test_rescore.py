"""Rescoring: candidates from the codes, reranked with stored vectors or a finer codec."""

from __future__ import annotations

import numpy as np
import pytest

import vecstore
from bench.metrics import recall_at
from vecstore import InvalidArgument


@pytest.fixture
def db():
    with vecstore.open() as database:
        yield database


def test_full_depth_rescore_with_float32_vectors_is_exact(db, wordnet):
    base, queries = wordnet["base"][:3000], wordnet["queries"][:50]
    exact = db.create_collection("exact", dim=384, metric="l2", codec="flat")
    exact.add(base)
    coarse = db.create_collection("coarse", dim=384, metric="l2", codec="tq1",
                                  store_vectors="float32")
    coarse.add(base)
    want = exact.search(queries, k=5)
    got = coarse.search(queries, k=5, rescore=64)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.distances, want.distances, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_rescore_raises_recall(db, wordnet, metric):
    plain = db.create_collection("plain", dim=384, metric=metric, codec="tq2")
    kept = db.create_collection("kept", dim=384, metric=metric, codec="tq2",
                                store_vectors="float16")
    for c in (plain, kept):
        c.add(wordnet["base"])
    truth = wordnet["gt_l2" if metric == "l2" else "gt_ip"]
    before = recall_at(plain.search(wordnet["queries"], k=10).ids, truth, 10)
    after = recall_at(kept.search(wordnet["queries"], k=10, rescore=4).ids, truth, 10)
    assert after >= before + 0.1
    assert after >= 0.95


def test_rescore_codec_reranks_with_finer_codes(db, wordnet):
    c = db.create_collection("c", dim=384, metric="ip", codec="tq2", rescore_codec="tq8")
    c.add(wordnet["base"])
    assert c.bytes_per_vector == c.codec.code_size + c.rescore_codec.code_size
    recall = recall_at(c.search(wordnet["queries"], k=10, rescore=4).ids, wordnet["gt_ip"], 10)
    assert recall >= 0.95


def test_stored_vectors_are_returned_by_get(db):
    x = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    c32 = db.create_collection("c32", dim=8, metric="ip", codec="tq2", store_vectors="float32")
    c16 = db.create_collection("c16", dim=8, metric="ip", codec="tq2", store_vectors="float16")
    c32.add(x)
    c16.add(x)
    np.testing.assert_array_equal(c32.get([3, 4]), x[[3, 4]])
    np.testing.assert_array_equal(c16.get([3]), x[[3]].astype(np.float16).astype(np.float32))
    assert c16.bytes_per_vector == c16.code_size + 16


def test_rescore_survives_deletes_and_compaction(db):
    x = np.random.default_rng(1).standard_normal((400, 16)).astype(np.float32)
    c = db.create_collection("c", dim=16, metric="l2", codec="tq2", store_vectors="float32")
    c.add(x)
    c.delete(np.arange(0, 400, 2)[:150])
    c.delete(np.arange(0, 400, 2)[150:])
    _, found = c.search(x[1::2][:20], k=1, rescore=8)
    np.testing.assert_array_equal(found[:, 0], np.arange(1, 400, 2)[:20])


def test_rescore_bad_input(db):
    plain = db.create_collection("plain", dim=4, codec="tq2")
    plain.add(np.eye(4))
    with pytest.raises(InvalidArgument, match="nothing to rescore"):
        plain.search(np.ones(4), rescore=2)
    kept = db.create_collection("kept", dim=4, codec="tq2", store_vectors="float16")
    kept.add(np.eye(4))
    for bad in (0, 65, 2.0, True):
        with pytest.raises(InvalidArgument, match="rescore must be"):
            kept.search(np.ones(4), rescore=bad)
    with pytest.raises(InvalidArgument, match="store_vectors"):
        db.create_collection("x", dim=4, store_vectors="int8")
    with pytest.raises(InvalidArgument, match="choose one"):
        db.create_collection("x", dim=4, store_vectors="float16", rescore_codec="tq8")
    assert "x" not in db
