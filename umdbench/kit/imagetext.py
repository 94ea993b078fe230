"""Image + text records -> tensors: the torch datasets of the built-in image + text task types.

Texts are tokenised once, up front. Images go through :class:`umdbench.data.images.ImageLoader`
(decoded, resized and cached on disk) and leave the datasets as uint8: data-loader workers hand the
main process a quarter of the bytes a float batch would take, and the CLIP mean/std normalisation
runs once per batch on the model's device (:func:`normalize_image`, called by the stage model's
task type's ``preprocess``, :mod:`umdbench.kit.tasktypes`).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from umdbench import draws
from umdbench.api import DataError, Record

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
ANSWER_TYPES = {"closed": 0, "open": 1}


def _normalize_reference(pixels: torch.Tensor) -> torch.Tensor:
    mean, std = CLIP_MEAN.to(pixels.device), CLIP_STD.to(pixels.device)
    return (pixels.float().div_(255.0) - mean) / std


# uint8 value -> normalised float32, per channel, computed with exactly the ops of
# _normalize_reference, so a table look-up gives bit-identical pixels ~7x faster than the three
# element-wise passes (and without spinning up intra-op threads in data-loader workers).
_LUT = _normalize_reference(torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256)).view(3, 256).numpy()


def normalize_image(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [3,H,W] or [B,3,H,W] -> float32 of the same shape, normalised as CLIP expects
    (a table look-up on CPU, the three element-wise ops on an accelerator; bit-identical)."""
    if pixels.dim() not in (3, 4) or pixels.shape[-3] != 3:
        raise ValueError(f"expected uint8 images [3,H,W] or [B,3,H,W], got shape {tuple(pixels.shape)}")
    if pixels.dtype != torch.uint8 or pixels.device.type != "cpu":
        return _normalize_reference(pixels)
    src = pixels.numpy()
    out = np.empty(src.shape, dtype=np.float32)
    for c in range(3):
        np.take(_LUT[c], src[..., c, :, :], out=out[..., c, :, :])
    return torch.from_numpy(out)


def tokenize(tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()


class RecordDataset(Dataset):
    """Image + text samples of one split, with the task's targets.

    ``task``: "vqa" (label from ``label_index``; -1 when the answer is not in the vocabulary, and
    answer_type), "classification" (``Record.label``), "retrieval" (``negatives`` random other
    captions per sample for training), "pretrain" (image + text only).
    """

    def __init__(
        self,
        records: list[Record],
        *,
        task: str,
        tokenizer,
        max_text_len: int,
        image_loader,
        label_index: dict[str, int] | None = None,
        negatives: int = 0,
        seed: int = 0,
    ):
        self.records = records
        self.task = task
        self.image_loader = image_loader
        self.negatives = negatives
        self.seed = seed
        self.text_ids, self.text_mask = tokenize(tokenizer, [r.text for r in records], max_text_len)
        n = len(records)
        if task == "vqa":
            self.labels = torch.tensor([label_index.get(r.answer, -1) for r in records], dtype=torch.long)
            bad = next((r for r in records if r.answer_type not in ANSWER_TYPES), None)
            if bad is not None:
                raise DataError(
                    f"VQA record {bad.uid!r} has answer_type {bad.answer_type!r}; each VQA record needs "
                    f"'open' or 'closed'. Fix the dataset plugin's records() (or the annotation it reads); "
                    f"`umdbench data check` lists every such record."
                )
            self.answer_types = torch.tensor([ANSWER_TYPES[r.answer_type] for r in records], dtype=torch.long)
        elif task == "classification":
            self.labels = torch.tensor([r.label for r in records], dtype=torch.long)
        if task == "retrieval" and negatives and n < 2:
            raise ValueError("retrieval training needs at least two captions to draw negatives from")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        item = {
            "image": self.image_loader.load(self.records[i].image),  # uint8; normalised per batch
            "text_ids": self.text_ids[i],
            "text_mask": self.text_mask[i],
            "index": torch.tensor(i),
        }
        if self.task in ("vqa", "classification"):
            item["label"] = self.labels[i]
        if self.task == "vqa":
            item["answer_type"] = self.answer_types[i]
        if self.task == "retrieval" and self.negatives:
            # negatives: other captions, drawn fresh each time (different across epochs)
            rng = draws.item_rng("negatives") or np.random.default_rng()
            others = rng.choice(
                len(self.records) - 1, size=self.negatives, replace=len(self.records) - 1 < self.negatives
            )
            others = torch.as_tensor(others + (others >= i), dtype=torch.long)
            item["neg_text_ids"] = self.text_ids[others]
            item["neg_text_mask"] = self.text_mask[others]
        return item


class PairGridDataset(Dataset):
    """Every (image i, text j) pair of a retrieval evaluation set; image i matches text i."""

    def __init__(self, records: list[Record], *, tokenizer, max_text_len: int, image_loader, cache_images: int = 256):
        self.records = records
        self.image_loader = image_loader
        self.text_ids, self.text_mask = tokenize(tokenizer, [r.text for r in records], max_text_len)
        self._images: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_size = cache_images

    def __len__(self) -> int:
        return len(self.records) ** 2

    def _image(self, i: int) -> torch.Tensor:
        if i not in self._images:
            self._images[i] = self.image_loader.load(self.records[i].image)  # uint8, see module docstring
            if len(self._images) > self._cache_size:
                self._images.popitem(last=False)
        return self._images[i]

    def __getitem__(self, k: int) -> dict:
        i, j = divmod(k, len(self.records))  # image-major: consecutive items share an image
        return {
            "image": self._image(i),
            "text_ids": self.text_ids[j],
            "text_mask": self.text_mask[j],
            "image_index": torch.tensor(i),
            "text_index": torch.tensor(j),
        }
