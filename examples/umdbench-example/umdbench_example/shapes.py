"""shapes-vqa: generated images of one bright square; questions about its side and its size."""

import hashlib

import numpy as np

from umdbench.api import CheckReport, DatasetPlugin, Record

SIZES = {"train": 192, "val": 32, "test": 96}
SEEDS = {"train": 0, "val": 1, "test": 2}


class ShapesVQA(DatasetPlugin):
    name = "shapes-vqa"
    version = "1"
    task = "vqa"
    needs_root = False
    default_pretrain_corpus = "shapes-vqa"  # its own image-question pairs, unlabelled

    def __init__(self, root=None, on_error="raise", image_size: int = 64, **options):
        super().__init__(root, on_error, **options)
        if options:
            raise ValueError(f"shapes-vqa: unknown option(s) {sorted(options)}; it takes image_size")
        self.image_size = int(image_size)

    def records(self, split):
        if split not in SIZES:
            raise KeyError(f"shapes-vqa has no split {split!r}; its splits are {list(SIZES)}")
        rng = np.random.default_rng(SEEDS[split])
        s = self.image_size
        out = []
        for i in range(SIZES[split]):
            side = "left" if rng.random() < 0.5 else "right"
            big = bool(rng.random() < 0.5)
            half = s // 4 if big else s // 8
            cx = s // 4 if side == "left" else 3 * s // 4
            cy = int(rng.integers(s // 4, 3 * s // 4))
            image = rng.integers(0, 40, (s, s, 3), dtype=np.uint8)
            image[max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half] = 230
            if i % 2:
                out.append(Record(f"{split}-{i}", image, "which side is the square on?", side, "open"))
            else:
                out.append(Record(f"{split}-{i}", image, "is the square large?", "yes" if big else "no", "closed"))
        return out

    def label_names(self):
        return ["left", "right", "no", "yes"]

    def fingerprint(self):
        return hashlib.sha256(f"shapes-vqa-{self.version}-{self.image_size}".encode()).hexdigest()[:16]

    def check(self, deep=True):
        return CheckReport(self.name, None, {split: len(self.records(split)) for split in SIZES})
