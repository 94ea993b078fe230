"""Data-pipeline throughput on the real SLAKE images (skipped when they are absent).

* ``decode``: first epoch through ``ImageLoader`` with an empty cache (JPEG decode + bicubic
  resize + centre crop + cache write);
* ``nocache``: the reference, per-item PIL decoding with no cache (``cache_dir=None``);
* ``cached``: later epochs, every image a cache hit;
* ``dataloader-*``: the same through ``RecordDataset`` + ``torch.utils.data.DataLoader`` as a stage
  builds it (``loaders.auto_num_workers``, persistent workers, batch 32, CLIP normalisation).

Image size ``UMDBENCH_BENCH_IMAGE_SIZE`` (default 384, the paper preset); the loader at 96 px (the
tiny preset) is measured too, to compare with what the tiny model consumes.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

import pytest

DATA_ROOT = Path(os.environ.get("UMDBENCH_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
IMAGES = sorted(glob.glob(str(DATA_ROOT / "slake" / "imgs" / "*" / "source.jpg")))
SIZE = int(os.environ.get("UMDBENCH_BENCH_IMAGE_SIZE", "384"))

pytestmark = pytest.mark.skipif(
    not IMAGES, reason=f"SLAKE images not found under {DATA_ROOT}/slake/imgs (set UMDBENCH_DATA_ROOT)"
)


def _info(benchmark, variant, size, n, **extra):
    benchmark.group = f"data {size}px"
    benchmark.extra_info.update(
        {
            "kind": "data",
            "variant": variant,
            "image_size": size,
            "images": n,
            "load_avg_1m": os.getloadavg()[0],
            **extra,
        }
    )


@pytest.fixture()
def cache_dir():
    d = tempfile.mkdtemp(prefix="umdbench-bench-cache-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _epoch(loader):
    for p in IMAGES:
        loader.load(p)


def test_image_loader_decode(benchmark, cache_dir):
    from umdbench.data.images import ImageLoader

    dirs = iter(range(1000))

    def setup():
        return (ImageLoader(SIZE, cache_dir / str(next(dirs))),), {}

    benchmark.pedantic(_epoch, setup=setup, rounds=2, iterations=1)
    _info(benchmark, "decode (first epoch, cache write)", SIZE, len(IMAGES))


def test_image_loader_nocache(benchmark):
    from umdbench.data.images import ImageLoader

    benchmark.pedantic(_epoch, args=(ImageLoader(SIZE, None),), rounds=2, iterations=1)
    _info(benchmark, "reference: per-item PIL decode, no cache", SIZE, len(IMAGES))


@pytest.mark.parametrize("size", sorted({SIZE, 96}))
def test_image_loader_cached(benchmark, cache_dir, size):
    from umdbench.data.images import ImageLoader

    loader = ImageLoader(size, cache_dir)
    _epoch(loader)  # fill
    benchmark.pedantic(_epoch, args=(loader,), rounds=5, iterations=1, warmup_rounds=1)
    _info(benchmark, "cached epoch", size, len(IMAGES))


def _dataloader(size, cache):
    from torch.utils.data import DataLoader

    from umdbench.api import Record
    from umdbench.data.images import ImageLoader
    from umdbench.kit.imagetext import RecordDataset
    from umdbench.models import build_tokenizer
    from umdbench.models.presets import ENCODER_PRESETS
    from umdbench.run.build_data import auto_num_workers

    records = [
        Record(uid=str(i), image=p, text="what modality is used to take this image?") for i, p in enumerate(IMAGES)
    ]
    tok = build_tokenizer(ENCODER_PRESETS["tiny"])
    ds = RecordDataset(records, task="pretrain", tokenizer=tok, max_text_len=32, image_loader=ImageLoader(size, cache))
    workers = auto_num_workers("auto")
    import torch

    dl = DataLoader(
        ds,
        batch_size=32,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return dl, workers


def _drain(dl):
    from umdbench.kit.imagetext import normalize_image

    n = 0
    for batch in dl:  # uint8 from the workers, normalised per batch as the stage model does
        n += normalize_image(batch["image"]).shape[0]
    return n


@pytest.mark.parametrize("size", sorted({SIZE, 96}))
def test_dataloader_cached(benchmark, cache_dir, size):
    from umdbench.data.images import ImageLoader

    _epoch(ImageLoader(size, cache_dir))  # fill the cache
    dl, workers = _dataloader(size, cache_dir)
    _drain(dl)  # start the workers
    benchmark.pedantic(_drain, args=(dl,), rounds=3, iterations=1)
    _info(benchmark, "RecordDataset+DataLoader, cached", size, len(IMAGES), num_workers=workers)


def test_dataloader_decode(benchmark, cache_dir):
    dirs = iter(range(1000))

    def setup():
        dl, _ = _dataloader(SIZE, cache_dir / str(next(dirs)))
        return (dl,), {}

    benchmark.pedantic(_drain, setup=setup, rounds=1, iterations=1)
    from umdbench.run.build_data import auto_num_workers

    _info(benchmark, "RecordDataset+DataLoader, first epoch", SIZE, len(IMAGES), num_workers=auto_num_workers("auto"))
