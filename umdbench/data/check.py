"""Helpers for ``DatasetPlugin.check()``: image verification and the shared check loop."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_VOLUME_VOXELS",
    "open_image",
    "verify_image",
    "check_images",
    "format_report",
    "split_problems",
    "record_problems",
]

_FETCH_FIX = "fix: restore the file (re-download or re-extract the release) or remove the records that use it"

# The one place umdbench sets PIL's decompression-bomb limit (PIL's default is ~89 Mpx): 100 Mpx
# holds any 10k x 10k scan, and a larger image is refused before its pixels are decoded (~300 MB
# as RGB), whether PIL would only have warned (1-2x the limit) or raised (above 2x).
MAX_IMAGE_PIXELS = 100_000_000

# The same for volumes (NIfTI and other 3-D readers), checked on the header before any voxel is
# read: 2^28 voxels hold a 512 x 512 x 1024 CT (1 GiB as float32, the size one decoded volume may
# take); a header declaring more is damaged or not a scan, and is refused instead of allocated.
MAX_VOLUME_VOXELS = 1 << 28


class ImageTooLarge(ValueError):
    """An image over :data:`MAX_IMAGE_PIXELS` (a decompression bomb, or a wrong file)."""


def open_image(path: str | Path):
    """``PIL.Image.open`` under umdbench's pixel limit; raises :class:`ImageTooLarge` for an image
    over it (PIL's DecompressionBombError included), and what PIL raises otherwise."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # PIL warns between 1x and 2x the limit; refused below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{exc}") from exc
    if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
        img.close()
        raise ImageTooLarge(
            f"{img.size[0]}x{img.size[1]} pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels "
            f"(a decompression bomb, or not the image the record means)"
        )
    return img


def verify_image(path: str | Path, deep: bool = True) -> str | None:
    """None when the image decodes completely; otherwise a short reason.

    ``deep`` decodes all pixel data (a JPEG at 1/8 scale, which still reads every entropy-coded
    byte, so truncation is caught) instead of only parsing the header.
    """
    from PIL import UnidentifiedImageError

    path = str(path)
    if not os.path.isfile(path):
        return "missing"
    try:
        with open_image(path) as img:
            if not deep:
                img.verify()
                return None
            if img.format == "JPEG":
                img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
    except ImageTooLarge as exc:
        return f"too large to decode safely ({exc}); if the image is genuine, downscale it"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def check_images(refs: dict[str, list[str]], deep: bool = True, base: str | Path | None = None) -> list[str]:
    """One problem line per missing or unreadable image, naming the file and the records using it."""
    problems = []
    for path in sorted(refs):
        reason = verify_image(path, deep)
        if reason is None:
            continue
        uids = refs[path]
        shown = ", ".join(uids[:3]) + (f", ... ({len(uids)} records)" if len(uids) > 3 else "")
        name = path
        if base is not None:
            try:
                name = Path(path).relative_to(base).as_posix()
            except ValueError:
                pass
        problems.append(f"{name}: image {reason}; used by record {shown}; {_FETCH_FIX}")
    return problems


def record_problems(records: list, name: str, split: str, root: str | Path | None) -> list[str]:
    """What ``umdbench run`` refuses in a split before it decodes a file (the rules of
    :meth:`umdbench.data.catalog.DataCatalog.checked_records`, in its words): no records, a record
    id twice, a file path that leaves the dataset folder (``..``; a symlinked folder is fine)."""
    look = f"`umdbench data check {name}` shows what it found"
    if not records:
        return [
            f"dataset {name!r} has no records in split {split!r} (under {root or 'generated data'}); fix: restore "
            f"its annotation file or choose another split; a run that reads this split stops before training."
        ]
    problems = []
    seen: dict[str, object] = {}
    for r in records:
        if r.uid in seen:
            problems.append(
                f"dataset {name!r} split {split!r}: record id {r.uid!r} occurs twice ({_where(seen[r.uid])} "
                f"and {_where(r)}); fix: remove the duplicate from the annotation file (record ids must "
                f"be unique) or re-download the release; {look}."
            )
        else:
            seen[r.uid] = r
    if root is None:
        return problems
    base = os.path.normpath(os.path.abspath(str(root)))
    for r in records:
        paths = list(r.image.values()) if isinstance(r.image, dict) else [r.image]
        for path in paths:
            if not isinstance(path, (str, Path)):
                continue
            if not os.path.normpath(os.path.abspath(str(path))).startswith(base + os.sep):
                problems.append(
                    f"{_where(r)} of dataset {name!r} split {split!r}: image {path} lies outside the "
                    f"dataset folder {base}; fix: correct the record's image path (files are read from "
                    f"inside the dataset folder only) or remove the record."
                )
    return problems


def split_problems(plugin, split: str) -> list[str]:
    """:func:`record_problems` of one split of a dataset plugin: its records as listed
    (``raw_records`` where the plugin has it: before images are looked at, which ``check``
    reports), or a :class:`~umdbench.api.DataError` reading them as one problem."""
    from umdbench.api import DataError

    read = getattr(plugin, "raw_records", None) or plugin.records
    try:
        records = read(split)
    except DataError as exc:
        return [str(exc)]
    root = os.path.abspath(str(plugin.root)) if getattr(plugin, "root", None) is not None else None
    return record_problems(records, plugin.name, split, root)


def _where(record) -> str:
    file = record.extra.get("file") if isinstance(getattr(record, "extra", None), dict) else None
    return f"record {record.uid}" + (f" ({file})" if file else "")


def format_report(report, max_problems: int = 50) -> str:
    """Human-readable text of a CheckReport (used by ``umdbench data check``)."""
    lines = [f"dataset {report.dataset}: {report.root or '(generated: no data folder)'}"]
    for split, n in report.counts.items():
        lines.append(f"  {split:<8} {n:>7} records")
    for name, digest in report.checksums.items():
        lines.append(f"  sha256 {digest[:16]}  {name}")
    if report.problems:
        lines.append(f"  {len(report.problems)} problem(s):")
        for p in report.problems[:max_problems]:
            lines.append(f"    - {p}")
        if len(report.problems) > max_problems:
            lines.append(f"    ... and {len(report.problems) - max_problems} more")
    else:
        lines.append("  no problems found")
    return "\n".join(lines)


def iter_image_refs(records: Iterable) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for r in records:
        if isinstance(r.image, str):
            refs.setdefault(r.image, []).append(r.uid)
    return refs
