"""Per-example predictions of an evaluation, kept beside the cell's row.

During evaluation a :class:`PredictionRecorder` sits next to the dataset's metric and keeps, for
every test example (by its ``index`` in the split), what an accuracy needs to be recomputed:
the predicted label, the true label, whether they match and, for VQA, the answer type. The
leaderboard bootstraps its intervals from these (``umdbench.results.predictions``). Task types
whose predictions are not one label per example (retrieval scores, segmentation maps) record
nothing; their rows render without intervals.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from umdbench.results.predictions import PROB, SCORE_PREFIX

__all__ = ["PredictionRecorder", "per_example", "with_metric_scores"]


def per_example(sample: dict) -> dict[str, np.ndarray] | None:
    """The per-example fields of one evaluated batch, or None when its predictions are not one
    label per example (no ``index``, no ``[B, C]`` logits beside a ``[B]`` label)."""
    logits, label, index = sample.get("logits"), sample.get("label"), sample.get("index")
    if not all(isinstance(t, torch.Tensor) for t in (logits, label, index)):
        return None
    label, index = label.view(-1).long(), index.view(-1).long()
    if logits.dim() != 2 or label.numel() != logits.shape[0] or index.numel() != logits.shape[0]:
        return None
    pred = logits.argmax(dim=-1).long()
    out = {
        "index": index.numpy().astype(np.int32),
        "pred": pred.numpy().astype(np.int32),
        "label": label.numpy().astype(np.int32),
        # a label of -1 (answer outside the vocabulary) is always wrong, as in the VQA metric
        "correct": ((pred == label) & (label >= 0)).numpy().astype(np.uint8),
    }
    answer_type = sample.get("answer_type")
    if isinstance(answer_type, torch.Tensor) and answer_type.numel() == label.numel():
        out["answer_type"] = answer_type.view(-1).numpy().astype(np.int8)  # 0 closed, 1 open
    return out


class PredictionRecorder(BaseMetric):
    """A metric that reports nothing and keeps the per-example fields in ``self.arrays`` (sorted
    by ``index``; None when the task's predictions have no per-example label)."""

    # it reports no value, so a prefix renames nothing; set, it keeps mmengine from warning that
    # the recorder has none
    default_prefix = "predictions"

    def __init__(self):
        super().__init__()
        self.arrays: dict[str, np.ndarray] | None = None
        self._usable = True

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            fields = per_example(sample) if self._usable else None
            if fields is None:
                self._usable = False  # one batch without per-example labels: record nothing at all
                continue
            self.results.append(fields)

    def evaluate(self, size: int) -> dict:
        """mmengine's evaluation, except when nothing was recorded on purpose: a task whose
        predictions are not one label per example (segmentation maps, retrieval scores) leaves
        ``results`` empty by design, which mmengine would report as a plugin bug ("got empty
        `self.results`") after every such evaluation. The task's kind is the same on every rank,
        so every rank returns here together (no collective call is skipped on one rank only)."""
        if not self._usable and not self.results:
            self.arrays, self._usable = None, True
            return {}
        return super().evaluate(size)

    def compute_metrics(self, results: list) -> dict[str, float]:
        if not self._usable or not results or len({frozenset(r) for r in results}) != 1:
            self.arrays = None
            return {}
        merged = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
        order = np.argsort(merged["index"], kind="stable")
        self.arrays = {k: v[order] for k, v in merged.items()}
        return {}


def with_metric_scores(arrays: dict[str, np.ndarray] | None, per_example: Any) -> dict[str, np.ndarray] | None:
    """``arrays`` (the recorder's, or None) plus the metric's own per-example values, when the metric
    set ``per_example = {"index": [n], name: [n], ...}`` in ``compute_metrics``: values whose mean x
    100 is that metric (e.g. each study's Dice), stored as ``score__<name>``, and ``prob`` [n, C]
    (each example's class probabilities, which a rank metric such as AUC is recomputed from),
    stored as ``prob``; all sorted by index."""
    if not isinstance(per_example, dict) or "index" not in per_example:
        return arrays
    index = np.asarray(per_example["index"]).astype(np.int64).ravel()
    order = np.argsort(index, kind="stable")
    scores = {
        f"{SCORE_PREFIX}{k}": np.asarray(v, dtype=np.float64).ravel()[order]
        for k, v in per_example.items()
        if k not in ("index", PROB) and len(np.asarray(v).ravel()) == len(index)
    }
    prob = np.asarray(per_example.get(PROB, []), dtype=np.float64)
    if prob.ndim == 2 and len(prob) == len(index):
        scores[PROB] = prob[order]
    if arrays is None:
        return {"index": index[order].astype(np.int32), **scores}
    if not np.array_equal(np.asarray(arrays["index"]).astype(np.int64), index[order]):
        return arrays  # two views of different examples: keep the recorder's, which is never wrong
    return {**arrays, **scores}
