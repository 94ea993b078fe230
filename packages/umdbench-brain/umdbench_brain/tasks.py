"""Volume task types: ``segmentation`` (BraTS regions), ``scan-classification`` (one class per
study) and ``volumes`` (unlabelled crops for pre-training).

Every task type reads the encoder config (``model``) for the channel layout (``modalities``)
and the crop size (``roi_size``), so data and encoder always agree. The data set yields scaled
float32 volumes; nothing needs normalising after the device move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from umdbench import draws
from umdbench.api import DataContext, DataError, Record, TaskInfo, TaskType
from umdbench_brain.volumes import StudyLoader, random_crop, region_masks

__all__ = [
    "VolumeDataset",
    "VolumeForward",
    "SegmentationTask",
    "ScanClassificationTask",
    "VolumePretrainTask",
    "seg_loss",
    "VOLUME_KEYS",
]

VOLUME_KEYS = {
    "volume": "float [B,M,D,H,W] per-channel percentile-scaled to [0,1]; an absent modality is zeros",
    "present": "long [B,M] 1 = the study has this modality",
    "index": "long [B] position of the record in its split",
    "crop_origin": "long [B,3] first voxel of the crop in the study's grid (0 when uncropped; negative where padded)",
    "volume_shape": "long [B,3] the study's grid before cropping (template crops centre it in the template canvas)",
    "flips": "long [B,3] 1 = the crop was flipped along that spatial axis (after cropping)",
}


class VolumeDataset(Dataset):
    """Records -> dicts of tensors. Reads ``Record.image`` ({modality: array or NIfTI path}),
    ``Record.extra["label"]`` (label volume, BraTS codes) remapped by ``extra["label_map"]`` when
    given, its regions the unions of ``extra["region_codes"]`` (``{region: codes}``, else BraTS'),
    and ``Record.label`` (class); file-backed studies are pre-processed and cached on disk by
    :class:`umdbench_brain.volumes.StudyLoader` (``cache_dir``). Training: one random ``roi``-cubed
    crop (when ``crop``), random flips on the three axes and a random intensity scale/shift of +-0.1
    per channel (the released fine-tuning augmentation), drawn from the item's keyed generators
    (:func:`umdbench.draws.item_rng`) so an item is the same at any world size and worker count.
    Evaluation: the whole volume."""

    def __init__(
        self,
        records: list[Record],
        modalities,
        *,
        roi: int,
        training: bool,
        crop: bool,
        seed: int,
        regions=None,
        with_class: bool = False,
        augment: bool = True,
        cache_dir=None,
    ):
        self.records = records
        self.modalities = tuple(modalities)
        self.roi = int(roi)
        self.training = training
        self.crop = crop
        self.regions = list(regions) if regions else None
        self.with_class = with_class
        self.augment = augment and training
        self.seed = int(seed)
        # decoded + pre-processed studies (file-backed records) cached under cache_dir/volumes
        self.studies = StudyLoader(self.modalities, cache_dir)
        # outside a keyed training loader (draws.item_rng is None): a per-process counter gives each
        # draw its own stream, reproducibly per worker
        self._draws = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        volume, present, label = self.studies.load(rec, with_label=self.regions is not None)
        arrays = [volume]
        shape = list(volume.shape[1:])
        origin, flips = [0, 0, 0], [0, 0, 0]
        if self.regions is not None:
            arrays.append(region_masks(label, self.regions, f"record {rec.uid}", rec.extra.get("region_codes")))
        if self.training:
            self._draws += 1
            rng = np.random.default_rng([self.seed, i, self._draws])
            if self.crop:
                arrays, origin = random_crop(arrays, self.roi, draws.item_rng("crop") or rng, with_origin=True)
            if self.augment:
                rng = draws.item_rng("augment") or rng
                for axis in (1, 2, 3):
                    if rng.uniform() < 0.5:
                        arrays = [np.flip(a, axis) for a in arrays]
                        flips[axis - 1] = 1
                gain = rng.uniform(0.9, 1.1, (len(self.modalities), 1, 1, 1)).astype(np.float32)
                shift = rng.uniform(-0.1, 0.1, (len(self.modalities), 1, 1, 1)).astype(np.float32)
                arrays[0] = (arrays[0] * gain + shift) * present[:, None, None, None]
        item = {
            "volume": torch.from_numpy(np.ascontiguousarray(arrays[0], dtype=np.float32)),
            "present": torch.from_numpy(present),
            "index": torch.tensor(i),
            "crop_origin": torch.tensor(origin, dtype=torch.long),
            "volume_shape": torch.tensor(shape, dtype=torch.long),
            "flips": torch.tensor(flips, dtype=torch.long),
        }
        if self.regions is not None:
            item["seg"] = torch.from_numpy(np.ascontiguousarray(arrays[1]))
        if self.with_class:
            if rec.label is None:
                raise DataError(f"record {rec.uid}: no class (Record.label); scan classification needs one.")
            item["label"] = torch.tensor(int(rec.label))
        return item


@dataclass
class VolumeForward:
    """What a volume task type's ``encode`` returns: the encoder's feature maps (shallow to deep),
    the input volume (the segmentation head's full-resolution skip) and the batch's target."""

    features: list
    volume: torch.Tensor
    target: torch.Tensor | None = None


def _modalities(ctx: DataContext) -> list[str]:
    mods = ctx.model_cfg.get("modalities")
    if not mods:
        raise DataError(
            f"encoder {ctx.model_cfg.get('type')!r} names no model.modalities; volume task types need "
            f'the channel order, e.g. --cfg-options \'model.modalities=["t1","t1c","t2","flair"]\'.'
        )
    return list(mods)


class _VolumeTask(TaskType):
    pretrain_task: ClassVar[str | None] = "volumes"

    def preprocess(self, batch: dict) -> dict:
        if "seg" in batch:
            batch["seg"] = batch["seg"].float()
        return batch


class VolumePretrainTask(_VolumeTask):
    """Unlabelled studies: random ``roi_size`` crops (no flips; the strategy masks)."""

    name = "volumes"
    supervised = False
    pretrain_task = None
    batch_keys = dict(VOLUME_KEYS)

    def build_dataset(self, records: list[Record], ctx: DataContext, *, training: bool) -> Any:
        return VolumeDataset(
            records,
            _modalities(ctx),
            roi=ctx.model_cfg["roi_size"],
            training=training,
            crop=True,
            seed=ctx.seed,
            augment=False,
            cache_dir=ctx.cache_dir,
        )


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per (sample, region) soft Dice with squared denominators, averaged (the released loss)."""
    prob = torch.sigmoid(logits).flatten(2)
    target = target.flatten(2)
    inter = (prob * target).sum(-1)
    denom = (prob * prob).sum(-1) + (target * target).sum(-1)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.7, bce_weight: float = 0.3):
    return dice_weight * soft_dice_loss(logits, target) + bce_weight * F.binary_cross_entropy_with_logits(
        logits, target
    )


class SegmentationTask(_VolumeTask):
    """Multi-label region segmentation (sigmoid per region; BraTS WT/TC/ET from the dataset's
    ``label_names()``). Training on random crops; evaluation by sliding-window inference over the
    whole volume (window = ``roi_size``, overlap ``sw_overlap`` = 0.5)."""

    name = "segmentation"
    generic_strategies = False  # its head is a decoder on the encoder's feature maps: seg / seg-tmpl only
    batch_keys = {**VOLUME_KEYS, "seg": "uint8 [B,K,D,H,W] region masks (float after preprocess)"}
    prediction_keys = {"seg_logits": "float [B,K,D,H,W] one logit per region and voxel"}
    metric_keys = ("seg", "index")
    default_metric = "dice"

    def build_dataset(self, records: list[Record], ctx: DataContext, *, training: bool) -> Any:
        return VolumeDataset(
            records,
            _modalities(ctx),
            roi=ctx.model_cfg["roi_size"],
            training=training,
            crop=True,
            seed=ctx.seed,
            regions=ctx.label_names,
            augment=ctx.stage_cfg.get("augment", True),
            cache_dir=ctx.cache_dir,
        )

    def build_head(self, info: TaskInfo, width) -> nn.Module:
        from umdbench_brain.heads import SegDecoder

        if isinstance(width, int):
            raise TypeError(
                "segmentation heads need the encoder's channels per scale: pass width = "
                "(input channels, *encoder.feature_channels), as the `seg` strategy does."
            )
        return SegDecoder(int(width[0]), tuple(int(w) for w in width[1:]), info.num_classes)

    def encode(self, encoder: nn.Module, batch: dict, info: TaskInfo, cfg: dict, *, training: bool) -> Any:
        volume = batch["volume"]
        return VolumeForward(encoder(volume), volume, batch.get("seg"))

    def logits(self, head: nn.Module, features: Any, info: TaskInfo) -> torch.Tensor:
        return head(features.features, features.volume)

    def loss(self, info: TaskInfo, logits: torch.Tensor, target: torch.Tensor | None, cfg: dict) -> torch.Tensor:
        return seg_loss(logits, target, float(cfg.get("dice_weight", 0.7)), float(cfg.get("bce_weight", 0.3)))

    def predict(self, info: TaskInfo, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg_logits": logits}

    def sliding_logits(
        self, encoder: nn.Module, head: nn.Module, batch: dict, info: TaskInfo, cfg: dict, roi: int
    ) -> torch.Tensor:
        """Logits of whole volumes by MONAI's sliding-window inference (gaussian blending off: the
        released evaluation averages windows uniformly)."""
        from monai.inferers import sliding_window_inference

        def window(x: torch.Tensor) -> torch.Tensor:
            return self.logits(head, self.encode(encoder, {"volume": x}, info, cfg, training=False), info)

        return sliding_window_inference(
            batch["volume"],
            roi_size=(roi,) * 3,
            sw_batch_size=int(cfg.get("sw_batch_size", 4)),
            predictor=window,
            overlap=float(cfg.get("sw_overlap", 0.5)),
            mode="constant",
        )


class ScanClassificationTask(_VolumeTask):
    """One class per study (``Record.label``): an MLP with softmax on globally average-pooled deepest
    features (the maintainers' description, BrainMVP issue #9). Input: the whole volume."""

    name = "scan-classification"
    batch_keys = {**VOLUME_KEYS, "label": "long [B] class index"}
    prediction_keys = {"logits": "float [B,C] one score per class"}
    metric_keys = ("label", "index")
    default_metric = "classification"

    def build_dataset(self, records: list[Record], ctx: DataContext, *, training: bool) -> Any:
        return VolumeDataset(
            records,
            _modalities(ctx),
            roi=ctx.model_cfg["roi_size"],
            training=training,
            crop=False,
            seed=ctx.seed,
            with_class=True,
            augment=ctx.stage_cfg.get("augment", True),
            cache_dir=ctx.cache_dir,
        )

    def build_head(self, info: TaskInfo, width) -> nn.Module:
        width = int(width)
        return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, info.num_classes))

    def encode(self, encoder: nn.Module, batch: dict, info: TaskInfo, cfg: dict, *, training: bool) -> Any:
        volume = batch["volume"]
        deepest = encoder(volume)[-1]
        return VolumeForward([deepest.mean(dim=(2, 3, 4))], volume, batch.get("label"))

    def logits(self, head: nn.Module, features: Any, info: TaskInfo) -> torch.Tensor:
        return head(features.features[0])

    def loss(self, info: TaskInfo, logits: torch.Tensor, target: torch.Tensor | None, cfg: dict) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    def predict(self, info: TaskInfo, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": logits}
