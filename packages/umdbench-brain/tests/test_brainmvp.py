"""BrainMVP, recomputed by hand on tiny tensors: block masks, template crop positions, the two
views, each loss term, the phases, the template hand-off into fine-tuning and template mixing."""

import math

import numpy as np
import pytest
import torch

from umdbench import draws
from umdbench.api import TaskInfo
from umdbench.errors import ConfigError
from umdbench.run.build_strategy import artifact_state, carry_over_heads
from umdbench_brain.brainmvp import BrainMVP, ClsTemplateTune, SegTemplateTune
from umdbench_brain.encoders import ResUNetEncoder
from umdbench_brain.tasks import ScanClassificationTask, SegmentationTask, seg_loss
from umdbench_brain.templates import ModalityTemplates, block_mask, info_nce

R = 8  # crop edge
BLOCK = 4


def encoder(roi=R):
    return ResUNetEncoder(
        ResUNetEncoder.default_config("tiny") | {"roi_size": roi, "channels": [4, 8], "blocks": [1, 1]}
    )


def mvp_cfg(**over):
    cfg = BrainMVP.default_config("tiny") | {"block_size": BLOCK, "template_canvas": [12, 12, 12]}
    return cfg | over


def blocks_of(v):
    """[D,H,W] -> list of the flattened BLOCK-cubed blocks, in grid order."""
    n = v.shape[0] // BLOCK
    return [
        v[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK, k * BLOCK : (k + 1) * BLOCK].flatten()
        for i in range(n)
        for j in range(n)
        for k in range(n)
    ]


def test_block_mask_masks_whole_blocks_at_the_released_rate():
    mask = block_mask(2, (96, 96, 96), 8, 0.8, "cpu")
    grid = mask[:, 0, ::8, ::8, ::8]
    # released: 12^3 = 1728 blocks, keep floor(0.2 x 1728) = 345 and mask the other 1383
    assert grid.flatten(1).sum(1).tolist() == [1728 - 345] * 2
    for b in range(2):
        for blk in blocks_of(mask[b, 0])[:200]:
            assert blk.min() == blk.max()  # constant within a block
    assert not torch.equal(mask[0], mask[1])  # each sample draws its own mask
    tiny = block_mask(1, (8, 8, 8), 4, 0.875, "cpu")
    assert tiny[0, 0, ::4, ::4, ::4].sum().item() == 8 - math.floor(0.125 * 8)


def test_template_crop_reads_the_centred_canvas_position_with_zero_padding_and_flips():
    canvas = (12, 10, 8)
    t = ModalityTemplates(["a", "b"], canvas, trainable=False, normalise=False)
    d, h, w = np.meshgrid(np.arange(12), np.arange(10), np.arange(8), indexing="ij")
    code = torch.from_numpy(d * 10000 + h * 100 + w + 1).float()  # each voxel names its position (+1: 0 = outside)
    t.weight.copy_(torch.stack([code, -code]))
    # a study of grid (8, 8, 8) sits at offset ((12-8)//2, (10-8)//2, (8-8)//2) = (2, 1, 0) in the canvas
    start = torch.tensor([[1, 2, 3]]) + torch.tensor([[2, 1, 0]])
    crop = t.crop(start, (4, 4, 4))
    assert crop.shape == (1, 2, 4, 4, 4)
    assert crop[0, 0, 0, 0, 0].item() == 3 * 10000 + 3 * 100 + 3 + 1
    assert crop[0, 0, 3, 3, 3].item() == 6 * 10000 + 6 * 100 + 6 + 1 and crop[0, 1, 3, 3, 3].item() == -60607
    # a start two voxels before the canvas: the first two planes read zero
    edge = t.crop(torch.tensor([[-2, 0, 0]]), (4, 4, 4))
    assert edge[0, 0, :2].abs().sum() == 0 and edge[0, 0, 2, 0, 0].item() == 1
    flipped = t.crop(start, (4, 4, 4), torch.tensor([[0, 0, 1]]))
    assert torch.equal(flipped[0, 0, :, :, 0], crop[0, 0, :, :, 3])
    with pytest.raises(ValueError, match="raise template_canvas"):
        t.crop(torch.tensor([[40, 0, 0]]), (4, 4, 4))


