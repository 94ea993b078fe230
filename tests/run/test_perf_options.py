"""The performance options keep numerics: SDPA vs the math reference, the masked-path reference,
the teacher under no_grad, AdamW implementation choice, AMP off by default, compile off by default."""

from __future__ import annotations

import pytest
import torch

from umdbench.models import build_encoder
from umdbench.models.reference import attention_impls, reference_train_options, set_reference_mode
from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg
from umdbench.run.build_optim import build_optim_wrapper
from umdbench.run.build_strategy import compile_strategy
from umdbench.run.train_settings import use_amp

TRAIN = {"lr": 1e-3, "weight_decay": 0.01, "betas": [0.9, 0.98], "eps": 1e-8, "grad_clip": None}


def _enc():
    torch.manual_seed(0)
    return build_encoder(tiny_encoder_cfg()).eval()


def test_math_reference_matches_sdpa_and_toggles_back():
    enc = _enc()
    batch, _ = synthetic_pairs(3)
    batch["text_mask"][:, 12:] = 0
    assert attention_impls(enc) == {"sdpa"}
    a = enc(batch["image"], batch["text_ids"], batch["text_mask"])
    set_reference_mode(enc, True)
    assert attention_impls(enc) == {"math"} and enc.masked_path == "mask_tokens"
    b = enc(batch["image"], batch["text_ids"], batch["text_mask"])
    torch.testing.assert_close(a.text_feats, b.text_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.image_feats, b.image_feats, atol=1e-5, rtol=1e-5)
    set_reference_mode(enc, False)
    assert attention_impls(enc) == {"sdpa"} and enc.masked_path == "drop"


def test_mask_token_reference_has_the_same_shapes_and_mask():
    enc = _enc()
    batch, _ = synthetic_pairs(2)
    noise = torch.rand(2, enc.num_patches)
    fast = enc(batch["image"], batch["text_ids"], batch["text_mask"], image_mask_ratio=0.75, mask_noise=noise)
    set_reference_mode(enc, True)
    ref = enc(batch["image"], batch["text_ids"], batch["text_mask"], image_mask_ratio=0.75, mask_noise=noise)
    assert fast.image_feats.shape == ref.image_feats.shape
    assert torch.equal(fast.image_mask, ref.image_mask) and torch.equal(fast.ids_restore, ref.ids_restore)


def test_teacher_pass_records_no_graph():
    from plugins.pretrain.mr import MRPretrain

    batch, special = synthetic_pairs(4)
    s = MRPretrain(_enc(), {"special_ids": special, "decoder": {"dim": 32, "depth": 1, "heads": 2}, "fea_dim": 16})
    s.train()
    assert s.teacher_no_grad
    r = s.reconstruction_terms(batch)
    assert r["teacher"].text_feats.grad_fn is None and r["teacher"].image_feats.grad_fn is None
    set_reference_mode(s, True)
    r = s.reconstruction_terms(batch)
    assert r["teacher"].text_feats.grad_fn is not None  # the reference builds the graph
    set_reference_mode(s, False)
    assert not any(p.requires_grad for p in s.teacher.parameters())


