"""Volume pipeline, task types, losses and the dice metric."""

import numpy as np
import pytest
import torch

from umdbench.api import DataContext, DataError, Record, TaskInfo
from umdbench_brain.encoders import ResUNetEncoder
from umdbench_brain.metrics import DiceMetric, dice_per_case
from umdbench_brain.tasks import ScanClassificationTask, SegmentationTask, VolumePretrainTask, seg_loss
from umdbench_brain.volumes import region_masks, scale_percentiles, stack_modalities

MODS = ["t1", "t1c", "t2", "flair"]


def _record(uid="r0", size=20, drop=None, codes=(0, 1, 2, 4), seed=0):
    rng = np.random.default_rng(seed)
    image = {m: rng.uniform(0, 100, (size,) * 3).astype(np.float32) for m in MODS if m != drop}
    label = np.zeros((size,) * 3, dtype=np.uint8)
    label[4:12, 4:12, 4:12] = codes[2]
    label[6:10, 6:10, 6:10] = codes[3]
    label[7:9, 7:9, 7:9] = codes[1]
    return Record(uid=uid, image=image, text="", label=1, extra={"label": label})


def _ctx(roi=16, labels=("WT", "TC", "ET")):
    model = {"type": "resunet3d", "modalities": MODS, "roi_size": roi}
    return DataContext(model_cfg=model, stage_cfg={}, tokenizer=None, label_names=list(labels), seed=0, cache_dir=None)


def test_missing_modality_is_zeros_and_flagged():
    vol, present = stack_modalities(_record(drop="t1c").image, MODS, "record r0")
    assert present.tolist() == [1, 0, 1, 1] and not vol[1].any() and vol[0].any()


def test_stacking_errors_name_the_record_and_the_fix():
    rec = _record()
    rec.image["t2"] = rec.image["t2"][:-1]
    with pytest.raises(DataError, match=r"record r0: modality volumes differ in shape.*co-registered"):
        stack_modalities(rec.image, MODS, "record r0")
    with pytest.raises(DataError, match=r"model.modalities"):
        stack_modalities({"dwi": np.zeros((4, 4, 4))}, MODS, "record r1")
    with pytest.raises(DataError, match="must be a dict"):
        stack_modalities(np.zeros((4, 4, 4)), MODS, "record r2")


def test_percentile_scaling_undoes_gain_and_offset():
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, (1, 16, 16, 16)).astype(np.float32)
    a = scale_percentiles(base, np.array([1]))
    b = scale_percentiles(3.0 * base + 7.0, np.array([1]))
    assert np.allclose(a, b, atol=1e-5)
    assert a.min() == 0.0 and a.max() == 1.0
    assert np.isclose((a == 0).mean(), 0.05, atol=0.01) and np.isclose((a == 1).mean(), 0.05, atol=0.01)


def test_brats_regions_from_label_codes():
    label = np.array([0, 1, 2, 4], dtype=np.uint8)
    assert region_masks(label, ["WT", "TC", "ET"], "t").tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]
    with pytest.raises(DataError, match="regions"):
        region_masks(label, ["CSF"], "t")


def test_segmentation_dataset_crops_in_training_and_keeps_whole_volumes_for_evaluation():
    task = SegmentationTask()
    recs = [_record("a"), _record("b", drop="flair")]
    train = task.build_dataset(recs, _ctx(), training=True)
    item = train[1]
    assert item["volume"].shape == (4, 16, 16, 16) and item["seg"].shape == (3, 16, 16, 16)
    assert item["present"].tolist() == [1, 1, 1, 0] and not item["volume"][3].any()  # jitter keeps absent at 0
    full = task.build_dataset(recs, _ctx(), training=False)[0]
    assert full["volume"].shape == (4, 20, 20, 20) and int(full["seg"][2].sum()) == 4**3 - 2**3
    batch = task.preprocess(task.collate([full, full]))
    assert batch["seg"].dtype == torch.float32 and batch["volume"].shape == (2, 4, 20, 20, 20)


def test_label_map_remaps_brats2023_enhancing_code():
    rec = _record(codes=(0, 1, 2, 3))
    rec.extra["label_map"] = {3: 4}
    item = SegmentationTask().build_dataset([rec], _ctx(), training=False)[0]
    assert int(item["seg"][2].sum()) == 4**3 - 2**3  # ET found although coded 3


