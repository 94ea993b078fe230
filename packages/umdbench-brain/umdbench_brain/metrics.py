"""``dice``: per-region Dice (%) with the released empty rule, plus HD95 (voxels) through MONAI.

Inputs per batch: ``seg_logits`` [B,K,...] (a voxel is predicted in a region when its logit > 0,
i.e. probability > 0.5) and ``seg`` [B,K,...] (ground-truth masks).

* Dice per case and region; an empty ground truth scores 1 when the prediction is empty too and 0
  otherwise (BrainMVP's released metric; MONAI's DiceMetric would give NaN). Averaged over cases,
  then over regions for ``dice``.
* HD95 per case and region where both masks are non-empty (undefined otherwise), averaged over
  those cases; ``hd95`` averages the regions that have any. Distances in voxels.

``per_example`` (after ``compute_metrics``): each study's Dice, overall and per region, by ``index``.

Region names: the dataset's label names, lower-cased, when the evaluation hands them over
(``dataset_meta["label_names"]``, K of them: ``dice_wt`` for BraTS, ``dice_gm`` for MRBrainS13,
``dice_infarct`` for ISLES22); without them, with K = 3 the BraTS order WT, TC, ET, else ``dice_r0`` ...
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch
from mmengine.evaluator import BaseMetric

__all__ = ["DiceMetric", "dice_per_case"]

BRATS_REGIONS = ("wt", "tc", "et")


def dice_per_case(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """[B,K] Dice of boolean masks [B,K,...]; empty ground truth and prediction score 1."""
    pred, gt = pred.flatten(2), gt.flatten(2)
    inter = (pred & gt).sum(-1).double()
    total = pred.sum(-1).double() + gt.sum(-1).double()
    return torch.where(total == 0, torch.ones_like(total), 2.0 * inter / total.clamp_min(1))


def hd95_per_case(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """[B,K] 95th-percentile Hausdorff distance; NaN where either mask is empty."""
    from monai.metrics import compute_hausdorff_distance

    out = torch.full(pred.shape[:2], math.nan, dtype=torch.float64)
    both = pred.flatten(2).any(-1) & gt.flatten(2).any(-1)
    for b, k in both.nonzero().tolist():
        with warnings.catch_warnings():  # MONAI 1.5-1.6 warns about an argument it passes to itself
            warnings.simplefilter("ignore", FutureWarning)
            out[b, k] = float(
                compute_hausdorff_distance(
                    pred[b : b + 1, k : k + 1].float(),
                    gt[b : b + 1, k : k + 1].float(),
                    include_background=True,
                    percentile=95,
                )
            )
    return out


class DiceMetric(BaseMetric):
    default_prefix = None

    def __init__(self, hd95: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.hd95 = hd95

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample["seg_logits"] > 0
            gt = sample["seg"] > 0.5
            if pred.shape != gt.shape:
                raise ValueError(
                    f"dice metric: prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} "
                    f"differ in shape; the strategy must predict whole volumes."
                )
            entry = {"dice": dice_per_case(pred, gt)}
            if "index" in sample:  # the study's position in the split (per-study scores)
                entry["index"] = sample["index"].view(-1).long()
            if self.hd95:
                entry["hd95"] = hd95_per_case(pred, gt)
            self.results.append(entry)

    def region_names(self, k: int) -> tuple[str, ...]:
        given = list((getattr(self, "dataset_meta", None) or {}).get("label_names") or [])
        if len(given) == k and all(isinstance(n, str) and n for n in given):
            return tuple(n.lower() for n in given)
        return BRATS_REGIONS if k == 3 else tuple(f"r{i}" for i in range(k))

    def compute_metrics(self, results: list) -> dict[str, float]:
        dice = torch.cat([r["dice"] for r in results])
        k = dice.shape[1]
        names = self.region_names(k)
        out = {f"dice_{n}": float(dice[:, i].mean()) * 100.0 for i, n in enumerate(names)}
        out["dice"] = float(dice.mean(0).mean()) * 100.0
        # each study's Dice (a fraction; its mean x 100 is the metric): the leaderboard's intervals
        # bootstrap over test studies from these. HD95 is not a mean over every study, so it has none.
        self.per_example = None
        if all("index" in r for r in results):
            index = torch.cat([r["index"] for r in results])
            self.per_example = {
                "index": index.numpy(),
                "dice": dice.mean(1).numpy(),
                **{f"dice_{n}": dice[:, i].numpy() for i, n in enumerate(names)},
            }
        if self.hd95 and all("hd95" in r for r in results):
            hd = torch.cat([r["hd95"] for r in results])
            per_region = [
                float(hd[:, i][~hd[:, i].isnan()].mean()) if (~hd[:, i].isnan()).any() else math.nan for i in range(k)
            ]
            for n, v in zip(names, per_region):
                out[f"hd95_{n}"] = v
            defined = [v for v in per_region if not math.isnan(v)]
            out["hd95"] = sum(defined) / len(defined) if defined else math.nan
        return out
