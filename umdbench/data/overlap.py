"""Train/test overlap: the test images (and 3-D studies) a pre-training corpus also holds.

A pre-training corpus assembled from public data can hold a downstream test image under another
name, re-encoded, resized or re-windowed (MedPix images appear in VQA-RAD and VQA-Med-2019 under
neighbouring ``synpic`` numbers); a result on that test split then measures memory as much as
transfer. This module finds such pairs:

* **2-D images**: a 128-bit perceptual hash of the grey image, the concatenation of a 64-bit pHash
  (sign of the 8x8 lowest DCT frequencies of a 32x32 downscale against their median, DC left out)
  and a 64-bit dHash (sign of the horizontal gradient of a 9x8 downscale). Two images are **exact**
  duplicates when their files have the same sha256, **near** duplicates when the Hamming distance
  of their hashes is at most a threshold (:data:`DEFAULT_THRESHOLD`). Each 64-bit hash alone is too
  coarse for medical images (mostly black background): unrelated CT slices come within 4 bits of
  pHash, unrelated chest films within 2 bits of dHash; their sum separates them. Measured on the
  shared VQA-RAD / SLAKE / VQA-Med-2019 copies (2,457 images): a copy resized to half or to
  224x224 and saved as JPEG quality 70 stays within 7 bits of its original; every cross-dataset
  pair within 10 bits is the same MedPix study (the same image uploaded again, re-windowed, or an
  adjacent slice), and unrelated images start at 13. Near duplicates are therefore "the same
  picture or one next to it in the same scan", not only the same file; a cropped copy is missed.
* **3-D studies** (a ``Record.image`` dict of modality volumes): exact = the same content hash
  (sha256 over every modality's bytes, through the content cache for files), and the same
  **declared subject**: ``--subjects FILE`` (``{dataset: {study id: subject}}``), else the plugin's
  ``subject_id(record)``, else ``Record.extra["subject"]``, else the study id itself.

Hashes are computed once per file content: a file's sha256 comes from the content cache
(:mod:`umdbench.data.content`, kept by path, size, mtime, inode and ctime) and its perceptual hash
is remembered there as a fact under that sha256, so a second audit only stats the files.

The corpus side is the split pre-training reads (``train``); the test side is the split a row was
evaluated on. Names in reports are relative to the data root (or a record id for generated data),
never absolute paths.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from umdbench.data.content import content_cache

__all__ = [
    "HASH_NAME",
    "DEFAULT_THRESHOLD",
    "REPORT_FILE",
    "perceptual_hash",
    "hash_image_file",
    "hamming",
    "Hasher",
    "Item",
    "SplitItems",
    "split_items",
    "nearest",
    "match",
    "describe_options",
    "describe_data",
    "data_key",
    "load_report",
    "subject_of",
    "display_name",
]

HASH_NAME = "phash64+dhash64"
HASH_BITS = 128
DEFAULT_THRESHOLD = 10
REPORT_FILE = "overlap.json"
FORMAT = 1
_FACT = f"perceptual-hash:{HASH_NAME}:1"  # content-cache fact kind; bump the suffix when the hash changes
_DCT_SIZE = 32
_LOW = 8


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(_DCT_SIZE)


def _grey(img):
    """8-bit grey image; 16/32-bit greyscale is rescaled to its own range, not clipped."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return img if img.mode == "L" else img.convert("L")


def _pack(bits: np.ndarray) -> int:
    return int("".join("1" if b else "0" for b in bits.ravel()), 2)


def perceptual_hash(img) -> int:
    """The 128-bit hash of a PIL image: pHash in the high 64 bits, dHash in the low 64."""
    from PIL import Image

    grey = _grey(img)
    a = np.asarray(grey.resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ a @ _DCT.T)[:_LOW, :_LOW].ravel()
    p = low > np.median(low[1:])
    b = np.asarray(grey.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.float64)
    d = b[:, 1:] > b[:, :-1]
    return (_pack(p) << 64) | _pack(d)


def _data_error():
    """:class:`umdbench.api.DataError`, imported when needed (umdbench.api imports torch; the
    leaderboard reads reports without it)."""
    from umdbench.api import DataError

    return DataError


