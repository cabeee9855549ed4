"""The chunked CPU scan and top-k merge agree with a one-shot brute force."""

from __future__ import annotations

import numpy as np
import pytest

import vecstore
from vecstore.codecs import make_codec, tables
from vecstore.search import cpu
from vecstore.search.topk import TopK


def brute_force(codec, codes, queries, k, metric):
    """Keys from one score matrix, full sort, ties to the smaller row."""
    scores = codec.score(codec.prepare_query(queries), codes)
    if metric == "l2":
        keys = (queries**2).sum(1)[:, None] - 2 * scores + codec.norms(codes)[None, :] ** 2
    else:
        keys = -scores
    order = np.lexsort((np.broadcast_to(np.arange(codes.shape[0]), keys.shape), keys), axis=-1)
    return np.take_along_axis(keys, order[:, :k], 1), order[:, :k]


@pytest.mark.parametrize("spec", ["flat", "tq1", "tq3", "tq4", "tq3-prod"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("rows_per_chunk", [1, 7, 64, 10_000])
def test_chunked_scan_equals_brute_force(monkeypatch, spec, metric, rows_per_chunk):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((333, 20)).astype(np.float32)
    q = rng.standard_normal((5, 20)).astype(np.float32)
    codec = make_codec(spec, dim=20, seed=1)
    codes = codec.encode(x)
    monkeypatch.setattr(cpu, "chunk_rows", lambda nq, dim: rows_per_chunk)
    top = cpu.scan(codec, codes, q, 10, metric)
    keys, rows = top.sorted(np.arange(codes.shape[0], dtype=np.int64))
    want_keys, want_rows = brute_force(codec, codes, q, 10, metric)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(keys, want_keys, rtol=1e-5, atol=1e-5)


def test_dead_rows_never_returned(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 8)).astype(np.float32)
    codec = make_codec("flat", dim=8)
    live = np.ones(100, dtype=bool)
    live[::2] = False
    monkeypatch.setattr(cpu, "chunk_rows", lambda nq, dim: 9)
    top = cpu.scan(codec, codec.encode(x), x[:4], 60, "ip", live)
    _, rows = top.sorted(np.arange(100, dtype=np.int64))
    assert (rows[:, :50] % 2 == 1).all()
    assert (rows[:, 50:] == -1).all()


def test_topk_breaks_ties_by_smaller_id():
    top = TopK(1, 3)
    top.push(np.array([[1.0, 0.5, 0.5, 0.5, 2.0]], dtype=np.float32), 0)
    keys, ids = top.sorted(np.array([40, 30, 20, 10, 0], dtype=np.int64))
    np.testing.assert_array_equal(ids, [[10, 20, 30]])
    np.testing.assert_array_equal(keys, [[0.5, 0.5, 0.5]])


@pytest.mark.parametrize("spec", ["tq1", "tq2", "tq3", "tq4", "tq6", "tq8", "tq2-prod",
                                  "tq3-prod", "tq4-prod", "tq5-prod", "fp8"])
def test_lookup_table_and_matrix_paths_agree(monkeypatch, spec):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 37)).astype(np.float32)
    q = rng.standard_normal((2, 37)).astype(np.float32)
    codec = make_codec(spec, dim=37, seed=3)
    codes = codec.encode(x)
    state = codec.prepare_query(q)
    monkeypatch.setattr(tables, "LUT_MAX_QUERIES", 0)
    by_matrix = codec.score(state, codes)
    monkeypatch.setattr(tables, "LUT_MAX_QUERIES", 8)
    by_tables = codec.score(state, codes)
    np.testing.assert_allclose(by_tables, by_matrix, rtol=1e-5, atol=1e-5)


def test_query_blocks_cover_large_batches(monkeypatch):
    monkeypatch.setattr(cpu, "QUERY_BLOCK", 3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    with vecstore.open() as db:
        c = db.create_collection("c", dim=6, metric="ip", codec="flat")
        c.add(x)
        distances, ids = c.search(x[:10], k=1)
    np.testing.assert_array_equal(ids[:, 0], np.argmax(x[:10] @ x.T, axis=1))
