"""uniformer3d and monai3d: feature pyramids as declared, the released UniFormer-S geometry (by
parameter count and shape reasoning, no 96^3 forward), the decoders on every pyramid, a CLI run
with uniformer3d, and bad options as one-paragraph errors."""

import re

import pytest
import torch

from umdbench.cli import main
from umdbench_brain.encoders import MonaiEncoder, SwinViTEncoder, UniFormerEncoder
from umdbench_brain.heads import ReconDecoder, SegDecoder

TINY = [
    (UniFormerEncoder, {}),
    (MonaiEncoder, {"arch": "swinunetr"}),
    (MonaiEncoder, {"arch": "unetr"}),
    (MonaiEncoder, {"arch": "basicunet"}),
]
IDS = ["uniformer3d", "monai3d-swinunetr", "monai3d-unetr", "monai3d-basicunet"]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_entry_points_register_both_encoders():
    from umdbench.plugin import get_registries

    reg = get_registries()
    assert reg.encoder.get("uniformer3d") is UniFormerEncoder and reg.encoder.get("monai3d") is MonaiEncoder
    assert reg.encoder.origin("uniformer3d").startswith("entry point umdbench_brain.plugin")


@pytest.mark.parametrize("cls,extra", TINY, ids=IDS)
def test_tiny_pyramids_match_the_declared_channels_and_strides(cls, extra):
    torch.manual_seed(0)
    encoder = cls(cls.default_config("tiny") | extra).eval()
    roi = encoder.roi_size
    with torch.no_grad():
        feats = encoder(torch.rand(2, encoder.in_channels, roi, roi, roi))
    assert len(feats) == len(encoder.feature_channels) == len(encoder.feature_strides)
    for f, ch, stride in zip(feats, encoder.feature_channels, encoder.feature_strides):
        assert tuple(f.shape) == (2, ch, roi // stride, roi // stride, roi // stride)
        assert torch.isfinite(f).all()
    assert encoder.hidden_size == encoder.feature_channels[-1]
    assert list(encoder.feature_strides) == sorted(encoder.feature_strides)  # shallow to deep


@pytest.mark.parametrize("cls,extra", TINY, ids=IDS)
def test_both_decoders_take_each_pyramid_and_train_the_encoder(cls, extra):
    torch.manual_seed(0)
    encoder = cls(cls.default_config("tiny") | extra)
    roi = encoder.roi_size
    x = torch.rand(2, encoder.in_channels, roi, roi, roi)
    seg = SegDecoder(encoder.in_channels, encoder.feature_channels, 3)
    recon = ReconDecoder(encoder.hidden_size, encoder.feature_strides[-1], encoder.in_channels)
    feats = encoder(x)
    logits, rebuilt = seg(feats, x), recon(feats[-1])
    assert logits.shape == (2, 3, roi, roi, roi) and rebuilt.shape == x.shape
    (logits.mean() + rebuilt.mean()).backward()
    # every encoder parameter is reached by the segmentation + reconstruction losses
    unused = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert not unused, unused


def test_uniformer_paper_geometry_is_the_released_uniformer_small():
    cfg = UniFormerEncoder.default_config("paper")
    with torch.device("meta"):  # no memory, no compute
        encoder = UniFormerEncoder(cfg | {"modalities": ["t1"]})  # pre-training: one channel
    # 22.04 M encoder parameters, computed from the released code
    assert 21.9e6 < n_params(encoder) < 22.2e6, n_params(encoder)
    assert encoder.feature_channels == (64, 128, 320, 512)
    assert [len(s) for s in encoder.stages] == [3, 4, 8, 3]
    # 96 -> 48 -> 24 -> 12 -> 6: a 6^3 x 512 deepest map (the released 110,592-d contrastive feature)
    assert [96 // s for s in encoder.feature_strides] == [48, 24, 12, 6]
    assert 512 * (96 // encoder.feature_strides[-1]) ** 3 == 110_592
    # conv (local) stages first, global attention stages with 64-channel heads (5 and 8 heads) last
    kinds = [type(stage[0]).__name__ for stage in encoder.stages]
    assert kinds == ["_LocalBlock", "_LocalBlock", "_GlobalBlock", "_GlobalBlock"]
    assert [encoder.stages[i][0].heads for i in (2, 3)] == [5, 8]
    assert encoder.stages[0][0].mix[1].kernel_size == (5, 5, 5)  # depthwise 5^3 token mixing
    assert encoder.stages[0][0].pos.kernel_size == (3, 3, 3)  # depthwise 3^3 dynamic position encoding
    assert encoder.embeds[0].proj.stride == (2, 2, 2)  # stem stride 2 (the 2-D UniFormer uses 4)


def test_uniformer_paper_forward_costs_what_the_notes_compute():
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):  # shapes only: a 96^3 forward without the compute
        encoder = UniFormerEncoder(UniFormerEncoder.default_config("paper") | {"modalities": ["t1"]}).eval()
        with FlopCounterMode(display=False) as counter:
            feats = encoder(torch.empty(1, 1, 96, 96, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 48, 48, 48),
        (128, 24, 24, 24),
        (320, 12, 12, 12),
        (512, 6, 6, 6),
    ]
    # the released geometry: 63.4 G multiply-accumulates per 96^3 view (17 + 11 + 33 + 2.5 by stage)
    macs = counter.get_total_flops() / 2
    assert 62.0e9 < macs < 64.5e9, macs


def test_uniformer_tiny_is_the_notes_cpu_sizing():
    encoder = UniFormerEncoder(UniFormerEncoder.default_config("tiny"))
    # the tiny sizing: widths 16/32/64/128, depth 1, head_dim 32, ~0.36 M parameters
    assert 0.30e6 < n_params(encoder) < 0.42e6, n_params(encoder)
    assert encoder.feature_strides == (2, 4, 8, 16) and encoder.hidden_size == 128


def test_uniformer_takes_whole_volumes_whose_edges_are_not_crop_sized():
    encoder = UniFormerEncoder(UniFormerEncoder.default_config("tiny")).eval()
    with torch.no_grad():
        feats = encoder(torch.rand(1, 4, 48, 48, 40))  # classification reads whole phantoms
    assert [tuple(f.shape[2:]) for f in feats] == [(24, 24, 20), (12, 12, 10), (6, 6, 5), (3, 3, 2)]


def test_unetr_taps_uniformly_spaced_vit_layers_and_resizes_position_embeddings():
    assert MonaiEncoder.unetr_taps(12) == (3, 6, 9)  # UNETR's hidden_states_out[3], [6], [9]
    tiny = MonaiEncoder(MonaiEncoder.default_config("tiny") | {"arch": "unetr"}).eval()
    assert tiny.skip_layers == MonaiEncoder.unetr_taps(4) == (1, 2, 3)
    with torch.no_grad():
        feats = tiny(torch.rand(1, 4, 48, 48, 64))  # a 3x3x4 patch grid, roi 32 has 2x2x2
    assert [tuple(f.shape[2:]) for f in feats] == [(24, 24, 32), (12, 12, 16), (6, 6, 8), (3, 3, 4)]


def test_monai3d_swinunetr_is_swinvit3d_with_the_same_seed():
    tiny = SwinViTEncoder.default_config("tiny")
    torch.manual_seed(3)
    a = SwinViTEncoder(tiny).eval()
    torch.manual_seed(3)
    b = MonaiEncoder(MonaiEncoder.default_config("tiny")).eval()
    assert b.arch == "swinunetr" and b.feature_channels == a.feature_channels
    assert b.feature_strides == a.feature_strides
    assert list(a.state_dict()) == list(b.state_dict())  # same keys: checkpoints move between the two
    x = torch.rand(1, 4, 32, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(a(x), b(x)))


def test_paper_presets_of_the_monai_archs_build_the_published_widths():
    cfg = MonaiEncoder.default_config("paper")
    with torch.device("meta"):  # UNETR's paper ViT holds ~100 M parameters; shapes are all this needs
        unet = MonaiEncoder(cfg | {"arch": "basicunet"})
        unetr = MonaiEncoder(cfg | {"arch": "unetr"})
    assert unet.feature_channels == (32, 32, 64, 128, 256) and unet.feature_strides == (1, 2, 4, 8, 16)
    assert unetr.feature_channels == (32, 64, 128, 768) and unetr.feature_strides == (2, 4, 8, 16)
    assert len(unetr.vit.blocks) == 12 and unetr.skip_layers == (3, 6, 9)
    # SwinUNETR's BraTS setting: feature size 48, doubling over the patch embedding and 4 stages
    assert cfg["swinunetr"]["feature_size"] == 48 and len(cfg["swinunetr"]["depths"]) == 4


@pytest.mark.parametrize(
    "cls,cfg,match",
    [
        (UniFormerEncoder, {"roi_size": 24}, r"roi_size=24 must be a multiple of 16.*model\.roi_size"),
        (UniFormerEncoder, {"head_dim": 48}, r"not multiples of head_dim=48"),
        (UniFormerEncoder, {"depths": [1, 1, 1]}, r"equally long"),
        (MonaiEncoder, {"arch": "vnet"}, r"arch='vnet' is not one of swinunetr, unetr, basicunet"),
        (MonaiEncoder, {"arch": "swinunetr", "roi_size": 48}, r"multiple of 32"),
        (MonaiEncoder, {"arch": "unetr", "roi_size": 40}, r"multiple of 16"),
    ],
)
def test_bad_options_are_refused(cls, cfg, match):
    with pytest.raises(ValueError, match=match):
        cls(cls.default_config("tiny") | cfg)


# the CLI, as test_brain_e2e runs it: small phantoms, 16^3 crops, a handful of steps
SMALL = [
    "data.num_workers=0",
    "data.eval_batch_size=6",
    "model.roi_size=16",
    "dataset.options.canvas=32",
    "dataset.options.n_train=4",
    "dataset.options.n_val=1",
    "dataset.options.n_test=2",
]


def test_cli_scratch_segmentation_with_uniformer3d_completes(tmp_path, capsys):
    code = main(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            "seg",
            "--dataset",
            "brainsynth",
            "--encoder",
            "uniformer3d",
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            *SMALL,
            "tune.0.train.max_iters=3",
            "tune.0.train.checkpoint_interval=3",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    line = re.search(r"result: .*", out.out + out.err).group(0)
    metrics = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+|nan)", line)}
    assert {"dice", "dice_wt", "dice_tc", "dice_et"} <= set(metrics)
    assert 0.0 <= metrics["dice"] <= 100.0


@pytest.mark.parametrize(
    "encoder,options,words",
    [
        ("uniformer3d", ["model.roi_size=24"], ["uniformer3d", "roi_size=24", "multiple of 16", "model.roi_size"]),
        ("monai3d", ["model.arch=vnet"], ["monai3d", "vnet", "model.arch"]),
    ],
)
def test_cli_bad_encoder_option_is_one_paragraph_exit_2(tmp_path, capsys, encoder, options, words):
    code = main(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            "seg",
            "--dataset",
            "brainsynth",
            "--encoder",
            encoder,
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            *SMALL,
            *options,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("umdbench: error:") and "\n" not in err and "Traceback" not in err, err
    assert all(w in err for w in words), err