def hash_image_file(path: str | Path) -> int:
    """Decode an image file fully and hash it; DataError naming the file when it cannot be read."""
    from PIL import UnidentifiedImageError

    from umdbench.data.check import ImageTooLarge, open_image

    DataError = _data_error()
    try:
        with open_image(path) as img:
            img.load()
            return perceptual_hash(img)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found; fix: restore the file or re-download the dataset") from exc
    except ImageTooLarge as exc:
        raise DataError(
            f"{path}: image too large to decode safely ({exc}); fix: replace the file or remove the "
            f"record that refers to it"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc}); fix: re-download this "
            f"file or remove the record that refers to it"
        ) from exc


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int32)
    return _BYTE_BITS[x.view(np.uint8).reshape(x.shape + (8,))].sum(-1, dtype=np.int32)


def _halves(hashes: Iterable[int]) -> np.ndarray:
    """``[n, 2]`` uint64: the high and low 64 bits of each hash."""
    hashes = list(hashes)
    out = np.zeros((len(hashes), 2), dtype=np.uint64)
    for i, h in enumerate(hashes):
        out[i, 0], out[i, 1] = h >> 64, h & 0xFFFFFFFFFFFFFFFF
    return out


def nearest(test: list[int], corpus: list[int], threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each test hash: the smallest distance to a corpus hash, that hash's index, and how many
    corpus hashes lie within ``threshold``. Chunked, so 10^4 x 10^5 pairs stay in memory."""
    n = len(test)
    dist, index, within = np.full(n, HASH_BITS + 1, np.int32), np.full(n, -1, np.int64), np.zeros(n, np.int64)
    if not n or not corpus:
        return dist, index, within
    t, c = _halves(test), _halves(corpus)
    step = max(1, (1 << 22) // len(corpus))
    for start in range(0, n, step):
        part = t[start : start + step]
        d = _popcount(part[:, None, 0] ^ c[None, :, 0]) + _popcount(part[:, None, 1] ^ c[None, :, 1])
        index[start : start + step] = d.argmin(1)
        dist[start : start + step] = d.min(1)
        within[start : start + step] = (d <= threshold).sum(1)
    return dist, index, within


# ---------------------------------------------------------------------------------------------
# items of a split
# ---------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One distinct image or study of a split (records sharing it counted in ``records``)."""

    key: str  # sha256 of the content
    name: str  # relative to the data root, or a record id; never an absolute path
    kind: str  # "image" | "study"
    hash: int | None = None
    subject: str | None = None
    records: int = 0


@dataclass
class SplitItems:
    items: dict[str, Item] = field(default_factory=dict)
    records: int = 0
    unreadable: list[str] = field(default_factory=list)  # one line per record whose item could not be read

    @property
    def kind(self) -> str | None:
        kinds = {i.kind for i in self.items.values()}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)


