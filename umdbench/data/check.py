"""Helpers for ``DatasetPlugin.check()``: image verification and the shared check loop."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

__all__ = ["MAX_IMAGE_PIXELS", "open_image", "verify_image", "check_images", "format_report"]

_FETCH_FIX = "fix: restore the file (re-download or re-extract the release) or remove the records that use it"

# The one place umdbench sets PIL's decompression-bomb limit (PIL's default is ~89 Mpx): 100 Mpx
# holds any 10k x 10k scan, and a larger image is refused before its pixels are decoded (~300 MB
# as RGB), whether PIL would only have warned (1-2x the limit) or raised (above 2x).
MAX_IMAGE_PIXELS = 100_000_000


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
        raise ImageTooLarge(f"{img.size[0]}x{img.size[1]} pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels "
                            f"(a decompression bomb, or not the image the record means)")
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
