"""Recall on real embeddings against exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

import vecstore
from bench.metrics import recall_at

TEXT_QUERIES = 2000
GLOVE_QUERIES = 1000
GLOVE_METRICS = [("ip", "gt_ip"), ("l2", "gt_l2"), ("cosine", "gt_cos")]


def search_ids(data, spec, metric, n_queries, k=10):
    with vecstore.open() as db:
        c = db.create_collection("c", dim=data["base"].shape[1], metric=metric, codec=spec)
        c.add(data["base"])
        return c.search(data["queries"][:n_queries], k=k)


def assert_exact_up_to_ties(found_ids, found_scores, gt_scores, rtol=1e-5):
    """Every returned score equals the ground truth's score at that rank (ties may swap ids)."""
    np.testing.assert_allclose(found_scores, gt_scores, rtol=rtol, atol=rtol)
    assert (found_ids >= 0).all()


@pytest.mark.parametrize(("spec", "floor"), [("tq4", 0.92), ("tq2", 0.79)])
def test_text_minilm_tq_recall(text_minilm, spec, floor):
    result = search_ids(text_minilm, spec, "ip", TEXT_QUERIES)
    recall = recall_at(result.ids, text_minilm["gt_ip"][:TEXT_QUERIES], 10)
    assert recall >= floor, f"{spec} recall@10 {recall:.4f} < {floor}"


def test_text_minilm_flat_is_exact(text_minilm):
    result = search_ids(text_minilm, "flat", "ip", TEXT_QUERIES)
    gt = text_minilm["gt_ip"][:TEXT_QUERIES, :10]
    assert recall_at(result.ids, gt, 10) >= 0.999
    assert_exact_up_to_ties(result.ids, result.distances,
                            text_minilm["gt_ip_score"][:TEXT_QUERIES, :10])


def test_bundled_wordnet_recall(wordnet):
    flat = search_ids(wordnet, "flat", "ip", 500)
    assert recall_at(flat.ids, wordnet["gt_ip"], 10) >= 0.999
    tq4 = search_ids(wordnet, "tq4", "ip", 500)
    assert recall_at(tq4.ids, wordnet["gt_ip"], 10) >= 0.9


@pytest.mark.parametrize(("metric", "stem"), GLOVE_METRICS)
def test_glove_flat_matches_each_metric(glove50, metric, stem):
    result = search_ids(glove50, "flat", metric, GLOVE_QUERIES)
    gt = glove50[stem][:GLOVE_QUERIES, :10]
    assert recall_at(result.ids, gt, 10) >= 0.999
    score_file = {"ip": "gt_ip_score", "l2": "gt_l2_dist2", "cosine": "gt_cos_score"}[metric]
    assert_exact_up_to_ties(result.ids, result.distances,
                            glove50[score_file][:GLOVE_QUERIES, :10], rtol=2e-4)


@pytest.mark.parametrize(("metric", "stem"), GLOVE_METRICS)
def test_glove_tq4_ranks_each_metric(glove50, metric, stem):
    """tq4 follows each metric's own neighbours, well above what another metric's list gives."""
    result = search_ids(glove50, "tq4", metric, GLOVE_QUERIES)
    own = recall_at(result.ids, glove50[stem][:GLOVE_QUERIES], 10)
    others = [recall_at(result.ids, glove50[s][:GLOVE_QUERIES], 10)
              for s in ("gt_ip", "gt_l2", "gt_cos") if s != stem]
    assert own >= 0.6
    assert own > max(others) + 0.1


def test_text_minilm_tq2_rescored_with_originals(text_minilm):
    with vecstore.open() as db:
        c = db.create_collection("c", dim=384, metric="ip", codec="tq2", store_vectors="float16")
        c.add(text_minilm["base"])
        result = c.search(text_minilm["queries"][:TEXT_QUERIES], k=10, rescore=4)
    recall = recall_at(result.ids, text_minilm["gt_ip"][:TEXT_QUERIES], 10)
    assert recall >= 0.95, f"tq2 rescore=4 recall@10 {recall:.4f} < 0.95"