def test_templates_are_min_max_normalised_per_modality_when_read():
    t = ModalityTemplates(["a", "b"], (2, 2, 2), trainable=True, eps=1e-9)
    with torch.no_grad():
        t.weight[0] = torch.arange(8.0).view(2, 2, 2)  # min 0, max 7
        t.weight[1] = 3.0  # constant: (3 - 3) / (0 + eps) = 0
    norm = t.normalised()
    assert torch.allclose(norm[0], torch.arange(8.0).view(2, 2, 2) / 7.0)
    assert norm[1].abs().sum() == 0


def test_info_nce_matches_a_hand_computed_symmetric_loss():
    torch.manual_seed(0)
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    got = info_nce(a, b, 0.5).item()
    na = [[v / math.sqrt(sum(u * u for u in x)) for v in x] for x in a.tolist()]
    nb = [[v / math.sqrt(sum(u * u for u in x)) for v in x] for x in b.tolist()]
    sim = [[sum(p * q for p, q in zip(x, y)) / 0.5 for y in nb] for x in na]
    rows = [-sim[i][i] + math.log(sum(math.exp(s) for s in sim[i])) for i in range(3)]
    cols = [-sim[i][i] + math.log(sum(math.exp(sim[j][i]) for j in range(3))) for i in range(3)]
    assert got == pytest.approx(0.5 * (sum(rows) / 3 + sum(cols) / 3), rel=1e-5)


def _mvp_batch():
    torch.manual_seed(1)
    vol = torch.rand(3, 4, R, R, R) + torch.arange(4.0).view(1, 4, 1, 1, 1) * 10  # modality c lies in [10c, 10c+1)
    present = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0]])
    vol = vol * present[:, :, None, None, None]
    return {
        "volume": vol,
        "present": present,
        "crop_origin": torch.tensor([[0, 1, 2], [2, 2, 2], [-1, 0, 3]]),
        "volume_shape": torch.tensor([[10, 10, 10]] * 3),
    }


def _capture(strategy):
    seen = {}
    strategy.encoder.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].detach().clone()))
    strategy.encoder.register_forward_hook(lambda m, args, out: seen.update(deepest=out[-1].detach()))
    strategy.decoder.register_forward_hook(lambda m, args, out: seen.update(recon=out.detach()))
    return seen


