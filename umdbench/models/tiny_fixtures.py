"""Small helpers for tests and smoke runs: tiny configs and a learnable synthetic batch set."""

from __future__ import annotations

import copy

import torch

from umdbench.api import deep_merge

from .presets import ENCODER_PRESETS
from .text import build_tokenizer, special_ids_from_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_CAPTIONS = [
    "chest x-ray shows opacity in the left lower lobe",
    "axial ct of the abdomen with a liver lesion",
    "brain mri shows no acute infarct",
    "pelvic radiograph with a right hip fracture",
    "ultrasound of the kidney showing a cyst",
    "sagittal mri of the lumbar spine with disc herniation",
    "ct angiogram shows a pulmonary embolism",
    "frontal chest radiograph with cardiomegaly",
]


def tiny_encoder_cfg(**overrides) -> dict:
    return deep_merge(copy.deepcopy(ENCODER_PRESETS["tiny"]), overrides)


def synthetic_pairs(n: int, image_size: int = 96, max_len: int = 32, seed: int = 0, cfg: dict | None = None):
    """``n`` image-text pairs from 8 classes: each class has a fixed random low-frequency image
    (plus a little noise) and a fixed caption, so every objective is learnable. Returns a batch dict
    (CLIP-normalised images) and the tokenizer's special ids."""
    g = torch.Generator().manual_seed(seed)
    k = len(_CAPTIONS)
    # Class c is a colour grating sin(2 pi (a x + b y) / 16) with integer (a, b): periodic in every
    # 16-px patch, so each masked patch (raw or per-patch normalised) is predictable from the class,
    # which the visible patches and the caption reveal.
    waves = [(1, 0), (0, 1), (1, 1), (1, -1), (2, 0), (0, 2), (2, 1), (1, 2)]
    colours = torch.rand(k, 3, generator=torch.Generator().manual_seed(1234)) * 0.8 + 0.2
    yy, xx = torch.meshgrid(
        torch.arange(image_size, dtype=torch.float32), torch.arange(image_size, dtype=torch.float32), indexing="ij"
    )
    protos = torch.stack(
        [
            0.5
            + 0.5 * colours[c].view(3, 1, 1) * torch.sin(2 * torch.pi * (waves[c][0] * xx + waves[c][1] * yy) / 16.0)
            for c in range(k)
        ]
    )
    cls = torch.arange(n) % k
    img = (protos[cls] + 0.05 * torch.randn(n, 3, image_size, image_size, generator=g)).clamp(0, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    tok = build_tokenizer(cfg or ENCODER_PRESETS["tiny"])
    enc = tok(
        [_CAPTIONS[i] for i in cls.tolist()],
        padding="max_length",
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )
    batch = {"image": (img - mean) / std, "text_ids": enc["input_ids"], "text_mask": enc["attention_mask"]}
    return batch, special_ids_from_tokenizer(tok)