class Hasher:
    """Content keys and perceptual hashes, each image file decoded once per content (see the module
    doc); ``decoded`` counts the decodes this object paid."""

    def __init__(self):
        self.decoded = 0
        self._caches: dict[str, Any] = {}
        self._arrays: dict[str, int] = {}

    def _cache(self, scope: str | Path):
        key = os.path.abspath(str(scope))
        if key not in self._caches:
            self._caches[key] = content_cache(key)
        return self._caches[key]

    def sha256(self, path: str | Path, scope: str | Path) -> str:
        DataError = _data_error()
        try:
            return self._cache(scope).sha256(path)
        except FileNotFoundError as exc:
            raise DataError(f"{path}: file not found; fix: restore the file or re-download the dataset") from exc
        except OSError as exc:
            raise DataError(f"{path}: cannot be read ({exc}); fix: check its permissions or re-download it") from exc

    def image_file(self, path: str | Path, scope: str | Path) -> tuple[str, int]:
        """``(sha256, perceptual hash)`` of an image file."""
        cache = self._cache(scope)
        sha = self.sha256(path, scope)
        known = cache.fact(_FACT, sha)
        if isinstance(known, str):
            try:
                return sha, int(known, 16)
            except ValueError:
                pass  # a damaged entry is recomputed
        value = hash_image_file(path)
        self.decoded += 1
        cache.remember(_FACT, sha, f"{value:032x}")
        return sha, value

    def image_array(self, arr: np.ndarray) -> tuple[str, int]:
        """``(content key, perceptual hash)`` of an ``HxW[x3]`` uint8 array (generated data)."""
        from PIL import Image

        arr = np.ascontiguousarray(arr)
        key = _array_key(arr)
        if key not in self._arrays:
            self._arrays[key] = perceptual_hash(Image.fromarray(arr))
            self.decoded += 1
        return key, self._arrays[key]

    def study(self, volumes: dict, scope: str | Path | None) -> str:
        """sha256 over a study's modalities: names and each volume's bytes (a file's through the
        content cache, so a study is read once per file version)."""
        h = hashlib.sha256()
        for modality in sorted(volumes):
            value = volumes[modality]
            if isinstance(value, np.ndarray):
                part = _array_key(value)
            else:
                part = self.sha256(value, scope if scope is not None else os.path.dirname(str(value)))
            h.update(f"{modality}\0{part}\n".encode())
        return h.hexdigest()

    def save(self) -> None:
        for cache in self._caches.values():
            cache.save()


