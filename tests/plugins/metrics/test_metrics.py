"""Metric plugins against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from umdbench_plugins.metrics.classification import ClassificationMetric
from umdbench_plugins.metrics.retrieval_recall import RetrievalRecall
from umdbench_plugins.metrics.vqa_accuracy import VQAAccuracy


def _run(metric, batches):
    # the metrics keep one result entry per batch; mmengine's evaluate(size) keeps the first
    # ``size`` entries, so the core passes the dataset length (>= number of batches)
    metric.process(None, batches)
    return metric.evaluate(sum(len(b["label"] if "label" in b else b["score"]) for b in batches))


def test_vqa_accuracy_hand_computed():
    # preds: 0, 1, 2, 0 | labels 0, 0, 2, -1 (not in vocab -> wrong) | types closed, open, open, closed
    batches = [
        {
            "logits": torch.tensor([[1.0, 0, 0], [0, 1, 0]]),
            "label": torch.tensor([0, 0]),
            "answer_type": torch.tensor([0, 1]),
        },
        {
            "logits": torch.tensor([[0.0, 0, 1], [1, 0, 0]]),
            "label": torch.tensor([2, -1]),
            "answer_type": torch.tensor([1, 0]),
        },
    ]
    out = _run(VQAAccuracy(), batches)
    assert out == pytest.approx({"overall": 50.0, "open": 50.0, "closed": 50.0})


def test_vqa_accuracy_unseen_answer_never_right_and_empty_subset_nan():
    # label -1 with a prediction of class 0 must not count as right
    out = _run(
        VQAAccuracy(),
        [
            {
                "logits": torch.tensor([[5.0, 0], [0, 5.0], [0, 5.0]]),
                "label": torch.tensor([-1, 1, 0]),
                "answer_type": torch.tensor([1, 1, 1]),
            }
        ],
    )
    assert out["overall"] == pytest.approx(100 / 3) and out["open"] == pytest.approx(100 / 3)
    assert math.isnan(out["closed"])
    assert VQAAccuracy.default_prefix is None


def _grid(scores):
    s = torch.tensor(scores, dtype=torch.float32)
    ii, tt = torch.meshgrid(torch.arange(s.shape[0]), torch.arange(s.shape[1]), indexing="ij")
    return {"score": s.flatten(), "image_index": ii.flatten(), "text_index": tt.flatten()}


def test_retrieval_recall_hand_computed():
    # rows = images, cols = texts; image i matches text i
    scores = [[3.0, 1, 0], [2, 1, 0], [0, 5, 1]]
    # i2t: img0 rank0 hit; img1: text0 (2) beats 1 -> rank1; img2: text1 (5) beats 1 -> rank1  => R@1 = 1/3
    # t2i: text0 col [3,2,0] rank0; text1 col [1,1,5]: img2 (5) and img0 (1, tie) -> rank2; text2 [0,0,1] rank0 => 2/3
    g = _grid(scores)
    half = len(g["score"]) // 2  # split across two batches, order scrambled
    perm = torch.randperm(len(g["score"]), generator=torch.Generator().manual_seed(0))
    g = {k: v[perm] for k, v in g.items()}
    out = _run(RetrievalRecall(), [{k: v[:half] for k, v in g.items()}, {k: v[half:] for k, v in g.items()}])
    assert out["i2t_r1"] == pytest.approx(100 / 3)
    assert out["t2i_r1"] == pytest.approx(200 / 3)
    for k in ("i2t_r5", "i2t_r10", "t2i_r5", "t2i_r10"):
        assert out[k] == pytest.approx(100.0)


def test_retrieval_recall_ranks_and_ties():
    n = 12
    # text j's score for image i: identity permutation shifted -> image i's match ranks i-th best
    s = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            s[i, j] = -((j - i) % n)  # match (j == i) scores 0, the best of each row; columns differ
    out = _run(RetrievalRecall(), [_grid(s.tolist())])
    assert out["i2t_r1"] == pytest.approx(100.0)
    # constant scores: every match ties with all others -> pessimistic rank n-1 -> no hits
    out = _run(RetrievalRecall(), [_grid(torch.ones(n, n).tolist())])
    assert out["i2t_r10"] == 0.0 and out["t2i_r10"] == 0.0


def test_retrieval_recall_r5_r10():
    n = 20
    s = torch.zeros(n, n)
    for i in range(n):
        # image i: its match is beaten by exactly i other texts (texts 0..i-1 offset) -> rank i
        for j in range(n):
            s[i, j] = 1.0 if j == i else (2.0 if (j - i - 1) % n < i else 0.0)
    out = _run(RetrievalRecall(), [_grid(s.tolist())])
    assert out["i2t_r1"] == pytest.approx(100 * 1 / n)
    assert out["i2t_r5"] == pytest.approx(100 * 5 / n)
    assert out["i2t_r10"] == pytest.approx(100 * 10 / n)


def test_retrieval_recall_requires_every_pair():
    g = _grid([[1.0, 0], [0, 1]])
    with pytest.raises(ValueError, match="pairs have no score"):
        _run(RetrievalRecall(), [{k: v[:3] for k, v in g.items()}])


def test_classification_hand_computed():
    # preds 0,1,1,2 ; labels 0,1,2,2
    logits = torch.tensor([[2.0, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2]])
    out = _run(
        ClassificationMetric(),
        [{"logits": logits[:2], "label": torch.tensor([0, 1])}, {"logits": logits[2:], "label": torch.tensor([2, 2])}],
    )
    assert out["accuracy"] == pytest.approx(75.0)
    # recall: c0 1, c1 1, c2 1/2 ; specificity: c0 1, c1 2/3, c2 1
    assert out["sensitivity"] == pytest.approx(100 * 2.5 / 3, abs=1e-4)
    assert out["specificity"] == pytest.approx(100 * (2 + 2 / 3) / 3, abs=1e-4)
    # one-vs-rest AUC on softmax: c0 1.0; c1 (1 + 0.5 + 1)/3; c2 (0.5 + 0.5 + 1 + 1)/4
    assert out["auc"] == pytest.approx(100 * (1 + 2.5 / 3 + 0.75) / 3, abs=1e-4)


def test_classification_perfect_and_absent_class():
    # 4 classes, class 3 never occurs (neither label nor prediction): excluded from macro averages
    logits = torch.tensor([[3.0, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]])
    out = _run(ClassificationMetric(), [{"logits": logits, "label": torch.tensor([0, 1, 2])}])
    assert out == pytest.approx({"accuracy": 100.0, "auc": 100.0, "sensitivity": 100.0, "specificity": 100.0})