def test_views_and_every_loss_term_recomputed_by_hand():
    # the released contrastive head (flattened deepest map, no projection, temperature 1), from step 0
    s = BrainMVP(
        encoder(), mvp_cfg(contrast_start_frac=0.0, projection="none", contrast_features="flatten", temperature=1.0)
    )
    torch.manual_seed(3)
    with torch.no_grad():
        s.templates.weight.copy_(torch.rand_like(s.templates.weight) * 4 - 2)
    tmpl_norm = []
    for c in range(4):  # min-max by hand, per modality
        w = s.templates.weight[c].detach()
        tmpl_norm.append((w - w.min()) / (w.max() - w.min() + 1e-9))
    batch = _mvp_batch()
    seen = _capture(s)
    out = s(batch)
    assert set(out) == {"loss_template", "loss_cross", "loss_contrast"}
    x, recon, deepest = seen["x"], seen["recon"], seen["deepest"]
    assert x.shape == (6, 4, R, R, R)
    n_masked = 8 - math.floor(0.2 * 8)
    targets = []
    for b in range(3):
        live = [c for c in range(4) if x[b, c].abs().sum() > 0]
        assert len(live) == 1 and batch["present"][b, live[0]] == 1  # one present modality, in its own channel
        m = live[0]
        assert x[3 + b, m].abs().sum() > 0 and x[3 + b].abs().sum() == x[3 + b, m].abs().sum()  # same slot in B
        target = batch["volume"][b, m]
        targets.append(target)
        # the canvas position: crop origin + (12 - 10) // 2 = origin + 1
        o = (batch["crop_origin"][b] + 1).tolist()
        tm = torch.nn.functional.pad(tmpl_norm[m], (R,) * 6)[
            o[0] + R : o[0] + 2 * R, o[1] + R : o[1] + 2 * R, o[2] + R : o[2] + 2 * R
        ]
        view_a, view_b = blocks_of(x[b, m]), blocks_of(x[3 + b, m])
        tgt, tpl = blocks_of(target), blocks_of(tm)
        a_kinds = [
            "keep" if torch.equal(va, t) else "tmpl" if torch.allclose(va, p) else "?"
            for va, t, p in zip(view_a, tgt, tpl)
        ]
        assert a_kinds.count("tmpl") == n_masked and "?" not in a_kinds
        others = [c for c in range(4) if c != m and batch["present"][b, c]]
        b_kinds = []
        for vb, t, p in zip(view_b, tgt, tpl):
            if torch.equal(vb, t):
                b_kinds.append("keep")
            else:  # filled from another present modality (values in [10c, 10c+1)), or the template if none
                filler = int(vb.min().item() // 10)
                b_kinds.append("tmpl" if not others and torch.allclose(vb, p) else filler if filler in others else "?")
        assert len(b_kinds) - b_kinds.count("keep") == n_masked and "?" not in b_kinds
        assert len({k for k in b_kinds if k != "keep"}) == 1  # one filler modality per study
    target = torch.stack(targets)[:, None]
    assert out["loss_template"].item() == pytest.approx(10 * ((recon[:3] - target) ** 2).mean().item(), rel=1e-5)
    assert out["loss_cross"].item() == pytest.approx(((recon[3:] - target) ** 2).mean().item(), rel=1e-5)
    za = deepest[:3].flatten(1)
    zb = deepest[3:].flatten(1)
    za, zb = za / za.norm(dim=1, keepdim=True), zb / zb.norm(dim=1, keepdim=True)
    logits = za @ zb.t()
    lse_r = torch.logsumexp(logits, 1)
    lse_c = torch.logsumexp(logits, 0)
    expected = 0.5 * ((lse_r - logits.diag()).mean() + (lse_c - logits.diag()).mean())
    assert out["loss_contrast"].item() == pytest.approx(expected.item(), rel=1e-4)
    sum(out.values()).backward()
    grad = s.templates.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # templates learn through the voxels they fill


def test_phases_contrast_start_and_template_only_second_view():
    s = BrainMVP(
        encoder(),
        mvp_cfg(
            contrast_start_frac=0.5,
            template_only_frac=0.2,
            train={**BrainMVP.default_config("tiny")["train"], "max_iters": 10},
        ),
    )
    with torch.no_grad():
        s.templates.weight.copy_(torch.rand_like(s.templates.weight))
    batch = _mvp_batch()
    seen = _capture(s)
    assert "loss_contrast" not in s(batch)  # step 0 < 5
    for b in range(3):  # template-only phase (step 0 < 2): view B's filled blocks are template values in [0, 1],
        m = x_slot(seen["x"][3 + b])  # never another modality's (which lie in [10c, 10c + 1))
        for vb, t in zip(blocks_of(seen["x"][3 + b, m]), blocks_of(batch["volume"][b, m])):
            assert torch.equal(vb, t) or vb.max() <= 1.0 + 1e-6
    s.steps_done.fill_(5)
    assert "loss_contrast" in s(batch)
    for _ in range(2):
        s.after_optimizer_step()
    assert int(s.steps_done) == 7 and not s.template_only()


def x_slot(x):
    return next(c for c in range(x.shape[0]) if x[c].abs().sum() > 0)


def test_ablation_weights_drop_views_and_check_config_names_bad_options():
    s = BrainMVP(encoder(), mvp_cfg(w_template=0.0, w_contrast=0.0))
    out = s(_mvp_batch())
    assert set(out) == {"loss_cross"}
    for bad, match in [
        ({"mask_rate": 1.0}, "mask_rate"),
        ({"projection": "linear"}, "projection"),
        ({"w_template": 0.0}, "needs the template view"),
        ({"template_canvas": [48, 48]}, "canvas"),
        ({"contrast_start_frac": 1.5}, "contrast_start_frac"),
    ]:
        with pytest.raises(ValueError, match=match):
            BrainMVP.check_config(mvp_cfg(**bad))
    devs = BrainMVP.deviations(mvp_cfg(mask_rate=0.875, template_only_frac=0.2, temperature=1.0))
    assert any("0.875" in d for d in devs) and any("template view for the first" in d for d in devs)
    assert any("temperature 1.0" in d for d in devs)


def seg_info():
    return TaskInfo(task="segmentation", num_classes=3, label_names=["WT", "TC", "ET"], spec=SegmentationTask())


def test_templates_hand_off_from_pretraining_into_fine_tuning():
    pre = BrainMVP(encoder(), mvp_cfg())
    with torch.no_grad():
        pre.templates.weight.copy_(torch.randn_like(pre.templates.weight))
    parent = artifact_state(pre)
    assert "templates.weight" in parent and "steps_done" in parent
    cfg = SegTemplateTune.default_config("tiny") | {"template_canvas": [12, 12, 12]}
    tune = SegTemplateTune(encoder(), cfg, seg_info())
    tune.encoder.load_state_dict({k[8:]: v for k, v in parent.items() if k.startswith("encoder.")}, strict=True)
    loaded = carry_over_heads(tune, parent)
    assert loaded == ["templates.weight"]
    assert torch.equal(tune.templates.weight, pre.templates.weight.detach())
    assert not tune.templates.weight.requires_grad  # read, not trained, downstream
    # another canvas does not fit: the templates stay zero and the first step says why
    other = SegTemplateTune(encoder(), SegTemplateTune.default_config("tiny"), seg_info())
    assert carry_over_heads(other, parent) == []
    batch = {
        "volume": torch.rand(1, 4, R, R, R),
        "present": torch.ones(1, 4, dtype=torch.long),
        "seg": torch.zeros(1, 3, R, R, R),
        "crop_origin": torch.zeros(1, 3, dtype=torch.long),
        "volume_shape": torch.full((1, 3), R),
        "flips": torch.zeros(1, 3, dtype=torch.long),
    }
    with pytest.raises(ConfigError, match="--pretrain brainmvp"):
        other(batch)


def test_template_mixing_replaces_0_to_m_minus_1_whole_channels_keyed_per_sample():
    vol = torch.zeros(400, 4, 2, 2, 2)
    tmpl = torch.ones(400, 4, 2, 2, 2)
    with draws.step_context(seed=0, step=0, positions=range(400)):
        mixed = SegTemplateTune.mix(vol, tmpl)
    per_channel = mixed.flatten(2)
    assert torch.all((per_channel.sum(2) == 0) | (per_channel.sum(2) == 8))  # whole channels, template or image
    counts = per_channel.sum(2).div(8).sum(1).long()
    hist = torch.bincount(counts, minlength=5).tolist()
    assert hist[4] == 0 and all(70 < h < 130 for h in hist[:4]), hist  # k uniform on 0..3
    chan = per_channel.sum(2).div(8).sum(0)
    assert all(100 < c < 200 for c in chan.tolist()), chan  # every channel gets replaced about equally
    # a sample's choice is its own: the second half alone, at its global positions, mixes the same
    with draws.step_context(seed=0, step=0, positions=range(200, 400)):
        assert torch.equal(SegTemplateTune.mix(vol[200:], tmpl[200:]), mixed[200:])
        assert not torch.equal(SegTemplateTune.mix(vol[200:], tmpl[200:], "mix_second"), mixed[200:])


def _tmpl_tune(cls, cfg_over, info):
    cfg = cls.default_config("tiny") | {"template_canvas": [R, R, R]} | cfg_over
    s = cls(encoder(), cfg, info)
    with torch.no_grad():
        s.templates.weight.copy_(torch.arange(4.0).view(4, 1, 1, 1).expand(4, R, R, R) + 1)  # channel c reads c+1
        s.templates.weight[:, 0, 0, 0] = 0.0  # min 0, max c+1 -> normalised values 1 almost everywhere
    return s


def _seg_batch():
    return {
        "volume": torch.rand(2, 4, R, R, R) * 0.5 + 2.0,
        "present": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1]]),
        "seg": (torch.rand(2, 3, R, R, R) > 0.7).float(),
        "crop_origin": torch.zeros(2, 3, dtype=torch.long),
        "volume_shape": torch.full((2, 3), R),
        "flips": torch.zeros(2, 3, dtype=torch.long),
    }


