"""Stable fingerprints of a dataset copy: sha256 over the bytes of its annotation files and of every
image file (each file hashed once per version of it, :mod:`umdbench.data.content`), with names
relative to the dataset folder, so an image replaced by another of the same size changes the
fingerprint, and the same copy in another folder does not."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from umdbench.data.content import content_cache

__all__ = ["IMAGE_SUFFIXES", "sha256_file", "list_images", "dataset_fingerprint"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def list_images(folder: str | Path) -> list[tuple[str, int]]:
    """Sorted ``(relative posix path, size)`` of every image file under ``folder`` (recursive); a
    dangling symlink has size -1."""
    folder = Path(folder)
    out: list[tuple[str, int]] = []
    if not folder.is_dir():
        return out
    stack = [folder]
    # symlinked folders are followed (a dataset may link its images in), each real folder once, so
    # a link back up the tree (a loop) cannot recurse forever
    seen = {os.path.realpath(folder)}
    while stack:
        current = stack.pop()
        with os.scandir(current) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=True):
                    real = os.path.realpath(entry.path)
                    if real not in seen:
                        seen.add(real)
                        stack.append(Path(entry.path))
                elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                    rel = Path(entry.path).relative_to(folder).as_posix()
                    try:
                        size = entry.stat().st_size
                    except OSError:  # a dangling symlink: listed (the run's data check names it), size -1
                        size = -1
                    out.append((rel, size))
    out.sort()
    return out


def dataset_fingerprint(
    name: str,
    version: str,
    options: dict[str, Any],
    annotation_files: Iterable[str | Path],
    image_dirs: Iterable[str | Path] = (),
    base: str | Path | None = None,
    extra: Iterable[str] = (),
) -> str:
    """sha256 over plugin identity, options, annotation file bytes and every image's name, size and
    content hash (through the content cache of ``base``, so only new or changed files are read).

    Paths enter the hash relative to ``base`` so the same copy in another folder hashes the same.
    """
    h = hashlib.sha256()
    annotation_files, image_dirs = [Path(p) for p in annotation_files], [Path(p) for p in image_dirs]
    cache = content_cache(
        base
        if base is not None
        else os.path.commonpath([str(p.absolute()) for p in [*annotation_files, *image_dirs]] or ["."])
    )

    def rel(p: Path) -> str:
        if base is not None:
            try:
                return p.relative_to(base).as_posix()
            except ValueError:
                pass
        return p.name

    h.update(json.dumps({"name": name, "version": version, "options": options}, sort_keys=True, default=str).encode())
    for f in sorted(annotation_files):
        h.update(b"\0file\0" + rel(f).encode() + b"\0")
        h.update(cache.sha256(f).encode())
    for d in sorted(image_dirs):
        h.update(b"\0images\0" + rel(d).encode() + b"\0")
        for img, size in list_images(d):
            try:
                digest = cache.sha256(d / img)
            except OSError:  # vanished since listed, or unreadable: the run's data check names it
                digest = "unreadable"
            h.update(f"{img}\t{size}\t{digest}\n".encode())
    for item in extra:
        h.update(b"\0extra\0" + str(item).encode())
    cache.save()
    return h.hexdigest()
