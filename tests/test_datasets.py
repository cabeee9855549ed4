"""Benchmark data sets: the bundled set, exact ground truth, loading, caching and recall."""

from __future__ import annotations

import numpy as np
import pytest

import bench.datasets as datasets
from bench.datasets import (
    BUNDLED_DATA_DIR,
    CACHE_DIR,
    exact_ground_truth,
    load_dataset,
    shared_data_dir,
)
from bench.metrics import recall_1_at, recall_at

BUNDLED = BUNDLED_DATA_DIR / "wordnet-minilm384"

# Rows chosen so that every metric has exact ties; row 4 is the zero vector.
TIE_BASE = np.array([[1, 0], [0, 1], [1, 0], [2, 0], [0, 0]], dtype=np.float32)
TIE_QUERIES = np.array([[1, 0], [0, 3]], dtype=np.float32)
TIE_EXPECTED = {
    "ip": ([[3, 0, 2, 1, 4], [1, 0, 2, 3, 4]], [[2, 1, 1, 0, 0], [3, 0, 0, 0, 0]]),
    "l2": ([[0, 2, 3, 4, 1], [1, 4, 0, 2, 3]], [[0, 0, 1, 1, 2], [4, 9, 10, 10, 13]]),
    "cosine": ([[0, 2, 3, 1, 4], [1, 0, 2, 3, 4]], [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]),
}


