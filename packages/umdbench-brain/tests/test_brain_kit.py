"""umdbench_brain.kit, the 3-D author kit: every exported name exists, the batch contract it states
is what the task types' datasets yield, every volume encoder keeps the pyramid contract, and the
test helpers build a working encoder, strategy and batch."""

import numpy as np
import pytest
import torch
from torch import nn

from umdbench.api import DataContext, Record
from umdbench_brain import kit


def test_every_exported_name_exists():
    missing = [n for n in kit.__all__ if not hasattr(kit, n)]
    assert not missing and len(set(kit.__all__)) == len(kit.__all__)


def _record(size=20, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros((size,) * 3, dtype=np.uint8)
    label[4:12, 4:12, 4:12] = 2
    label[6:10, 6:10, 6:10] = 4
    image = {m: rng.uniform(0, 100, (size,) * 3).astype(np.float32) for m in kit.BRATS_MODALITIES if m != "t2"}
    return Record(uid="r0", image=image, text="", label=1, extra={"label": label})


@pytest.mark.parametrize("task", list(kit.VOLUME_BATCH_KEYS))
def test_the_batch_contract_is_what_each_task_type_yields(task):
    spec = {c.name: c for c in (kit.VolumePretrainTask, kit.SegmentationTask, kit.ScanClassificationTask)}[task]()
    labels = {"segmentation": ["WT", "TC", "ET"], "scan-classification": ["LGG", "HGG"]}.get(task, [])
    ctx = DataContext(
        model_cfg={"type": "resunet3d", "modalities": kit.BRATS_MODALITIES, "roi_size": 16},
        stage_cfg={},
        tokenizer=None,
        label_names=labels,
        seed=0,
        cache_dir=None,
    )
    for training in (True, False):
        dataset = spec.build_dataset([_record()], ctx, training=training)
        assert set(dataset[0]) == set(kit.VOLUME_BATCH_KEYS[task]), (task, training)
    assert set(kit.tiny_volume_batch(task)) == set(kit.VOLUME_BATCH_KEYS[task])


@pytest.mark.parametrize(
    "encoder, overrides",
    [
        ("resunet3d", {}),
        ("swinvit3d", {}),
        ("uniformer3d", {}),
        ("monai3d", {"arch": "unetr"}),
        ("monai3d", {"arch": "basicunet"}),
    ],
)
def test_every_volume_encoder_keeps_the_pyramid_contract(encoder, overrides):
    enc = kit.tiny_volume_encoder(encoder, roi=32, **overrides)
    assert isinstance(enc, kit.VolumeEncoder) and enc.family in kit.VOLUME_ENCODERS
    maps = kit.check_pyramid(enc)
    assert maps[-1].shape[1] == enc.hidden_size


def test_check_pyramid_says_what_an_encoder_gets_wrong():
    class Wrong(kit.VolumeEncoder):
        name = "wrong3d"
        presets = {"tiny": {"modalities": kit.BRATS_MODALITIES, "roi_size": 16}}

        def __init__(self, cfg):
            super().__init__(cfg)
            self.conv = nn.Conv3d(self.in_channels, 8, 3, stride=2, padding=1)
            self.feature_channels, self.feature_strides, self.hidden_size = (8,), (1,), 8  # stride is 2

        def forward(self, volume):
            return [self.conv(volume)]

    with pytest.raises(AssertionError, match=r"map 0 has shape \(1, 8, 8, 8, 8\), declared \(1, 8, 16, 16, 16\)"):
        kit.check_pyramid(Wrong(Wrong.default_config("tiny")))


def test_tiny_strategies_train_and_predict_through_the_contract():
    seg = kit.tiny_volume_strategy("tune:seg")
    assert isinstance(seg, kit.VolumeTune) and isinstance(seg.head, kit.SegDecoder)
    batch = kit.tiny_volume_batch("segmentation")
    loss = seg(batch)["loss_task"]
    loss.backward()
    seg.eval()
    with torch.no_grad():
        out = seg.predict(batch)
    assert set(out) == set(kit.PREDICTION_KEYS["segmentation"]) and out["seg_logits"].shape == batch["seg"].shape
    metric = kit.DiceMetric(hd95=False)
    sample = {**out, **{k: batch[k] for k in kit.METRIC_INPUTS["segmentation"] if k in batch}}
    assert set(sample) == set(kit.METRIC_INPUTS["segmentation"])
    metric.process({}, [sample])
    assert set(metric.compute_metrics(metric.results)) <= set(kit.DICE_METRIC_KEYS)
    cls = kit.tiny_volume_strategy(kit.ClsTune)
    assert cls.task.label_names == ["LGG", "HGG"]
    assert torch.isfinite(cls(kit.tiny_volume_batch("scan-classification"))["loss_task"])
    mae = kit.tiny_volume_strategy("pretrain:mae3d", mask_ratio=0.5)
    assert mae.mask_ratio == 0.5 and torch.isfinite(mae(kit.tiny_volume_batch("volumes"))["loss_rec"])


def test_region_names_follow_the_dice_metric():
    assert kit.region_names(3) == ("wt", "tc", "et") and kit.region_names(2) == ("r0", "r1")
    assert [k for k in kit.DICE_METRIC_KEYS if k.startswith("dice_")] == [f"dice_{r}" for r in kit.region_names(3)]
    assert set(kit.SEG_METRICS) <= set(kit.DICE_METRIC_KEYS) and set(kit.LOWER_IS_BETTER) <= set(kit.SEG_METRICS)
    from umdbench_brain.plugin import SEG_METRICS, SUITES

    assert kit.SEG_METRICS == SEG_METRICS
    # a suite that shows the Dice columns (brain-label-efficiency also shows accuracy/AUC) bolds the least hd95
    with_seg = [s for s in SUITES.values() if set(SEG_METRICS) <= set(s["metrics"])]
    assert with_seg and all(s["lower_is_better"] == kit.LOWER_IS_BETTER for s in with_seg)
    assert all("lower_is_better" not in s for s in SUITES.values() if s not in with_seg)  # brain-cls
