"""Every pre-training strategy (and TD-Calib): losses, gradient flow, hand-off, learning."""

import pytest
import torch

from umdbench.api import PretrainStrategy, TaskInfo, TuneStrategy
from umdbench.models import build_encoder
from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg
from umdbench_plugins.pretrain.clip import CLIPPretrain
from umdbench_plugins.pretrain.flip import FLIPPretrain
from umdbench_plugins.pretrain.m3ae import M3AEPretrain
from umdbench_plugins.pretrain.mae import MAEPretrain
from umdbench_plugins.pretrain.mr import MRPretrain
from umdbench_plugins.tune.tdcalib import TDCalib

ALL = [MRPretrain, MAEPretrain, CLIPPretrain, FLIPPretrain, M3AEPretrain, TDCalib]

# a smaller geometry than `tiny` so that the learning runs stay fast
FAST = dict(
    image_size=64,
    max_text_len=16,
    vision={"embed_dim": 64, "depth": 1, "num_heads": 2},
    text={"hidden_size": 64, "num_layers": 1, "num_heads": 2, "intermediate_size": 128},
    fusion={"hidden_size": 64, "num_layers": 2, "num_heads": 2},
)


def make(cls, enc_cfg=None, **overrides):
    from umdbench.api import deep_merge

    enc_cfg = enc_cfg or tiny_encoder_cfg()
    enc = build_encoder(enc_cfg)
    batch, special = synthetic_pairs(8, image_size=enc_cfg["image_size"], max_len=enc_cfg["max_text_len"])
    cfg = deep_merge(cls.default_config("tiny"), overrides)
    cfg["special_ids"] = special
    strat = cls(enc, cfg, TaskInfo("vqa", 5)) if issubclass(cls, TuneStrategy) else cls(enc, cfg)
    return strat, batch, enc_cfg


def total(out):
    return sum(v for k, v in out.items() if k.startswith("loss"))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_presets_and_metadata(cls):
    assert cls.version == "1" and cls.name
    base = PretrainStrategy if cls is not TDCalib else TuneStrategy
    assert issubclass(cls, base)
    for preset in ("tiny", "paper"):
        cfg = cls.default_config(preset)
        train = cfg["train"]
        for key in (
            "max_iters",
            "batch_size",
            "lr",
            "lr_mult",
            "weight_decay",
            "betas",
            "eps",
            "warmup_ratio",
            "schedule",
            "checkpoint_interval",
            "log_interval",
            "grad_clip",
        ):
            assert key in train, (preset, key)
        assert set(train["lr_mult"]) == {"encoder", "fusion", "head"}
    paper = cls.default_config("paper")["train"]
    if cls is not TDCalib:
        assert paper["lr"] == 1e-5 and paper["lr_mult"]["fusion"] == 5.0 and paper["lr_mult"]["head"] == 5.0
        assert paper["max_iters"] == 100_000 and paper["batch_size"] == 256
        assert paper["warmup_ratio"] == 0.1 and paper["schedule"] == "linear"


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_forward_losses_and_handoff(cls):
    torch.manual_seed(0)
    strat, batch, enc_cfg = make(cls)
    strat.train()
    out = strat(batch)
    losses = {k: v for k, v in out.items() if k.startswith("loss")}
    assert losses and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert all(not v.requires_grad for k, v in out.items() if not k.startswith("loss"))
    total(out).backward()
    # hand-off: the encoder part of the state dict loads strictly into a fresh encoder
    state = {k[len("encoder.") :]: v for k, v in strat.state_dict().items() if k.startswith("encoder.")}
    fresh = build_encoder(enc_cfg)
    fresh.load_state_dict(state, strict=True)
    assert not any(k.startswith(strat.transient_state_prefixes() or ("\0",)) for k in state)
    # ... and into every tuning strategy's encoder
    other, _, _ = make(TDCalib)
    other.encoder.load_state_dict(state, strict=True)


EXPECT_NO_GRAD = {
    "mae": ("encoder.text.", "encoder.fusion.", "encoder.type_embed."),
    "clip": ("encoder.fusion.", "encoder.type_embed."),
    "flip": ("encoder.fusion.", "encoder.type_embed."),
    "m3ae": (),
    "mr": ("teacher.",),
    # no ITM in TD-Calib: the poolers are not used
    "tdcalib": ("teacher.", "encoder.fusion.text_pooler.", "encoder.fusion.image_pooler."),
}


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_gradient_reaches_exactly_the_trained_parameters(cls):
    torch.manual_seed(0)
    strat, batch, _ = make(cls)
    strat.train()
    total(strat(batch)).backward()
    no_grad = EXPECT_NO_GRAD[cls.name]
    for name, p in strat.named_parameters():
        if name.startswith(no_grad):
            assert p.grad is None or not p.grad.any(), name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_loss_falls_on_a_short_run(cls):
    torch.manual_seed(0)
    strat, _, enc_cfg = make(cls, tiny_encoder_cfg(**FAST))
    batches = [synthetic_pairs(8, image_size=64, max_len=16, seed=s)[0] for s in range(2)]
    opt = torch.optim.AdamW([p for p in strat.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    strat.train()
    hist, mim_hist = [], []
    for step in range(30):
        out = strat(batches[step % 2])
        loss = total(out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        strat.after_optimizer_step()
        hist.append(loss.item())
        if "mim" in out:
            mim_hist.append(out["mim"].item())
    first, last = sum(hist[:4]) / 4, sum(hist[-4:]) / 4
    assert last < 0.8 * first, (cls.name, hist)
    if mim_hist:  # the pixel reconstruction term itself improves
        assert sum(mim_hist[-4:]) < sum(mim_hist[:4]), (cls.name, mim_hist)
