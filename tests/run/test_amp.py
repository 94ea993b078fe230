"""Mixed precision: bf16 autocast at the paper presets where bf16 is native (CUDA, CPUs with
AVX-512 BF16 / AMX), fp32 at tiny; the decision is resolved when the run is planned, so the
saved config and the stage key say which precision trained a stage; bf16 training follows the
fp32 loss curve; GM-Coord's contributions and noise stay fp32."""

from __future__ import annotations

import pytest
import torch

from umdbench import util
from umdbench.data.catalog import DataCatalog
from umdbench.plan.config import CellSpec, resolve
from umdbench.plan.stage_plan import build_plan
from umdbench.plugin import load_plugins
from umdbench.run.build_optim import bf16_optim_wrapper_class, build_optim_wrapper
from umdbench.run.train_settings import use_amp


@pytest.fixture(scope="module")
def registries():
    return load_plugins()[0]


def test_resolve_amp(monkeypatch):
    for off in (False, None, "off", "fp32"):
        assert util.resolve_amp(off) is False
    assert util.resolve_amp("bf16") == "bf16" and util.resolve_amp(True) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(util, "cpu_native_bf16", lambda: True)
    assert util.resolve_amp("auto") == "bf16"
    monkeypatch.setattr(util, "cpu_native_bf16", lambda: False)  # emulated bf16 is slower than fp32
    assert util.resolve_amp("auto") is False
    with pytest.raises(util.ConfigError, match="train.amp"):
        util.resolve_amp("fp16")


def test_cpu_flags_agree_with_torch():
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is None:
        pytest.skip("this torch has no CPU bf16 probe")
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    assert util.cpu_native_bf16() == (bool(probe()) or bool(amx))


