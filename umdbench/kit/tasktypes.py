"""The built-in task types: image + text data for VQA, classification, retrieval and pre-training.

Each is registered under its name in ``registry.toml`` (kind ``task``). They share the
image + text record pipeline of :mod:`umdbench.kit.imagetext` (uint8 images, texts tokenised once,
CLIP normalisation per batch after the device move) and the shared task head H of
:mod:`umdbench.kit.tasks`, so every tuning strategy is judged with the same head.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from umdbench.api import DataContext, Option, Record, TaskInfo, TaskType
from umdbench.kit import tasks as heads
from umdbench.kit.imagetext import PairGridDataset, RecordDataset, normalize_image

__all__ = [
    "ClassificationTask",
    "ImageTextPairs",
    "ImageTextTask",
    "RetrievalTask",
    "VQATask",
    "IMAGE_TEXT_KEYS",
    "BUILTIN_TASK_TYPES",
]

IMAGE_TEXT_KEYS = {
    "image": "uint8 [B,3,H,W] from the dataset; float, CLIP-normalised, after preprocess",
    "text_ids": "long [B,L] token ids (CLS ... SEP PAD)",
    "text_mask": "long [B,L] attention mask, 1 = real token",
    "index": "long [B] position of the record in its split",
}


class ImageTextTask(TaskType):
    """Common base: one image and one text per record, through the co-attention encoder."""

    pretrain_task: ClassVar[str | None] = "pretrain"
    record_task: ClassVar[str] = ""  # what RecordDataset builds targets for
    option_schema: ClassVar[dict] = {
        "max_text_len": Option(int, None, "text tokens per sample (default: the encoder's model.max_text_len)")
    }

    def build_dataset(self, records: list[Record], ctx: DataContext, *, training: bool) -> Any:
        from umdbench.data.images import ImageLoader

        loader = ImageLoader(ctx.model_cfg["image_size"], ctx.cache_dir)
        max_len = ctx.stage_cfg.get("max_text_len", ctx.model_cfg["max_text_len"])
        label_index = {name: i for i, name in enumerate(ctx.label_names)} if self.record_task == "vqa" else None
        return RecordDataset(
            records,
            task=self.record_task,
            tokenizer=ctx.tokenizer,
            max_text_len=max_len,
            image_loader=loader,
            label_index=label_index,
            seed=ctx.seed,
            negatives=self.negatives(ctx, training),
        )

    def negatives(self, ctx: DataContext, training: bool) -> int:
        return 0

    def preprocess(self, batch: dict) -> dict:
        image = batch.get("image")
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
            batch["image"] = normalize_image(image)  # float images (synthetic batches) pass unchanged
        return batch

    # the shared head H and its loss / predictions (umdbench.kit.tasks)
    def build_head(self, info: TaskInfo, width: int) -> nn.Module:
        return heads.build_task_head(info, width)

    def encode(self, encoder: nn.Module, batch: dict, info: TaskInfo, cfg: dict, *, training: bool) -> Any:
        return heads.encode_task(
            encoder, batch, info, cfg.get("pooling", heads.DEFAULT_POOLING), with_negatives=training
        )

    def logits(self, head: nn.Module, features: Any, info: TaskInfo) -> torch.Tensor:
        return heads.task_logits(head, features, info)

    def loss(self, info: TaskInfo, logits: torch.Tensor, target: torch.Tensor | None, cfg: dict) -> torch.Tensor:
        return heads.task_loss(info, logits, target, cfg.get("loss", heads.DEFAULT_LOSS))

    def predict(self, info: TaskInfo, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return heads.task_predict(info, logits)


class VQATask(ImageTextTask):
    """Question about an image; the answer is a class of the dataset's answer vocabulary (exact
    string match of ``Record.answer`` against ``label_names()``; -1 when absent)."""

    name = "vqa"
    record_task = "vqa"
    batch_keys = {
        **IMAGE_TEXT_KEYS,
        "label": "long [B] answer index; -1 = answer not in the vocabulary",
        "answer_type": "long [B] 0 = closed, 1 = open",
    }
    prediction_keys = {"logits": "float [B,C] one score per answer"}
    metric_keys = ("label", "answer_type", "index")
    default_metric = "vqa-accuracy"


class ClassificationTask(ImageTextTask):
    """Image + caption -> one class (``Record.label``)."""

    name = "classification"
    record_task = "classification"
    batch_keys = {**IMAGE_TEXT_KEYS, "label": "long [B] class index"}
    prediction_keys = {"logits": "float [B,C] one score per class"}
    metric_keys = ("label", "index")
    default_metric = "classification"


class RetrievalTask(ImageTextTask):
    """Image-text matching: training scores each image's caption against ``negatives`` others;
    evaluation scores every (image, text) pair of the split (image i matches text i)."""

    name = "retrieval"
    record_task = "retrieval"
    batch_keys = {
        **IMAGE_TEXT_KEYS,
        "neg_text_ids": "long [B,K,L] negative captions (training)",
        "neg_text_mask": "long [B,K,L]",
        "image_index": "long [B] evaluation: which image",
        "text_index": "long [B] evaluation: which text",
    }
    prediction_keys = {"score": "float [B] one score per image-text pair"}
    metric_keys = ("image_index", "text_index")
    default_metric = "retrieval-recall"
    option_schema = {
        **ImageTextTask.option_schema,
        "negatives": Option(int, 0, "negative captions scored against each training image"),
    }

    def negatives(self, ctx: DataContext, training: bool) -> int:
        return int(ctx.stage_cfg.get("negatives", 0)) if training else 0

    def build_dataset(self, records: list[Record], ctx: DataContext, *, training: bool) -> Any:
        if training:
            return super().build_dataset(records, ctx, training=True)
        from umdbench.data.images import ImageLoader

        max_len = ctx.stage_cfg.get("max_text_len", ctx.model_cfg["max_text_len"])
        return PairGridDataset(
            records,
            tokenizer=ctx.tokenizer,
            max_text_len=max_len,
            image_loader=ImageLoader(ctx.model_cfg["image_size"], ctx.cache_dir),
        )


class ImageTextPairs(ImageTextTask):
    """Unlabelled image-text pairs (pre-training corpora): image and text only, no head."""

    name = "pretrain"
    record_task = "pretrain"
    supervised = False
    pretrain_task = None
    batch_keys = dict(IMAGE_TEXT_KEYS)


BUILTIN_TASK_TYPES: dict[str, type[TaskType]] = {
    t.name: t for t in (VQATask, ClassificationTask, RetrievalTask, ImageTextPairs)
}