def test_seg_tmpl_fills_missing_modalities_and_adds_the_consistency_term():
    s = _tmpl_tune(SegTemplateTune, {"consistency": "tile"}, seg_info())
    batch = _seg_batch()
    seen = {}
    s.encoder.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].detach().clone()))
    s.head.register_forward_hook(lambda m, args, out: seen.update(logits=out.detach()))
    torch.manual_seed(0)
    out = s(batch)
    x, logits = seen["x"], seen["logits"]
    assert x.shape[0] == 4  # two mixed copies of each crop
    assert torch.all(x[[1, 3], 2] <= 1.0)  # sample 1 lacks modality 2: filled from the template in both copies
    assert torch.all(x[[0, 2]].amax(dim=(2, 3, 4)) > 1.0 - 1e-6)
    target = torch.cat([batch["seg"], batch["seg"]])
    assert out["loss_task"].item() == pytest.approx(seg_loss(logits, target).item(), rel=1e-5)
    assert out["loss_consistency"].item() == pytest.approx(
        0.1 * ((logits[:2] - logits[2:]) ** 2).mean().item(), rel=1e-5
    )
    # test time: the absent channel is the template, present ones untouched
    seen.clear()
    with torch.no_grad():
        pred = s.predict({k: v for k, v in batch.items() if k != "seg"})
    assert pred["seg_logits"].shape == (2, 3, R, R, R)
    assert torch.equal(seen["x"][1, [0, 1, 3]], batch["volume"][1, [0, 1, 3]]) and seen["x"][1, 2].max() <= 1.0