def _array_key(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def subject_of(plugin, record, declared: dict | None = None) -> str:
    """A study's declared subject (see the module doc for the order)."""
    study = record.uid.rsplit("/", 1)[-1]
    mapped = (declared or {}).get(getattr(plugin, "name", ""), {})
    if study in mapped or record.uid in mapped:
        return str(mapped.get(record.uid, mapped.get(study)))
    method = getattr(plugin, "subject_id", None)
    if callable(method):
        found = method(record)
        if found:
            return str(found)
    return str(record.extra.get("subject") or study)


def _scope(plugin, record) -> Path | None:
    """The data folder whose content cache keeps a record's files: the source's for a corpus."""
    sources = getattr(plugin, "sources", None)
    source = record.extra.get("source") if isinstance(record.extra, dict) else None
    if source and callable(sources):
        plugin = sources().get(source, plugin)
    return getattr(plugin, "root", None)


def display_name(path: str | Path, data_root: str | Path | None, scope: str | Path | None) -> str:
    """``path`` relative to the data root (else to its dataset folder, prefixed by that folder's
    name); never absolute."""
    apath = os.path.abspath(str(path))
    for base, prefix in ((data_root, ""), (scope, Path(str(scope)).name + "/" if scope else "")):
        if base:
            rel = os.path.relpath(apath, os.path.abspath(str(base)))
            if not rel.startswith(".."):
                return prefix + Path(rel).as_posix()
    return Path(apath).name


def split_items(
    plugin, records: Iterable, hasher: Hasher, data_root: str | Path | None = None, declared: dict | None = None
) -> SplitItems:
    """The distinct images or studies of ``records`` (one split of ``plugin``); a record whose
    file cannot be read is listed in ``unreadable`` and left out."""
    DataError = _data_error()
    out = SplitItems()
    for record in records:
        out.records += 1
        image = record.image
        try:
            if isinstance(image, (str, Path)):
                scope = _scope(plugin, record) or os.path.dirname(str(image))
                key, value = hasher.image_file(image, scope)
                item = out.items.get(key) or Item(key, display_name(image, data_root, scope), "image", value)
            elif isinstance(image, np.ndarray):
                key, value = hasher.image_array(image)
                item = out.items.get(key) or Item(key, record.uid, "image", value)
            elif isinstance(image, dict):
                key = hasher.study(image, _scope(plugin, record))
                item = out.items.get(key) or Item(
                    key, record.uid, "study", subject=subject_of(plugin, record, declared)
                )
            else:
                continue
        except DataError as exc:
            out.unreadable.append(f"record {record.uid}: {exc}")
            continue
        item.records += 1
        out.items[key] = item
    return out


# ---------------------------------------------------------------------------------------------
# matching
# ---------------------------------------------------------------------------------------------
def match(corpus: SplitItems, test: SplitItems, threshold: int = DEFAULT_THRESHOLD) -> dict | None:
    """What the corpus shares with the test split: every test item with a duplicate (its nearest
    corpus item), exact and near (images) or same subject (studies) counted apart. None when the
    two hold different kinds (2-D images against 3-D studies)."""
    if corpus.kind != test.kind or test.kind in (None, "mixed"):
        return None if test.items and corpus.items else _empty(corpus, test)
    shared: list[dict] = []
    tests = list(test.items.values())
    if test.kind == "image":
        cands = list(corpus.items.values())
        dist, index, within = nearest([t.hash for t in tests], [c.hash for c in cands], threshold)
        for t, d, i, w in zip(tests, dist.tolist(), index.tolist(), within.tolist()):
            if t.key in corpus.items:
                c = corpus.items[t.key]
                shared.append(
                    {
                        "test": t.name,
                        "corpus": c.name,
                        "how": "exact",
                        "distance": 0,
                        "test_records": t.records,
                        "corpus_records": c.records,
                    }
                )
            elif d <= threshold:
                c = cands[i]
                shared.append(
                    {
                        "test": t.name,
                        "corpus": c.name,
                        "how": "near",
                        "distance": int(d),
                        "corpus_within": int(w),
                        "test_records": t.records,
                        "corpus_records": c.records,
                    }
                )
    else:
        by_subject: dict[str, Item] = {}
        for c in corpus.items.values():
            by_subject.setdefault(c.subject, c)
        for t in tests:
            if t.key in corpus.items:
                c = corpus.items[t.key]
                shared.append({"test": t.name, "corpus": c.name, "how": "exact", "test_records": t.records})
            elif t.subject in by_subject:
                shared.append(
                    {
                        "test": t.name,
                        "corpus": by_subject[t.subject].name,
                        "how": "subject",
                        "subject": t.subject,
                        "test_records": t.records,
                    }
                )
    shared.sort(key=lambda s: (s.get("distance", 0), s["test"]))
    result = _empty(corpus, test)
    result.update(
        {
            "kind": test.kind,
            "shared": shared,
            "overlap": len(shared),
            "overlap_records": sum(s["test_records"] for s in shared),
            "exact": sum(s["how"] == "exact" for s in shared),
            "near": sum(s["how"] == "near" for s in shared),
            "same_subject": sum(s["how"] == "subject" for s in shared),
        }
    )
    return result


def _empty(corpus: SplitItems, test: SplitItems) -> dict:
    return {
        "kind": test.kind or corpus.kind,
        "test_items": len(test.items),
        "test_records": test.records,
        "corpus_items": len(corpus.items),
        "corpus_records": corpus.records,
        "shared": [],
        "overlap": 0,
        "overlap_records": 0,
        "exact": 0,
        "near": 0,
        "same_subject": 0,
    }


# ---------------------------------------------------------------------------------------------
# descriptions and the stored report
# ---------------------------------------------------------------------------------------------
def describe_options(options: dict | None) -> str:
    """``sources slake, vqa-med-2019; exclude_images_of vqa-rad``."""
    parts = []
    for key, value in sorted((options or {}).items()):
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "none"
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        parts.append(f"{key} {value}")
    return "; ".join(parts)


def describe_data(data: dict) -> str:
    """A corpus or dataset config in words: ``corpus`` (sources slake, vqa-med-2019; exclude_images_of vqa-rad)."""
    options = describe_options(data.get("options"))
    return f"`{data.get('type')}`" + (f" ({options})" if options else "")


def data_key(data: dict | None) -> str:
    """What identifies a corpus or dataset config across rows: type and options."""
    if not data:
        return ""
    return json.dumps({"type": data.get("type"), "options": data.get("options") or {}}, sort_keys=True, default=str)


def load_report(folder: str | Path | None) -> dict | None:
    """The overlap report kept in a work dir (``overlap.json``), or None when there is none or it
    cannot be read (a board then renders as without one)."""
    if folder is None:
        return None
    path = Path(folder) / REPORT_FILE
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("format") != FORMAT or not isinstance(report.get("pairs"), list):
        return None
    return report