def test_classification_and_pretrain_datasets():
    cls_item = ScanClassificationTask().build_dataset([_record()], _ctx(labels=("LGG", "HGG")), training=True)[0]
    assert cls_item["volume"].shape == (4, 20, 20, 20) and int(cls_item["label"]) == 1
    pre = VolumePretrainTask().build_dataset([_record()], _ctx(), training=True)[0]
    assert set(pre) == {"volume", "present", "index", "crop_origin", "volume_shape", "flips"} and pre[
        "volume"
    ].shape == (4, 16, 16, 16)


def test_seg_loss_prefers_the_right_answer():
    target = torch.zeros(1, 3, 8, 8, 8)
    target[:, :, 2:6, 2:6, 2:6] = 1
    good, bad = (target * 2 - 1) * 8, -(target * 2 - 1) * 8
    assert seg_loss(good, target) < 0.05 < 0.9 < seg_loss(bad, target)


def test_dice_metric_released_empty_rule_and_hd95():
    gt = torch.zeros(3, 1, 10, 10, 10, dtype=torch.bool)
    pred = torch.zeros_like(gt)
    gt[0, 0, 2:6, 2:6, 2:6] = True
    pred[0, 0, 2:6, 2:6, 2:4] = True  # half of case 0
    pred[1, 0, 0, 0, 0] = True  # case 1: empty ground truth, one false voxel -> 0
    # case 2: both empty -> 1
    assert dice_per_case(pred, gt).view(-1).tolist() == pytest.approx([2 * 32 / 96, 0.0, 1.0])
    metric = DiceMetric()
    metric.process({}, [{"seg_logits": pred.float() * 2 - 1, "seg": gt.float()}])
    out = metric.compute_metrics(metric.results)
    assert out["dice"] == pytest.approx(100 * (2 / 3 + 0 + 1) / 3)
    assert out["hd95"] == pytest.approx(2.0)  # only case 0 has both masks; 2 voxels off at the far face
    assert set(out) == {"dice", "dice_r0", "hd95", "hd95_r0"}


def test_dice_metric_names_brats_regions_and_refuses_shape_mismatch():
    metric = DiceMetric(hd95=False)
    metric.process({}, [{"seg_logits": torch.ones(1, 3, 4, 4, 4), "seg": torch.ones(1, 3, 4, 4, 4)}])
    assert metric.compute_metrics(metric.results) == {
        "dice_wt": 100.0,
        "dice_tc": 100.0,
        "dice_et": 100.0,
        "dice": 100.0,
    }
    with pytest.raises(ValueError, match="whole volumes"):
        metric.process({}, [{"seg_logits": torch.ones(1, 3, 4, 4, 4), "seg": torch.ones(1, 3, 4, 4, 5)}])


def test_sliding_window_covers_a_volume_larger_than_the_window():
    cfg = ResUNetEncoder.default_config("tiny") | {"roi_size": 16}
    encoder = ResUNetEncoder(cfg)
    task = SegmentationTask()
    info = TaskInfo(task="segmentation", num_classes=3, label_names=["WT", "TC", "ET"], spec=task)
    head = task.build_head(info, (4, *encoder.feature_channels))
    volume = torch.rand(2, 4, 24, 20, 16)
    with torch.no_grad():
        out = task.sliding_logits(encoder, head, {"volume": volume}, info, {"sw_overlap": 0.5}, 16)
    assert out.shape == (2, 3, 24, 20, 16) and torch.isfinite(out).all()
    with pytest.raises(TypeError, match="channels per scale"):
        task.build_head(info, 64)


def test_dice_per_study_scores_reproduce_the_reported_dice():
    metric = DiceMetric(hd95=False)
    gen = torch.Generator().manual_seed(0)
    for start in (0, 2):  # two batches of two studies, 3 regions on 6^3
        logits = torch.randn(2, 3, 6, 6, 6, generator=gen)
        seg = (torch.rand(2, 3, 6, 6, 6, generator=gen) > 0.6).float()
        seg[1, 2] = 0  # an empty region: scores 1 only if predicted empty
        metric.process({}, [{"seg_logits": logits, "seg": seg, "index": torch.tensor([start + 1, start])}])
    out = metric.compute_metrics(metric.results)
    per = metric.per_example
    assert sorted(per["index"].tolist()) == [0, 1, 2, 3]
    assert per["dice"].mean() * 100 == pytest.approx(out["dice"])
    for region in ("wt", "tc", "et"):
        assert per[f"dice_{region}"].mean() * 100 == pytest.approx(out[f"dice_{region}"])
    assert np.allclose(per["dice"], np.mean([per["dice_wt"], per["dice_tc"], per["dice_et"]], axis=0))
