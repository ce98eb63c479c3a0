"""AUC/UAUC against sklearn and hand-computed cases; top-k metrics on a hand-worked toy."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from collm_faissret.metrics import auc, auc_report, hit_rate_at_k, ndcg_at_k, recall_at_k, uauc


def _random_split(seed, n=400, n_users=25):
    """Scores rounded to one decimal: many ties, within and across users."""
    rng = np.random.RandomState(seed)
    users = rng.randint(0, n_users, size=n) * 7 + 3  # non-contiguous ids
    labels = rng.randint(0, 2, size=n)
    scores = np.round(rng.normal(size=n) + 0.4 * labels, 1)
    return users, labels, scores


def _uauc_loop(users, labels, scores):
    """Reference UAUC: sklearn per user with both labels, then the plain mean."""
    vals = []
    for u in np.unique(users):
        m = users == u
        if len(set(labels[m])) == 2:
            vals.append(roc_auc_score(labels[m], scores[m]))
    return float(np.mean(vals)) if vals else float("nan")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_auc_matches_sklearn_with_ties(seed):
    users, labels, scores = _random_split(seed)
    assert len(np.unique(scores)) < len(scores) // 4  # the data really has ties
    assert abs(auc(labels, scores) - roc_auc_score(labels, scores)) < 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_uauc_matches_per_user_sklearn_loop(seed):
    users, labels, scores = _random_split(seed)
    # a few users with one label only, which must be skipped
    users = np.concatenate([users, [1000, 1000, 1001]])
    labels = np.concatenate([labels, [1, 1, 0]])
    scores = np.concatenate([scores, [0.3, 0.3, 0.9]])
    assert abs(uauc(users, labels, scores) - _uauc_loop(users, labels, scores)) < 1e-9


def test_uauc_string_user_ids_match_loop():
    users, labels, scores = _random_split(7)
    names = np.array([f"user{u}" for u in users])
    assert abs(uauc(names, labels, scores) - _uauc_loop(users, labels, scores)) < 1e-9


def test_auc_hand_computed():
    # positives 0.9, 0.4; negatives 0.1, 0.4:
    # (0.9>0.1)=1 + (0.9>0.4)=1 + (0.4>0.1)=1 + (0.4=0.4)=1/2 -> 3.5 / 4
    assert auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.4]) == pytest.approx(0.875, abs=1e-12)
    assert auc([1, 1, 0], [0.2, 0.3, 0.9]) == 0.0
    assert auc([0, 1], [5.0, 5.0]) == 0.5


def test_auc_one_class_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([], []))


def test_uauc_hand_computed():
    # user 1: pos 0.8 vs negs 0.5, 0.9 -> (1 + 0) / 2 = 0.5
    # user 2: pos 0.7, 0.3 vs neg 0.3 -> (1 + 1/2) / 2 = 0.75
    # user 3: only positives -> skipped
    # user 4: only one row -> skipped
    users = [1, 1, 1, 2, 2, 2, 3, 3, 4]
    labels = [1, 0, 0, 1, 1, 0, 1, 1, 0]
    scores = [0.8, 0.5, 0.9, 0.7, 0.3, 0.3, 0.1, 0.2, 0.6]
    assert uauc(users, labels, scores) == pytest.approx((0.5 + 0.75) / 2, abs=1e-12)


def test_uauc_nan_without_valid_users():
    assert math.isnan(uauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(uauc([], [], []))


def _toy_ranking():
    """3 users with a relevant item, 1 without (skipped)."""
    ranked = [[1, 2, 3, 4], [7, 8, 9], [1, 2, 3], [5, 6, 7]]
    relevant = [{2, 5}, {7}, {9}, set()]
    return ranked, relevant


def test_topk_metrics_hand_computed():
    ranked, relevant = _toy_ranking()
    # k=3: user A hits item 2 at rank 2 of 2 relevant; B hits at rank 1; C misses.
    assert recall_at_k(ranked, relevant, 3) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert hit_rate_at_k(ranked, relevant, 3) == pytest.approx(2 / 3)
    ndcg_a = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx((ndcg_a + 1.0 + 0.0) / 3)
    # k=1: only user B hits.
    assert recall_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
    assert hit_rate_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
    assert ndcg_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
    # k=4: user A still has one of two relevant items; IDCG over min(|rel|, k) = 2.
    assert recall_at_k(ranked, relevant, 4) == pytest.approx(0.5)


def test_topk_metrics_nan_without_relevant_items():
    assert math.isnan(recall_at_k([[1, 2]], [set()], 2))
    assert math.isnan(hit_rate_at_k([[1, 2]], [set()], 2))
    assert math.isnan(ndcg_at_k([[1, 2]], [set()], 2))


def test_auc_report_warm_cold_split():
    users = np.array([1, 1, 1, 2, 2, 3, 3, 3])
    labels = np.array([1, 0, 0, 1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.2, 0.95, 0.6, 0.4, 0.1, 0.3, 0.5])
    not_cold = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    rep = auc_report(users, labels, scores, not_cold)
    # warm rows: pos 0.9, 0.6 vs neg 0.2, 0.95, 0.4 -> 0.9 beats 2, 0.6 beats 2 -> 4/6
    assert rep["warm"]["auc"] == pytest.approx(4 / 6)
    # warm users: user 1 -> 0.9 vs (0.2, 0.95) = 1/2; user 2 -> 1 ; mean 0.75
    assert rep["warm"]["uauc"] == pytest.approx(0.75)
    assert rep["warm"]["n_rows"] == 5
    # cold rows (user 3): pos 0.1, 0.5 vs neg 0.3 -> 1/2
    assert rep["cold"]["auc"] == pytest.approx(0.5)
    assert rep["cold"]["uauc"] == pytest.approx(0.5)
    assert rep["cold"]["n_rows"] == 3
    assert rep["n_rows"] == 8
    assert rep["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert rep["uauc"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_auc_report_without_cold_rows_is_nan():
    rep = auc_report([1, 1], [1, 0], [0.7, 0.2], [1, 1])
    assert rep["auc"] == 1.0 and rep["warm"]["auc"] == 1.0
    assert math.isnan(rep["cold"]["auc"]) and math.isnan(rep["cold"]["uauc"])
    assert rep["cold"]["n_rows"] == 0
