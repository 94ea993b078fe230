"""Task heads, losses and predictions (umdbench.kit.tasks).

Also home of ``ToyEncoder``, a small test double of the shared encoder that follows
docs/CONTRACT.md exactly (EncoderOutput fields, ``modality_parameters()``, submodules
vision/text/fusion); test_gmcoord.py and test_tune_direct.py import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from umdbench.api import TaskInfo
from umdbench.kit.recipes import iters_for
from umdbench.kit.supervised import SupervisedTune
from umdbench.kit.tasks import (
    DEFAULT_LOSS,
    build_task_head,
    encode_task,
    task_logits,
    task_loss,
    task_predict,
)


# --------------------------------------------------------------------------------------------
# Test double of umdbench.models.MultimodalEncoder
# --------------------------------------------------------------------------------------------
@dataclass
class ToyEncoderOutput:
    """Same fields as umdbench.models.EncoderOutput."""

    text_feats: torch.Tensor
    image_feats: torch.Tensor
    text_pooled: torch.Tensor
    image_pooled: torch.Tensor
    uni_text: torch.Tensor
    uni_image: torch.Tensor
    ids_restore: torch.Tensor | None = None
    image_mask: torch.Tensor | None = None

    @property
    def pooled(self) -> torch.Tensor:
        return torch.cat([self.text_pooled, self.image_pooled], dim=-1)


class ToyEncoder(nn.Module):
    """Patch/token embeddings, a one-layer cross-mixing "fusion" and Tanh poolers.

    modality_parameters(): image = vision.* + fusion.image_layer.*, text = text.* +
    fusion.text_layer.*; poolers and the type embedding belong to neither (as upstream).
    """

    def __init__(
        self, hidden: int = 16, vocab: int = 64, image_size: int = 16, patch_size: int = 8, dropout: float = 0.1
    ):
        super().__init__()
        self.hidden_size = hidden
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.vision = nn.ModuleDict(
            {"patch": nn.Linear(3 * patch_size * patch_size, hidden), "ln": nn.LayerNorm(hidden)}
        )
        self.vision_cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.text = nn.ModuleDict({"emb": nn.Embedding(vocab, hidden), "ln": nn.LayerNorm(hidden)})
        self.fusion = nn.ModuleDict(
            {
                "text_layer": nn.Linear(hidden, hidden),
                "image_layer": nn.Linear(hidden, hidden),
                "type_emb": nn.Embedding(2, hidden),
                "text_pooler": nn.Linear(hidden, hidden),
                "image_pooler": nn.Linear(hidden, hidden),
            }
        )
        self.drop = nn.Dropout(dropout)

    def patchify(self, image: torch.Tensor) -> torch.Tensor:
        b, c, h, w = image.shape
        p = self.patch_size
        x = image.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, image, text_ids, text_mask, image_mask_ratio=0.0, fuse=True):
        uni_image = self.vision["ln"](self.vision["patch"](self.patchify(image)))
        uni_image = torch.cat([self.vision_cls.expand(image.shape[0], -1, -1), uni_image], dim=1)
        uni_text = self.text["ln"](self.text["emb"](text_ids))
        m = text_mask.float().unsqueeze(-1)
        text_mean = (uni_text * m).sum(1) / m.sum(1).clamp_min(1)
        image_mean = uni_image.mean(1)
        te, ie = self.fusion["type_emb"].weight
        text_feats = torch.tanh(self.fusion["text_layer"](self.drop(uni_text + te + image_mean[:, None])))
        image_feats = torch.tanh(self.fusion["image_layer"](self.drop(uni_image + ie + text_mean[:, None])))
        tpool = (text_feats * m).sum(1) / m.sum(1).clamp_min(1)
        return ToyEncoderOutput(
            text_feats=text_feats,
            image_feats=image_feats,
            text_pooled=torch.tanh(self.fusion["text_pooler"](tpool)),
            image_pooled=torch.tanh(self.fusion["image_pooler"](image_feats.mean(1))),
            uni_text=uni_text,
            uni_image=uni_image,
        )

    def modality_parameters(self):
        image = [(f"vision.{n}", p) for n, p in self.vision.named_parameters()] + [("vision_cls", self.vision_cls)]
        image += [(f"fusion.image_layer.{n}", p) for n, p in self.fusion["image_layer"].named_parameters()]
        text = [(f"text.{n}", p) for n, p in self.text.named_parameters()]
        text += [(f"fusion.text_layer.{n}", p) for n, p in self.fusion["text_layer"].named_parameters()]
        return {"image": image, "text": text}


def toy_batch(
    task: str = "vqa", b: int = 8, num_classes: int = 5, k: int = 3, length: int = 6, seed: int = 0, vocab: int = 64
):
    """A batch whose label is a function of the text (learnable)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, length), generator=g)
    ids[:, 0] = 1
    mask = torch.ones(b, length, dtype=torch.long)
    mask[: b // 2, -2:] = 0
    batch = {"image": torch.randn(b, 3, 16, 16, generator=g), "text_ids": ids, "text_mask": mask}
    if task in ("vqa", "classification"):
        batch["label"] = ids[:, 1] % num_classes
        batch["answer_type"] = torch.randint(0, 2, (b,), generator=g)
    elif task == "retrieval":
        batch["neg_text_ids"] = torch.randint(3, vocab, (b, k, length), generator=g)
        batch["neg_text_mask"] = torch.ones(b, k, length, dtype=torch.long)
        batch["image_index"] = torch.arange(b)
        batch["text_index"] = torch.arange(b)
    return batch


def task_info(task: str = "vqa", num_classes: int = 5) -> TaskInfo:
    if task == "retrieval":
        return TaskInfo(task="retrieval")
    return TaskInfo(task=task, num_classes=num_classes, label_names=[str(i) for i in range(num_classes)])


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------
def test_vqa_head_architecture_and_shape():
    head = build_task_head(task_info("vqa", 7), hidden=16)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert head[0].in_features == 32 and head[0].out_features == 32
    assert head[3].out_features == 7
    assert torch.all(head[0].bias == 0) and torch.all(head[1].weight == 1)
    assert abs(float(head[0].weight.detach().std()) - 0.02) < 0.005
    enc = ToyEncoder().eval()
    fwd = encode_task(enc, toy_batch("vqa", b=4), task_info("vqa", 7))
    logits = task_logits(head, fwd, task_info("vqa", 7))
    assert logits.shape == (4, 7)
    # the head reads EncoderOutput.pooled = cat(text_pooled, image_pooled)
    out = enc(**{k: toy_batch("vqa", b=4)[k] for k in ("image", "text_ids", "text_mask")})
    torch.testing.assert_close(logits, head(out.pooled))


def test_classification_head_and_retrieval_head():
    assert build_task_head(task_info("classification", 3), 8)[-1].out_features == 3
    rhead = build_task_head(task_info("retrieval"), 8)
    assert len(rhead) == 1 and rhead[0].in_features == 16 and rhead[0].out_features == 1
    with pytest.raises(ValueError, match="num_classes"):
        build_task_head(TaskInfo(task="vqa", num_classes=0), 8)
    with pytest.raises(ValueError, match="pretrain"):
        build_task_head(TaskInfo(task="pretrain"), 8)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
def test_default_loss_is_cross_entropy():
    assert DEFAULT_LOSS == "ce"
    logits = torch.randn(6, 4)
    target = torch.tensor([0, 1, 2, 3, 1, 0])
    torch.testing.assert_close(task_loss(task_info("vqa", 4), logits, target), F.cross_entropy(logits, target))


def test_bce_is_upstream_onehot_times_num_answers():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    target = torch.tensor([0, 1, 2, 3, 1])
    onehot = torch.zeros(5, 4)
    onehot[torch.arange(5), target] = 1
    # mean over rows and classes, times C  ==  per-row sum over classes, averaged over rows
    manual = (
        sum(
            -(onehot[i, c] * F.logsigmoid(logits[i, c]) + (1 - onehot[i, c]) * F.logsigmoid(-logits[i, c]))
            for i in range(5)
            for c in range(4)
        )
        / 5
    )
    bce = task_loss(task_info("vqa", 4), logits, target, "bce")
    torch.testing.assert_close(bce, manual)
    assert not torch.allclose(bce, task_loss(task_info("vqa", 4), logits, target, "ce"))
    with pytest.raises(ValueError, match="loss"):
        task_loss(task_info("vqa", 4), logits, target, "mse")


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_label_minus_one_is_ignored(loss):
    torch.manual_seed(1)
    logits = torch.randn(6, 4, requires_grad=True)
    target = torch.tensor([0, -1, 2, -1, 1, 3])
    keep = target >= 0
    full = task_loss(task_info("vqa", 4), logits, target, loss)
    only = task_loss(task_info("vqa", 4), logits[keep], target[keep], loss)
    torch.testing.assert_close(full, only)
    full.backward()
    assert torch.all(logits.grad[~keep] == 0) and torch.all(logits.grad[keep].abs().sum(1) > 0)


def test_all_labels_unseen_gives_zero_loss_with_backward():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = task_loss(task_info("vqa", 4), logits, torch.full((3,), -1))
    assert float(loss.detach()) == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_retrieval_loss_positive_at_index_zero():
    scores = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    target = torch.zeros(2, dtype=torch.long)
    loss = task_loss(task_info("retrieval"), scores, target)
    torch.testing.assert_close(loss, F.cross_entropy(scores, target))
    # row 0 ranks its positive first (low loss), row 1 does not
    per_row = F.cross_entropy(scores, target, reduction="none")
    assert per_row[0] < 0.05 < per_row[1]
    with pytest.raises(ValueError, match="neg_text_ids"):
        task_loss(task_info("retrieval"), torch.randn(2), target)


def test_retrieval_training_scores_positive_first_then_negatives():
    torch.manual_seed(0)
    enc = ToyEncoder().eval()
    info = task_info("retrieval")
    head = build_task_head(info, 16)
    batch = toy_batch("retrieval", b=3, k=4)
    fwd = encode_task(enc, batch, info)
    assert fwd.group == 5 and torch.equal(fwd.target, torch.zeros(3, dtype=torch.long))
    scores = task_logits(head, fwd, info)
    assert scores.shape == (3, 5)
    pair = lambda ids, mask: task_logits(  # noqa: E731
        head, encode_task(enc, {"image": batch["image"], "text_ids": ids, "text_mask": mask}, info), info
    )
    torch.testing.assert_close(scores[:, 0], pair(batch["text_ids"], batch["text_mask"]))
    for j in range(4):
        torch.testing.assert_close(scores[:, 1 + j], pair(batch["neg_text_ids"][:, j], batch["neg_text_mask"][:, j]))


def test_predict_outputs():
    logits = torch.randn(4, 3)
    assert task_predict(task_info("vqa", 3), logits)["logits"] is logits
    assert task_predict(task_info("retrieval"), torch.randn(4))["score"].shape == (4,)


def test_mean_pooling_option():
    enc = ToyEncoder().eval()
    batch = toy_batch("vqa", b=4)
    fwd = encode_task(enc, batch, task_info("vqa"), pooling="mean")
    out = enc(batch["image"], batch["text_ids"], batch["text_mask"])
    m = batch["text_mask"].float().unsqueeze(-1)
    torch.testing.assert_close(fwd.text_feat, (out.text_feats * m).sum(1) / m.sum(1))
    torch.testing.assert_close(fwd.image_feat, out.image_feats.mean(1))


def test_supervised_tune_forward_and_predict_shapes():
    class Plain(SupervisedTune):
        name = "plain"

    enc = ToyEncoder()
    s = Plain(enc, {}, task_info("vqa", 5))
    out = s(toy_batch("vqa", b=4))
    assert set(out) >= {"loss_task"} and out["loss_task"].dim() == 0
    s.eval()
    assert s.predict(toy_batch("vqa", b=4))["logits"].shape == (4, 5)
    r = Plain(enc, {}, task_info("retrieval"))
    assert r(toy_batch("retrieval", b=2, k=3))["loss_task"].dim() == 0
    eval_batch = {k: v for k, v in toy_batch("retrieval", b=2, k=3).items() if not k.startswith("neg_")}
    assert r.predict(eval_batch)["score"].shape == (2,)
    with pytest.raises(ValueError, match="loss"):
        Plain(enc, {"loss": "hinge"}, task_info("vqa", 5))


def test_iters_for_epochs():
    assert iters_for("vqa-rad", 64, 50) == 48 * 50
    assert iters_for("vqa-med-2019", 32, 20) == 6000