def test_presets_and_plan_record_the_precision(registries, monkeypatch):
    tiny = resolve(CellSpec("mr", ("tdcalib", "gmcoord"), "medsynth"), registries).config
    assert [s["train"]["amp"] for s in [tiny["pretrain"], *tiny["tune"]]] == [False, False, False]
    monkeypatch.setattr(util, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    offline = (("model.vision.on_missing", "random"),)  # no CLIP weights offline: opt into random init
    paper = resolve(
        CellSpec("mr", ("tdcalib", "gmcoord"), "medsynth", preset="paper", overrides=offline), registries
    ).config
    # "auto" is resolved at planning: the saved config names what applies on this machine
    assert [s["train"]["amp"] for s in [paper["pretrain"], *paper["tune"]]] == ["bf16"] * 3
    monkeypatch.setattr(util, "cpu_native_bf16", lambda: False)
    spec = CellSpec("mr", ("gmcoord",), "medsynth", preset="paper", overrides=offline)
    fp32 = resolve(spec, registries)
    assert fp32.config["pretrain"]["train"]["amp"] is False
    monkeypatch.setattr(util, "cpu_native_bf16", lambda: True)
    bf16 = resolve(spec, registries)
    catalog = DataCatalog(registries)
    keys_fp32 = [s.key for s in build_plan(fp32, registries, catalog)]
    keys_bf16 = [s.key for s in build_plan(bf16, registries, catalog)]
    assert all(a != b for a, b in zip(keys_fp32, keys_bf16))  # an fp32 stage is never reused for bf16


def test_bf16_wrapper_autocasts_on_cpu():
    lin = torch.nn.Linear(8, 4)

    class S(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def param_group_of(self, name):
            return "encoder"

        def transient_state_prefixes(self):
            return ()

    s = S()
    assert not use_amp({}) and use_amp({"amp": "bf16"})
    ow = build_optim_wrapper(s, {"lr": 1e-3, "amp": "bf16"})
    assert isinstance(ow, bf16_optim_wrapper_class())
    with ow.optim_context(s):
        out = s.lin(torch.randn(2, 8))
    assert out.dtype == torch.bfloat16
    ow.update_params(out.float().pow(2).mean())
    assert lin.weight.dtype == torch.float32  # master weights (and AdamW state) stay fp32
    assert type(build_optim_wrapper(s, {"lr": 1e-3})).__name__ == "OptimWrapper"


class Case:
    """One strategy at the tiny preset wrapped as a stage trains it, on a synthetic batch (as the
    benchmarks' training-step cases)."""

    def __init__(self, name: str, batch_size: int, amp=False):
        from umdbench.api import TaskInfo
        from umdbench.kit.tasktypes import ImageTextPairs, VQATask
        from umdbench.models import build_encoder
        from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg
        from umdbench.run.stage_model import StageModel

        registries = load_plugins()[0]
        torch.manual_seed(0)
        encoder = build_encoder(tiny_encoder_cfg())
        tune = name in registries.tune
        cls = (registries.tune if tune else registries.pretrain).get(name)
        cfg = cls.default_config("tiny", "vqa-rad" if tune else None)
        self.batch, cfg["special_ids"] = synthetic_pairs(batch_size)
        if tune:
            self.batch["label"] = torch.arange(batch_size) % 8
            self.batch["answer_type"] = torch.arange(batch_size) % 2
            self.strategy = cls(encoder, cfg, TaskInfo("vqa", 8, [str(i) for i in range(8)]))
        else:
            self.strategy = cls(encoder, cfg)
        self.train = cfg["train"]
        self.model = StageModel(self.strategy, VQATask() if tune else ImageTextPairs())
        self.model.train()
        self.optim = build_optim_wrapper(self.strategy, {**self.train, "amp": amp})

    def step(self) -> dict:
        return self.model.train_step(self.batch, self.optim)


def _gmcoord_curve(amp, steps: int):
    case = Case("gmcoord", 4, amp)
    torch.manual_seed(1)
    return torch.tensor([float(case.step()["loss"].detach()) for _ in range(steps)])


@pytest.mark.slow
def test_bf16_follows_the_fp32_loss_curve_and_gmcoord_stays_fp32(monkeypatch):
    from umdbench.kit import gradmod

    seen = {"contribution": set(), "grad": set(), "noise": 0}
    contribution, modulate = gradmod.contribution, gradmod.modulate_

    def spy_contribution(logits, target):
        seen["contribution"].add(logits.dtype)
        return contribution(logits, target)

    def spy_modulate(params, k, noise, std_eps=0.0, generator=None):
        params = list(params)
        seen["grad"] |= {p.grad.dtype for p in params if p.grad is not None}
        seen["noise"] += int(noise)
        return modulate(params, k, noise, std_eps, generator)

    monkeypatch.setattr(gradmod, "contribution", spy_contribution)
    monkeypatch.setattr(gradmod, "modulate_", spy_modulate)
    steps, window = 40, 10  # 40 steps: both curves fall to about 2 % of their first window
    fp32 = _gmcoord_curve(False, steps)
    assert seen["contribution"] == {torch.float32}
    seen["contribution"].clear()
    bf16 = _gmcoord_curve("bf16", steps)
    # the head and encoder ran in bf16, yet Eq. 10 was computed on fp32 logits and Eq. 13's noise
    # was added to fp32 gradients
    assert seen["contribution"] == {torch.float32} and seen["grad"] == {torch.float32} and seen["noise"] > 0
    a, b = fp32.unfold(0, window, window).mean(1), bf16.unfold(0, window, window).mean(1)
    assert a[-1] < 0.5 * a[0] and b[-1] < 0.5 * b[0]  # both learn
    # Stated tolerance: each 10-step window mean of the bf16 curve within 3 % of fp32's. Measured
    # on this project's CPU (AVX-512 BF16): GM-Coord tiny b4 max 0.15 % over 200 steps (20-step
    # windows), 0.14 % over 80, 0.11 % over 40; MR tiny b4 max 5.4 %.
    rel = ((a - b).abs() / a.abs()).max().item()
    assert rel < 0.03, (rel, a.tolist(), b.tolist())


def test_mr_teacher_targets_record_no_graph_and_train_in_bf16():
    case = Case("mr", 2)
    s = case.strategy
    seen = set()
    linear = next(m for m in s.teacher.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = s.reconstruction_terms(case.batch)
    assert seen == {torch.bfloat16}  # the teacher's matmuls follow the student's autocast
    assert r["teacher"].text_feats.grad_fn is None
    losses = case.model.train_step(case.batch, build_optim_wrapper(s, {**case.train, "amp": "bf16"}))
    assert all(torch.isfinite(v) for v in losses.values())
    s.zero_grad(set_to_none=True)
    r = s.reconstruction_terms(case.batch)
    r["feamlm"].backward()  # targets are constants: only the student side gets gradient
    assert s.fea_proj_text.weight.grad is not None and not any(p.requires_grad for p in s.teacher.parameters())
    s.zero_grad(set_to_none=True)
    s.quirks["fea_target_grad"] = True  # the released code's targets carry gradient into h^T
    r = s.reconstruction_terms(case.batch)
    proj = s.fea_proj_text(r["teacher"].text_feats)
    assert proj.grad_fn is not None