def test_released_interleaved_consistency_copies():
    s = _tmpl_tune(SegTemplateTune, {"consistency": "interleave", "template_mix": False}, seg_info())
    batch = _seg_batch()
    batch["present"] = torch.ones(2, 4, dtype=torch.long)
    seen = {}
    s.encoder.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].detach().clone()))
    s(batch)
    v = batch["volume"]
    assert torch.equal(seen["x"][:2], v[:, [0, 0, 1, 1]]) and torch.equal(seen["x"][2:], v[:, [2, 2, 3, 3]])
    assert any("(c0,c0,c1,c1)" in d for d in SegTemplateTune.deviations(s.cfg))


def test_cls_tmpl_mixes_and_fills_on_whole_volumes():
    info = TaskInfo(
        task="scan-classification", num_classes=2, label_names=["LGG", "HGG"], spec=ScanClassificationTask()
    )
    s = _tmpl_tune(ClsTemplateTune, {}, info)
    batch = _seg_batch() | {"label": torch.tensor([0, 1])}
    del batch["seg"]
    out = s(batch)
    assert torch.isfinite(out["loss_task"])
    assert s.predict(batch)["logits"].shape == (2, 2)
    with pytest.raises(ValueError, match="fill_missing"):
        ClsTemplateTune.check_config(s.cfg | {"fill_missing": "mean"})