def _brute_force(base, queries, metric, k):
    """Reference ranking: all scores in float64, sorted with ties to the smaller id.

    Cosine ranks rows normalised in float32, as a cosine collection stores them.
    """
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b, q = base.astype(np.float64), queries.astype(np.float64)
    if metric == "l2":
        scores = ((q[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
        key = scores
    else:
        scores = q @ b.T
        key = -scores
    ids = np.broadcast_to(np.arange(b.shape[0]), key.shape)
    order = np.lexsort((ids, key), axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def _write_set(directory, base, queries, **ground_truth):
    directory.mkdir(parents=True)
    np.save(directory / "base.npy", base)
    np.save(directory / "queries.npy", queries)
    for stem, ids in ground_truth.items():
        np.save(directory / f"{stem}.npy", ids)
    return directory


def _random_set(rng, n=60, nq=7, dim=5):
    base = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    return base, queries


# The bundled set


def test_bundled_set_has_documented_shapes_dtypes_and_unit_norms():
    ds = load_dataset()
    assert ds.name == "wordnet-minilm384"
    assert ds.path == BUNDLED
    assert ds.metric == "ip"
    assert ds.dim == 384
    assert ds.base.dtype == np.float32 and ds.base.shape == (25_000, 384)
    assert ds.queries.dtype == np.float32 and ds.queries.shape == (500, 384)
    np.testing.assert_allclose(np.linalg.norm(ds.base, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(ds.queries, axis=1), 1.0, atol=1e-5)
    assert ds.cache_dir == CACHE_DIR / "wordnet-minilm384"
    for metric in ("ip", "l2"):
        ids = ds.ground_truth(metric)
        assert ids.dtype == np.int64 and ids.shape == (500, 100)
        assert ids.min() >= 0 and ids.max() < 25_000
    assert np.load(BUNDLED / "base.npy", mmap_mode="r").dtype == np.float16
    assert np.load(BUNDLED / "gt_ip.npy", mmap_mode="r").dtype == np.int32


def test_bundled_ground_truth_equals_recomputed():
    base = np.load(BUNDLED / "base.npy").astype(np.float32)
    queries = np.load(BUNDLED / "queries.npy")[:50]
    for metric, score_file in (("ip", "gt_ip_score"), ("l2", "gt_l2_dist2")):
        ids, scores = exact_ground_truth(base, queries, metric)
        stored_ids = np.load(BUNDLED / f"gt_{metric}.npy")[:50]
        stored_scores = np.load(BUNDLED / f"{score_file}.npy")[:50]
        np.testing.assert_array_equal(ids, stored_ids)
        np.testing.assert_allclose(scores, stored_scores, rtol=0, atol=1e-6)


def test_max_queries_trims_queries_and_ground_truth():
    full = load_dataset("wordnet-minilm384")
    ds = load_dataset("wordnet-minilm384", max_queries=30)
    assert ds.queries.shape == (30, 384)
    np.testing.assert_array_equal(ds.queries, full.queries[:30])
    np.testing.assert_array_equal(ds.ground_truth("ip"), full.ground_truth("ip")[:30])


# exact_ground_truth


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_exact_ground_truth_breaks_ties_to_the_smaller_id(metric):
    expected_ids, expected_scores = TIE_EXPECTED[metric]
    ids, scores = exact_ground_truth(TIE_BASE, TIE_QUERIES, metric, k=5)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, np.array(expected_scores, dtype=np.float32))

    top3_ids, top3_scores = exact_ground_truth(TIE_BASE, TIE_QUERIES, metric, k=3)
    np.testing.assert_array_equal(top3_ids, ids[:, :3])
    np.testing.assert_array_equal(top3_scores, scores[:, :3])


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
@pytest.mark.parametrize("budget_bytes", [500, 2_000])
def test_exact_ground_truth_merges_blocks_like_a_full_sort(metric, budget_bytes, monkeypatch):
    rng = np.random.default_rng(7)
    base, queries = _random_set(rng, n=400, nq=45, dim=8)
    base[200] = base[17]  # an exact duplicate: equal scores, the smaller id first
    # Budgets this small scan one query at a time, over base blocks of 31 and 125 rows.
    monkeypatch.setattr(datasets, "_SCAN_BUDGET_BYTES", budget_bytes)
    ids, scores = exact_ground_truth(base, queries, metric, k=20)
    expected_ids, expected_scores = _brute_force(base, queries, metric, k=20)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)


def test_exact_ground_truth_rejects_bad_input():
    base = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown metric"):
        exact_ground_truth(base, base, "dot")
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\]"):
        exact_ground_truth(base, base, "ip", k=5)
    with pytest.raises(ValueError, match="dimension"):
        exact_ground_truth(base, np.ones((2, 2), dtype=np.float32), "ip", k=1)
    bad = base.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        exact_ground_truth(bad, base, "ip", k=1)


# load_dataset


def test_directory_without_ground_truth_computes_and_caches_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    base, queries = _random_set(rng)
    path = _write_set(tmp_path / "tiny", base.astype(np.float16), queries)
    cache = tmp_path / "cache"

    ds = load_dataset(path, cache_dir=cache)
    assert ds.name == "tiny" and ds.metric == "l2" and ds.dim == 5
    assert ds.base.dtype == np.float32
    np.testing.assert_array_equal(ds.base, base.astype(np.float16).astype(np.float32))
    ids = ds.ground_truth("cosine")
    assert ids.dtype == np.int64 and ids.shape == (7, 60)
    expected, _ = exact_ground_truth(ds.base, ds.queries, "cosine", k=60)
    np.testing.assert_array_equal(ids, expected)
    cached = list(cache.glob("gt_cos_*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(np.load(cached[0]), expected)

    def no_scan(*args, **kwargs):
        raise AssertionError("ground truth should come from the cache")

    monkeypatch.setattr(datasets, "exact_ground_truth", no_scan)
    np.testing.assert_array_equal(load_dataset(path, cache_dir=cache).ground_truth("cosine"), ids)


def test_cache_is_not_shared_between_different_data_with_the_same_name(tmp_path):
    rng = np.random.default_rng(4)
    cache = tmp_path / "cache"
    first = load_dataset(_write_set(tmp_path / "a" / "set", *_random_set(rng)), cache_dir=cache)
    second = load_dataset(_write_set(tmp_path / "b" / "set", *_random_set(rng)), cache_dir=cache)
    first_ids, second_ids = first.ground_truth("ip"), second.ground_truth("ip")
    expected, _ = exact_ground_truth(second.base, second.queries, "ip", k=60)
    np.testing.assert_array_equal(second_ids, expected)
    assert not np.array_equal(first_ids, second_ids)
    assert len(list(cache.glob("gt_ip_*.npy"))) == 2


def test_directory_with_ground_truth_files_uses_them(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.standard_normal((150, 4)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = rng.standard_normal((6, 4)).astype(np.float32)
    stored = rng.integers(0, 150, size=(6, 100)).astype(np.int32)
    path = _write_set(tmp_path / "unit", base, queries, gt_ip=stored)
    cache = tmp_path / "cache"

    ds = load_dataset(path, cache_dir=cache)
    assert ds.metric == "ip"
    np.testing.assert_array_equal(ds.ground_truth(), stored)
    assert ds.ground_truth().dtype == np.int64
    assert not cache.exists()

    trimmed = load_dataset(path, max_queries=2, metric="l2", cache_dir=cache)
    assert trimmed.metric == "l2" and trimmed.queries.shape == (2, 4)
    np.testing.assert_array_equal(trimmed.ground_truth("ip"), stored[:2])


def test_ground_truth_file_of_the_wrong_shape_is_rejected(tmp_path):
    rng = np.random.default_rng(6)
    base, queries = _random_set(rng, n=150)
    path = _write_set(tmp_path / "bad", base, queries, gt_l2=np.zeros((6, 100), dtype=np.int32))
    with pytest.raises(ValueError, match="gt_l2.npy"):
        load_dataset(path)


def test_missing_directory_and_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*base.npy and queries.npy"):
        load_dataset(tmp_path / "nowhere")
    path = tmp_path / "half"
    path.mkdir()
    np.save(path / "base.npy", np.ones((3, 2), dtype=np.float32))
    with pytest.raises(FileNotFoundError, match="queries.npy is missing"):
        load_dataset(path)


def test_shared_names_resolve_under_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("VECSTORE_SHARED_DATA", str(tmp_path / "absent"))
    assert shared_data_dir() is None
    with pytest.raises(FileNotFoundError, match="VECSTORE_SHARED_DATA"):
        load_dataset("glove50")

    rng = np.random.default_rng(8)
    _write_set(tmp_path / "shared" / "glove50", *_random_set(rng))
    monkeypatch.setenv("VECSTORE_SHARED_DATA", str(tmp_path / "shared"))
    assert shared_data_dir() == tmp_path / "shared"
    ds = load_dataset("glove50", cache_dir=tmp_path / "cache")
    assert ds.name == "glove50" and ds.metric == "l2" and ds.base.shape == (60, 5)


def test_shared_text_minilm384_ground_truth_is_reproduced():
    shared = shared_data_dir()
    if shared is None or not (shared / "text-minilm384").is_dir():
        pytest.skip("the shared data directory with text-minilm384 is not available")
    ds = load_dataset("text-minilm384", max_queries=20)
    assert ds.metric == "ip" and ds.base.shape == (100_000, 384)
    for metric, score_file in (("ip", "gt_ip_score"), ("l2", "gt_l2_dist2")):
        ids, scores = exact_ground_truth(ds.base, ds.queries, metric)
        np.testing.assert_array_equal(ids, ds.ground_truth(metric))
        stored_scores = np.load(ds.path / f"{score_file}.npy", mmap_mode="r")[:20]
        np.testing.assert_array_equal(scores, stored_scores)


# Recall


def test_recall_at_counts_each_found_id_once_and_ignores_padding():
    found = np.array([[1, 2, 3, 8], [4, 5, -1, 6], [7, 7, 7, 2]])
    truth = np.array([[3, 2, 9, 1], [-1, 6, 5, 4], [7, 0, 1, 2]])
    # Per query at k=3: {2, 3} of 3; {5} of 3 (-1 never matches); {7} of 3 (counted once).
    assert recall_at(found, truth, 3) == pytest.approx((2 + 1 + 1) / 9)
    assert recall_at(found, truth, 4) == pytest.approx((3 + 3 + 2) / 12)
    assert recall_at(np.full((2, 2), -1), np.full((2, 2), -1), 2) == 0.0
    assert recall_at(found.astype(np.int32), truth.astype(np.int16), 3) == pytest.approx(4 / 9)


def test_recall_1_at_looks_for_the_true_nearest_only():
    found = np.array([[5, 1], [7, 8], [-1, -1]])
    truth = np.array([[1, 0], [9, 7], [-1, 3]])
    assert recall_1_at(found, truth, 2) == pytest.approx(1 / 3)
    assert recall_1_at(found, truth, 1) == 0.0
    assert recall_1_at(found, truth[:, :1], 2) == pytest.approx(1 / 3)


def test_recall_rejects_mismatched_input():
    ids = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="at least 4"):
        recall_at(ids, ids, 4)
    with pytest.raises(ValueError, match="2 queries, truth has 1"):
        recall_at(ids, ids[:1], 2)
    with pytest.raises(ValueError, match="integer"):
        recall_1_at(ids.astype(np.float32), ids, 2)
    with pytest.raises(ValueError, match="positive"):
        recall_at(ids, ids, 0)
