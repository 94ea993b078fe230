"""Encoders (feature maps as declared), the segmentation decoder, and the strategies' wiring."""

import pytest
import torch

from umdbench.api import TaskInfo
from umdbench.errors import ConfigError
from umdbench_brain.encoders import ResUNetEncoder, SwinViTEncoder
from umdbench_brain.strategies import MAE3D, ClsTune, SegTune
from umdbench_brain.tasks import ScanClassificationTask, SegmentationTask


@pytest.mark.parametrize("cls", [ResUNetEncoder, SwinViTEncoder])
def test_tiny_encoders_return_declared_feature_maps(cls):
    encoder = cls.from_config(cls.default_config("tiny"))
    x = torch.rand(1, encoder.in_channels, 32, 32, 32)
    feats = encoder(x)
    assert [f.shape[1] for f in feats] == list(encoder.feature_channels)
    assert [32 // f.shape[-1] for f in feats] == list(encoder.feature_strides)
    assert encoder.hidden_size == encoder.feature_channels[-1]


def test_paper_preset_builds_the_released_unet_widths():
    encoder = ResUNetEncoder(ResUNetEncoder.default_config("paper"))
    assert encoder.feature_channels == (32, 64, 128, 256) and encoder.roi_size == 96
    assert [len(s) for s in encoder.stages] == [1, 2, 2, 4]


def test_roi_size_must_fit_the_encoder_strides():
    with pytest.raises(ValueError, match="multiple of 32"):
        SwinViTEncoder(SwinViTEncoder.default_config("tiny") | {"roi_size": 48})


def _seg_info():
    return TaskInfo(task="segmentation", num_classes=3, label_names=["WT", "TC", "ET"], spec=SegmentationTask())


def test_seg_strategy_trains_encoder_and_head_and_predicts_whole_volumes():
    encoder = ResUNetEncoder(ResUNetEncoder.default_config("tiny") | {"roi_size": 16})
    cfg = SegTune.default_config("tiny")
    strategy = SegTune(encoder, cfg, _seg_info())
    batch = {
        "volume": torch.rand(2, 4, 16, 16, 16),
        "seg": (torch.rand(2, 3, 16, 16, 16) > 0.8).float(),
        "present": torch.ones(2, 4, dtype=torch.long),
    }
    loss = strategy(batch)["loss_task"]
    loss.backward()
    assert strategy.encoder.stages[0][0].conv1.conv.weight.grad.abs().sum() > 0
    assert strategy.param_group_of("head.out.conv.conv.weight") == "head"
    with torch.no_grad():
        out = strategy.predict({"volume": torch.rand(1, 4, 24, 24, 24)})
    assert out["seg_logits"].shape == (1, 3, 24, 24, 24)
    assert any("deep supervision" in d for d in SegTune.deviations(cfg))


def test_strategies_refuse_the_other_task():
    encoder = ResUNetEncoder(ResUNetEncoder.default_config("tiny"))
    with pytest.raises(ConfigError, match="cls: scan-classification"):
        ClsTune(encoder, ClsTune.default_config("tiny"), _seg_info())
    cls_info = TaskInfo(
        task="scan-classification", num_classes=2, label_names=["LGG", "HGG"], spec=ScanClassificationTask()
    )
    strategy = ClsTune(encoder, ClsTune.default_config("tiny"), cls_info)
    logits = strategy.predict({"volume": torch.rand(2, 4, 20, 20, 20)})["logits"]
    assert logits.shape == (2, 2)


def test_mae3d_masks_exact_blocks_and_ignores_absent_modalities():
    encoder = ResUNetEncoder(ResUNetEncoder.default_config("tiny") | {"roi_size": 16})
    mae = MAE3D(encoder, MAE3D.default_config("tiny"))
    mask = mae.block_mask(3, (16, 16, 16), "cpu")
    assert mask.shape == (3, 1, 16, 16, 16)
    assert mask[:, 0, ::4, ::4, ::4].flatten(1).sum(1).tolist() == [48.0] * 3  # 0.75 x 64 blocks each
    assert torch.equal(
        mask, mask[:, :, ::4, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    )  # whole blocks
    volume = torch.rand(2, 4, 16, 16, 16)
    present = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]])
    seen = {}
    mae.decoder.register_forward_hook(lambda m, i, o: seen.update(recon=o.detach()))
    torch.manual_seed(0)
    loss = mae({"volume": volume, "present": present})["loss_rec"]
    torch.manual_seed(0)
    mask = mae.block_mask(2, (16, 16, 16), "cpu")  # the same draw as inside forward
    weight = mask * present[:, :, None, None, None]
    expected = ((seen["recon"] - volume) ** 2 * weight).sum() / weight.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)  # masked voxels of present channels only
    loss.backward()
    assert torch.isfinite(loss) and encoder.stages[-1][0].conv1.conv.weight.grad is not None
    with pytest.raises(ValueError, match="must divide"):
        MAE3D(encoder, MAE3D.default_config("tiny") | {"block_size": 5})
