"""Classification metrics (MELINDA): accuracy, macro AUC (one-vs-rest on softmax), macro
sensitivity (= recall) and macro specificity, in percent.

Inputs per batch (CONTRACT.md): ``logits`` [B, C], ``label`` [B]. Macro averages run over the
classes that occur in the labels or the predictions (as imblearn's / sklearn's macro averaging,
which UMD's EVALLScore uses); the AUC averages over classes that have both positives and negatives
in the labels (a class with no positive has no defined one-vs-rest AUC).

``per_example`` (after ``compute_metrics``, when every batch carried ``index``): each example's
class probabilities (``prob`` [n, C], the softmax the AUC ranks), so the leaderboard can bootstrap
the AUC and test it paired (``umdbench.results.auc``); accuracy's interval comes from the
prediction recorder's ``correct``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from mmengine.evaluator import BaseMetric


def _as_tensor(x: Any) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def classification_scores(logits: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    # imported here: torchmetrics imports every domain it covers (~2 CPU-s, scipy.signal included),
    # which importing this module for its classes (a test collection, the leaderboard) need not pay
    from torchmetrics.functional.classification import (
        binary_auroc,
        multiclass_accuracy,
        multiclass_recall,
        multiclass_specificity,
    )

    num_classes = int(logits.shape[-1])
    prob = torch.softmax(logits.double(), dim=-1)
    pred = prob.argmax(dim=-1)
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[label] = True
    present[pred] = True
    idx = present.nonzero().view(-1)
    # per-class recall/specificity, averaged over the classes present in labels or predictions
    recall = multiclass_recall(pred, label, num_classes=num_classes, average="none", validate_args=False)
    spec = multiclass_specificity(pred, label, num_classes=num_classes, average="none", validate_args=False)
    aucs = []
    for c in range(num_classes):
        target = (label == c).long()
        if 0 < int(target.sum()) < target.numel():
            aucs.append(float(binary_auroc(prob[:, c], target, validate_args=False)))
    return {
        "accuracy": float(multiclass_accuracy(pred, label, num_classes=num_classes, average="micro")) * 100.0,
        "auc": (sum(aucs) / len(aucs) * 100.0) if aucs else float("nan"),
        "sensitivity": float(recall[idx].double().mean()) * 100.0,
        "specificity": float(spec[idx].double().mean()) * 100.0,
    }


class ClassificationMetric(BaseMetric):
    default_prefix = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.per_example: dict | None = None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            record = {
                "logits": _as_tensor(sample["logits"]).double(),
                "label": _as_tensor(sample["label"]).long().view(-1),
            }
            if sample.get("index") is not None:
                record["index"] = _as_tensor(sample["index"]).long().view(-1)
            self.results.append(record)

    def compute_metrics(self, results: list) -> dict[str, float]:
        logits = torch.cat([r["logits"] for r in results])
        label = torch.cat([r["label"] for r in results])
        if (label < 0).any():
            raise ValueError("classification metric: labels must be >= 0 (a -1 label has no class)")
        self.per_example = None
        if all("index" in r for r in results):
            index = torch.cat([r["index"] for r in results])
            self.per_example = {"index": index.numpy(), "prob": torch.softmax(logits, dim=-1).numpy()}
        return classification_scores(logits, label)