def test_optimiser_options_on_cpu():
    enc = _enc()

    class S(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = enc

        def param_group_of(self, name):
            return "encoder"

        def transient_state_prefixes(self):
            return ()

    s = S()
    ow = build_optim_wrapper(s, TRAIN)
    assert type(ow).__name__ == "OptimWrapper"  # no AMP on CPU
    assert ow.optimizer.defaults["fused"] is True  # the fused kernel on CPU too
    ref = build_optim_wrapper(s, reference_train_options(TRAIN))
    assert ref.optimizer.defaults["foreach"] is False and not ref.optimizer.defaults["fused"]
    multi = build_optim_wrapper(s, {**TRAIN, "fused": False})
    assert multi.optimizer.defaults["foreach"] is True and not multi.optimizer.defaults["fused"]
    assert not use_amp({}) and not use_amp({"amp": False})  # fp32 unless a preset opts in (tests/run/test_amp.py)
    assert compile_strategy(s, TRAIN) is False  # train.compile defaults to off


def test_normalize_image_lookup_is_bit_identical():
    from umdbench.kit.imagetext import _normalize_reference, normalize_image

    x = torch.randint(0, 256, (3, 40, 24), dtype=torch.uint8)
    assert torch.equal(normalize_image(x), _normalize_reference(x))
    assert torch.equal(normalize_image(x[:, ::2, 3:]), _normalize_reference(x[:, ::2, 3:]))  # strided input


def test_fused_adamw_matches_the_per_tensor_loop():
    # the default (fused) optimiser is a speed choice only: same updates as the reference loop
    torch.manual_seed(0)
    layers = [torch.nn.Linear(16, 8) for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())

    class S(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def param_group_of(self, name):
            return "encoder"

        def transient_state_prefixes(self):
            return ()

    fused, loop = S(layers[0]), S(layers[1])
    start = layers[0].weight.detach().clone()
    opt_f = build_optim_wrapper(fused, TRAIN)
    opt_l = build_optim_wrapper(loop, reference_train_options(TRAIN))
    x = torch.randn(4, 16)
    for _ in range(3):
        for s, ow in ((fused, opt_f), (loop, opt_l)):
            ow.update_params(s.lin(x).pow(2).mean())
    for a, b in zip(fused.parameters(), loop.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(layers[0].weight, start)  # the steps did update the weights


def test_uint8_batches_are_normalised_by_the_stage_model():
    from umdbench.kit.imagetext import _normalize_reference, normalize_image
    from umdbench.kit.tasktypes import VQATask
    from umdbench.run.stage_model import TaskPreprocessor

    batch = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    # batched look-up == per-image reference, bit for bit
    assert torch.equal(normalize_image(batch), torch.stack([_normalize_reference(x) for x in batch]))
    out = TaskPreprocessor(VQATask())({"image": batch, "label": torch.arange(4)}, True)
    assert out["image"].dtype == torch.float32 and torch.equal(out["image"], normalize_image(batch))
    assert torch.equal(out["label"], torch.arange(4))
    floats = torch.randn(2, 3, 8, 8)  # already-normalised (synthetic) batches pass unchanged
    assert torch.equal(TaskPreprocessor(VQATask())({"image": floats}, True)["image"], floats)
    if torch.cuda.is_available():  # on the accelerator: the element-wise ops, same values
        torch.testing.assert_close(normalize_image(batch.cuda()).cpu(), normalize_image(batch))
    with pytest.raises(ValueError, match="uint8 images"):
        normalize_image(torch.zeros(2, 8, 8, dtype=torch.uint8))


def test_ema_update_one_lerp_matches_the_two_op_update():
    # ema_update_ is one torch._foreach_lerp_; the previous implementation was _foreach_mul_ +
    # _foreach_add_ (and before it a per-tensor loop): same values within fp32 rounding
    from umdbench.models.ema import ema_update_

    torch.manual_seed(0)
    student, teacher = _enc(), _enc()
    for p in student.parameters():
        p.data.add_(torch.randn_like(p))
    expected = {}
    for (name, t), s in zip(teacher.state_dict().items(), student.state_dict().values()):
        expected[name] = t * 0.995 + s * (1 - 0.995) if t.is_floating_point() else s.clone()
    ema_update_(teacher, student, 0.995)
    for name, t in teacher.state_dict().items():
        torch.testing.assert_close(t, expected[name], rtol=1e-6, atol=1e-6)
    student_state = student.state_dict()  # the student does not change: read its state once
    for _ in range(50):  # repeated updates drift no further than rounding
        ema_update_(teacher, student, 0.995)
        for name, t in teacher.state_dict().items():
            s = student_state[name]
            expected[name] = expected[name] * 0.995 + s * (1 - 0.995) if t.is_floating_point() else s.clone()
    for name, t in teacher.state_dict().items():
        torch.testing.assert_close(t, expected[name], rtol=1e-5, atol=1e-6)
