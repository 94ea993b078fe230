"""ImageLoader: geometry, disk cache (identical pixels on hits), corrupt/truncated/missing files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from umdbench.api import DataError
from umdbench.data.images import ImageLoader, decode_resize

SHARED = Path(os.environ.get("UMDBENCH_SHARED_DATASETS") or Path(__file__).resolve().parents[3] / "shared" / "datasets")


def _jpeg(path: Path, w: int = 120, h: int = 80, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_shape_dtype_and_centre_crop(tmp_path):
    # left half black, right half white, wide image: the crop keeps the middle columns
    arr = np.zeros((50, 200, 3), dtype=np.uint8)
    arr[:, 100:] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(arr).save(path)
    out = ImageLoader(32).load(str(path))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert out[:, :, :12].max() < 30 and out[:, :, -12:].min() > 225  # centre crop straddles the edge


def test_array_ref_and_grayscale(tmp_path):
    arr = np.full((40, 60, 3), 7, dtype=np.uint8)
    out = ImageLoader(16).load(arr)
    assert out.shape == (3, 16, 16) and int(out.float().mean().round()) == 7
    Image.fromarray(np.full((20, 20), 100, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    g = ImageLoader(8).load(str(tmp_path / "g.png"))
    assert g.shape == (3, 8, 8) and torch.all(g == 100)
    with pytest.raises(DataError):
        ImageLoader(8).load(np.zeros((4, 4), dtype=np.uint8))


def test_cache_hits_return_identical_pixels(tmp_path):
    path = _jpeg(tmp_path / "a.jpg")
    cache = tmp_path / "cache"
    first = ImageLoader(48, cache)
    a = first.load(str(path))
    assert first.misses == 1 and first.hits == 0
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp")
    second = ImageLoader(48, cache)  # a later run
    b = second.load(str(path))
    assert second.hits == 1 and second.misses == 0
    assert torch.equal(a, b)
    assert torch.equal(a, ImageLoader(48).load(str(path)))  # same as no cache at all
    # another size is another entry
    ImageLoader(24, cache).load(str(path))
    assert len([p for p in cache.rglob("*") if p.is_file()]) == 2


def test_cache_invalidated_when_file_changes(tmp_path):
    path = _jpeg(tmp_path / "a.jpg", seed=1)
    loader = ImageLoader(16, tmp_path / "cache")
    a = loader.load(str(path))
    _jpeg(path, seed=2)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    b = loader.load(str(path))
    assert loader.misses == 2 and not torch.equal(a, b)


def test_damaged_cache_entry_is_rewritten(tmp_path):
    path = _jpeg(tmp_path / "a.jpg")
    loader = ImageLoader(16, tmp_path / "cache")
    a = loader.load(str(path))
    entry = loader.cache_path(str(path))
    entry.write_bytes(b"short")
    b = loader.load(str(path))
    assert torch.equal(a, b) and entry.stat().st_size == 3 * 16 * 16


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.jpg"
    for cache in (None, tmp_path / "cache"):
        with pytest.raises(DataError, match="nope.jpg"):
            ImageLoader(16, cache).load(str(missing))


def test_truncated_jpeg_is_an_error(tmp_path):
    good = _jpeg(tmp_path / "good.jpg", 200, 200)
    data = good.read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    for cache in (None, tmp_path / "cache"):
        with pytest.raises(DataError, match="truncated.jpg"):
            ImageLoader(32, cache).load(str(bad))
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # nothing cached
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_garbage_file_is_an_error(tmp_path):
    bad = tmp_path / "garbage.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="garbage.jpg"):
        decode_resize(bad, 16)


def test_refuses_when_truncated_loading_is_switched_on(tmp_path, monkeypatch):
    path = _jpeg(tmp_path / "a.jpg")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="LOAD_TRUNCATED_IMAGES"):
        ImageLoader(16).load(str(path))


def test_loader_pickles(tmp_path):
    import pickle

    loader = ImageLoader(16, tmp_path / "c")
    clone = pickle.loads(pickle.dumps(loader))
    assert clone.image_size == 16 and clone.cache_dir == tmp_path / "c"


@pytest.mark.realdata
def test_real_jpeg_cache_roundtrip(tmp_path):
    images = sorted((SHARED / "vqa_rad" / "images").glob("*.jpg"))[:3]
    if not images:
        pytest.skip(f"shared datasets not found at {SHARED} (set UMDBENCH_SHARED_DATASETS)")
    loader = ImageLoader(384, tmp_path / "cache")
    first = [loader.load(str(p)) for p in images]
    again = [loader.load(str(p)) for p in images]
    assert loader.hits == 3 and all(torch.equal(a, b) for a, b in zip(first, again))
