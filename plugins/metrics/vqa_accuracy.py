"""VQA exact-match accuracy (overall / open / closed), in percent.

Inputs per batch (CONTRACT.md): ``logits`` [B, C], ``label`` [B] (-1 = the answer is not in the
vocabulary: always wrong), ``answer_type`` [B] (0 = closed, 1 = open). The prediction is the argmax
over the answer vocabulary, as upstream's VQARADScore. A subset with no questions (e.g. "closed" on
VQA-Med-2019, where every question is open) reports NaN.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from mmengine.evaluator import BaseMetric


def _as_tensor(x: Any) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def exact_match_percent(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Percent of rows where ``pred == label``; label -1 counts as wrong. The ratio is taken in
    float32, as torchmetrics' micro accuracy took it before: stored values are unchanged.
    torchmetrics is not imported here: its import (every domain, scipy.signal included) cost each
    training process ~1.4 CPU-s for a one-line count."""
    if label.numel() == 0:
        return float("nan")
    right = ((pred == label) & (label >= 0)).sum()
    return float(right.float() / torch.tensor(label.numel(), dtype=torch.float32)) * 100.0


class VQAAccuracy(BaseMetric):
    default_prefix = None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            logits = _as_tensor(sample["logits"]).float()
            self.results.append(
                {
                    "pred": logits.argmax(dim=-1).long(),
                    "label": _as_tensor(sample["label"]).long().view(-1),
                    "answer_type": _as_tensor(sample["answer_type"]).long().view(-1),
                }
            )

    def compute_metrics(self, results: list) -> dict[str, float]:
        if not results:
            return {"overall": float("nan"), "open": float("nan"), "closed": float("nan")}
        pred = torch.cat([r["pred"] for r in results])
        label = torch.cat([r["label"] for r in results])
        kind = torch.cat([r["answer_type"] for r in results])
        return {
            "overall": exact_match_percent(pred, label),
            "open": exact_match_percent(pred[kind == 1], label[kind == 1]),
            "closed": exact_match_percent(pred[kind == 0], label[kind == 0]),
        }
