"""Image loading with an on-disk cache of decoded, resized pixels.

``ImageLoader(image_size, cache_dir).load(ref)`` returns a ``torch.uint8`` tensor ``[3, S, S]``:
RGB, shorter side resized to ``S`` (bicubic), then centre-cropped. ``ref`` is a path to an image
file or an ``HxWx3`` uint8 array (generated data).

Cache: one raw file of ``3*S*S`` bytes per (file, size), keyed by
``sha1(abs path | mtime_ns | file size | inode | ctime_ns | S)``, stored as
``cache_dir/<k[:2]>/<k>.u8``. A later epoch
or run reads it back with a single ``np.fromfile`` instead of decoding the JPEG. Entries are written
with :func:`umdbench.util.atomic_write_bytes`, so concurrent workers never see a half-written entry.
A cache entry of the wrong size is ignored and rewritten.

Truncated or corrupt images raise :class:`umdbench.api.DataError` naming the file. PIL's global
``ImageFile.LOAD_TRUNCATED_IMAGES`` is never changed here and must stay False.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from umdbench.api import DataError
from umdbench.data.check import ImageTooLarge, open_image
from umdbench.util import atomic_write_bytes

__all__ = ["ImageLoader", "decode_resize", "resize_crop", "cache_key"]

_CACHE_SUFFIX = ".u8"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16/32-bit greyscale is rescaled, not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def resize_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic), centre crop; returns ``[3, size, size]`` uint8 (C-contiguous)."""
    img = _to_rgb(img)
    w, h = img.size
    if (w, h) != (size, size):
        if w <= h:
            nw, nh = size, max(size, int(round(h * size / w)))
        else:
            nw, nh = max(size, int(round(w * size / h))), size
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)  # H, W, 3
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode_resize(path: str | Path, size: int) -> np.ndarray:
    """Decode an image file fully (truncation is an error) and resize/crop it."""
    path = str(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped PIL's global switch; refuse silently-bad data
        raise DataError(
            f"{path}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated images would load "
            "silently; fix: leave it False (umdbench never sets it)"
        )
    try:
        with open_image(path) as img:
            img.load()  # forces the full decode; raises OSError on truncated data
            return resize_crop(img, size)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found; fix: restore the file or re-download the dataset") from exc
    except ImageTooLarge as exc:
        raise DataError(
            f"{path}: image too large to decode safely ({exc}); fix: replace the file, downscale it "
            f"if it is genuine, or remove the record that refers to it"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc}); "
            "fix: re-download this file or remove the record that refers to it"
        ) from exc


def cache_key(path: str | Path, size: int) -> str:
    """sha1 over (absolute path, mtime_ns, file size, inode, ctime_ns, target size): a file rewritten
    in place with its size and mtime set back still gets a new ctime_ns. Raises DataError if missing."""
    apath = os.path.abspath(path)
    try:
        st = os.stat(apath)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found; fix: restore the file or re-download the dataset") from exc
    raw = f"{apath}|{st.st_mtime_ns}|{st.st_size}|{st.st_ino}|{st.st_ctime_ns}|{size}".encode()
    return hashlib.sha1(raw).hexdigest()


class ImageLoader:
    """Load images as ``torch.uint8 [3, S, S]`` with an optional on-disk cache (see module doc)."""

    def __init__(self, image_size: int, cache_dir: str | Path | None = None):
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        self.image_size = int(image_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._nbytes = 3 * self.image_size * self.image_size
        self.hits = 0
        self.misses = 0

    # -- public -------------------------------------------------------------------------------
    def load(self, ref: str | Path | np.ndarray) -> torch.Tensor:
        if isinstance(ref, np.ndarray):
            return torch.from_numpy(self._from_array(ref))
        return torch.from_numpy(self.load_numpy(ref))

    def load_numpy(self, path: str | Path) -> np.ndarray:
        """Like :meth:`load` for a file path, returning a writable ``np.uint8 [3, S, S]``."""
        size = self.image_size
        if self.cache_dir is None:
            self.misses += 1
            return decode_resize(path, size)
        entry = self.cache_path(path)
        try:
            arr = np.fromfile(entry, dtype=np.uint8)
        except OSError:  # not cached yet (or unreadable: decoded again and rewritten)
            arr = None
        if arr is not None and arr.size == self._nbytes:
            self.hits += 1
            return arr.reshape(3, size, size)
        self.misses += 1
        arr = decode_resize(path, size)
        self._write(entry, arr)
        return arr

    def check(self, path: str | Path) -> str | None:
        """None when the image decodes; otherwise why not ("does not exist", "cannot be decoded
        (...)"). A cached image is not decoded again, and a decoded one is cached: checking a split
        before training fills the cache that training reads."""
        try:
            entry = self.cache_path(path)
        except DataError:
            return "does not exist"
        if entry is not None:
            try:
                if entry.stat().st_size == self._nbytes:
                    return None
            except OSError:
                pass
        try:
            arr = decode_resize(path, self.image_size)
        except DataError as exc:
            cause = exc.__cause__
            if isinstance(cause, FileNotFoundError):
                return "does not exist"
            if isinstance(cause, ImageTooLarge):
                return f"is too large to decode safely ({cause})"
            return f"cannot be decoded ({type(cause).__name__}: {cause})" if cause else str(exc)
        if entry is not None:
            self._write(entry, arr)
        return None

    def cache_path(self, path: str | Path) -> Path | None:
        """Where the cache entry of ``path`` lives (None without a cache dir)."""
        if self.cache_dir is None:
            return None
        key = cache_key(path, self.image_size)
        return self.cache_dir / key[:2] / (key + _CACHE_SUFFIX)

    # -- internals ----------------------------------------------------------------------------
    def _from_array(self, arr: np.ndarray) -> np.ndarray:
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise DataError(
                f"<array image>: expected an HxWx3 uint8 array, got shape {arr.shape} dtype {arr.dtype}; "
                "fix: the generating dataset plugin must return HxWx3 uint8 images"
            )
        return resize_crop(Image.fromarray(np.ascontiguousarray(arr), mode="RGB"), self.image_size)

    def _write(self, entry: Path, arr: np.ndarray) -> None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(entry, memoryview(np.ascontiguousarray(arr)).cast("B"))
        except OSError:
            # A read-only or full cache dir must not break training: the pixels are still correct.
            pass

    def __getstate__(self):  # picklable for DataLoader workers; counters are per process
        return {"image_size": self.image_size, "cache_dir": self.cache_dir}

    def __setstate__(self, state):
        self.__init__(state["image_size"], state["cache_dir"])
