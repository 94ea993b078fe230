"""region-sensitivity: the share of each region's voxels the segmentation finds, per region."""

from typing import Any, Sequence

import torch
from mmengine.evaluator import BaseMetric

from umdbench_brain.kit import region_names


class RegionSensitivity(BaseMetric):
    """Voxel sensitivity (recall, TP / (TP + FN)) of each study and region, in percent: a voxel is
    predicted in a region when its logit is > 0. A study whose region is empty scores 100 (no voxel
    to miss). ``sensitivity_<region>`` averages the studies (regions named as by ``dice``:
    wt/tc/et for BraTS), ``sensitivity`` the regions. Each study's value is kept in
    ``per_example`` so leaderboards bootstrap intervals over studies.

    Inputs per sample (``umdbench_brain.kit.METRIC_INPUTS["segmentation"]``): ``seg_logits``
    [B,K,D,H,W], ``seg`` [B,K,D,H,W] and ``index`` [B]."""

    default_prefix = None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = (sample["seg_logits"] > 0).flatten(2)
            gt = (sample["seg"] > 0.5).flatten(2)
            found = (pred & gt).sum(-1).double()
            total = gt.sum(-1).double()
            sens = torch.where(total == 0, torch.ones_like(total), found / total.clamp_min(1))
            self.results.append({"sens": sens, "index": sample["index"].view(-1).long()})

    def compute_metrics(self, results: list) -> dict:
        sens = torch.cat([r["sens"] for r in results])  # [studies, K]
        names = region_names(sens.shape[1])
        out = {f"sensitivity_{n}": float(sens[:, i].mean()) * 100.0 for i, n in enumerate(names)}
        out["sensitivity"] = float(sens.mean()) * 100.0
        self.per_example = {
            "index": torch.cat([r["index"] for r in results]).numpy(),
            "sensitivity": sens.mean(1).numpy(),
            **{f"sensitivity_{n}": sens[:, i].numpy() for i, n in enumerate(names)},
        }
        return out
