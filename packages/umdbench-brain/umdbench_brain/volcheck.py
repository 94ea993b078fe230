"""Checks of a study's NIfTI files before anything trains on them.

A study that cannot be used must stop a run before its first stage trains, with one paragraph that
names the study, the file and the fix, or (``on_error=skip``) be left out and counted; it must
never be trained on silently (a label code read as background, a NaN modality turned into zeros but
marked present) nor fail after hours of training (a truncated test volume).

Two levels, both per file and both remembered in the content cache (:mod:`umdbench.data.content`),
keyed by the file's sha256, so each is paid once per version of a file:

* header (no voxel is read): readable NIfTI, 3-D, declared size at most
  :data:`umdbench.data.check.MAX_VOLUME_VOXELS` (a damaged header declaring 2000^3 voxels is refused
  before nibabel allocates them); across the files of a study: one shape, affines equal within
  :data:`AFFINE_TOLERANCE`;
* content (one full decode): the data decodes (a truncated file fails here), every voxel is finite,
  an image is not blank (all zero: a modality without signal would be marked present), a label
  holds only the dataset's codes (integers; :func:`study_problems` maps them through the record's
  ``label_map`` first).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from umdbench.data.check import MAX_VOLUME_VOXELS

__all__ = [
    "AFFINE_TOLERANCE",
    "FACTS_VERSION",
    "header_facts",
    "content_facts",
    "study_problems",
    "missing_file_problem",
]

# the largest difference between two affine entries (mm) still called "the same grid": float32
# round trips of a sform stay far below it, a shifted or rotated volume is far above it
AFFINE_TOLERANCE = 1e-3
# bump when what a fact holds changes: entries of older versions are then never read
FACTS_VERSION = 1
_MAX_VALUES = 64  # distinct values remembered of a label (a label holding more is not a label)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load(path: str | Path):
    import nibabel as nib

    return nib.load(str(path))


def header_facts(path: str | Path) -> dict:
    """``{"shape", "affine"}`` from the NIfTI header alone, or ``{"error": why}``."""
    try:
        img = _load(path)
        shape = [int(s) for s in img.shape]
        affine = np.asarray(img.affine, dtype=np.float64)
    except MemoryError as exc:
        return {"error": f"cannot be read ({_short(exc)})"}
    except Exception as exc:  # nibabel raises many types for foreign, non-gzip or truncated headers
        return {"error": f"is not a readable NIfTI volume ({_short(exc)})"}
    if not np.all(np.isfinite(affine)):
        return {"shape": shape, "affine": None}
    return {"shape": shape, "affine": affine.tolist()}


def content_facts(path: str | Path, label: bool) -> dict:
    """What one full decode tells: ``{"nonfinite": n, "nonzero": bool}`` and, for a label,
    ``{"integral": bool, "values": [...], "n_values": n}``; or ``{"error": why}``. Call only
    after :func:`header_facts` accepted the file (its size is bounded)."""
    try:
        data = np.asanyarray(_load(path).dataobj)
    except MemoryError as exc:
        return {"error": f"cannot be decoded ({_short(exc)})"}
    except Exception as exc:  # truncated gzip stream, short data block, ...
        return {"error": f"cannot be decoded: it is truncated or corrupt ({_short(exc)})"}
    facts: dict[str, Any] = {"nonfinite": 0, "nonzero": bool(np.any(data != 0))}
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        facts["nonfinite"] = int(data.size - np.count_nonzero(np.isfinite(data)))
    if label:
        finite = data[np.isfinite(data)] if facts["nonfinite"] else data
        integral = bool(np.all(np.equal(np.mod(finite, 1), 0))) if np.issubdtype(finite.dtype, np.floating) else True
        values = np.unique(finite)
        facts.update(
            integral=integral,
            n_values=int(values.size),
            values=[float(v) if not float(v).is_integer() else int(v) for v in values[:_MAX_VALUES]],
        )
    return facts


def _cached(cache, path: Path, kind: str, compute) -> dict:
    """``compute()`` through the content cache (keyed by the file's sha256), or directly."""
    if cache is None:
        return compute()
    digest = cache.sha256(path)
    key = f"{kind}-v{FACTS_VERSION}"
    facts = cache.fact(key, digest)
    if not isinstance(facts, dict):
        facts = compute()
        cache.remember(key, digest, facts)
    return facts


def missing_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be opened as a file (missing, a dangling symlink, a folder), or None."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"is a symlink to {os.readlink(path)}, which does not exist"
    if not os.path.exists(path):
        return "is missing"
    if not os.path.isfile(path):
        return "is not a file"
    return None


def study_problems(
    dataset: str,
    study: str,
    files: dict[str, Path],
    *,
    label_values: Sequence[int],
    label_map: dict | None = None,
    deep: bool = True,
    cache=None,
) -> list[str]:
    """One paragraph per problem of one study (empty when it is usable). ``files``: ``{modality
    or 'seg': path}``, images first (the first image is the grid the others are compared with);
    ``label_values``: the codes the release uses (before ``label_map``); ``deep``: also decode
    every file (through ``cache``, a :class:`~umdbench.data.content.ContentCache`, when given)."""
    where = f"{dataset}: study {study}"
    recopy = "re-copy it from the release"
    skip = "or leave the study out with --cfg-options dataset.on_error=skip"
    problems: list[str] = []
    headers: dict[str, dict] = {}
    for role, path in files.items():
        what = "label" if role == "seg" else role
        missing = missing_file_problem(path)
        if missing:
            problems.append(f"{where}: file {path} ({what}) {missing}; fix: {recopy}, {skip}.")
            continue
        try:
            facts = _cached(cache, path, "nifti-header", lambda: header_facts(path))
        except OSError as exc:
            problems.append(f"{where}: file {path} ({what}) cannot be read ({_short(exc)}); fix: {recopy}, {skip}.")
            continue
        if "error" in facts:
            problems.append(f"{where}: file {path} ({what}) {facts['error']}; fix: {recopy}, {skip}.")
            continue
        shape = tuple(facts["shape"])
        if len(shape) != 3:
            problems.append(
                f"{where}: file {path} ({what}) is {len(shape)}-D (shape {shape}); every volume of a "
                f"study must be 3-D; fix: {recopy} (or save the volume without its extra axes), {skip}."
            )
            continue
        voxels = int(np.prod(shape, dtype=np.int64))
        if voxels > MAX_VOLUME_VOXELS:
            problems.append(
                f"{where}: file {path} ({what}) declares shape {shape} = {voxels:,} voxels, over the "
                f"limit of {MAX_VOLUME_VOXELS:,} (umdbench.data.check.MAX_VOLUME_VOXELS): a damaged "
                f"header or not a brain scan, refused before it is decoded; fix: {recopy}, {skip}."
            )
            continue
        if facts["affine"] is None:
            problems.append(
                f"{where}: file {path} ({what}) has a non-finite affine in its header; fix: {recopy}, {skip}."
            )
            continue
        headers[role] = facts
    if headers:
        ref_role = next(iter(headers))
        ref = headers[ref_role]
        ref_name = files[ref_role].name
        for role, facts in list(headers.items())[1:]:
            path = files[role]
            if facts["shape"] != ref["shape"]:
                problems.append(
                    f"{where}: file {path} has shape {tuple(facts['shape'])} but {ref_name} has "
                    f"{tuple(ref['shape'])}; the files of a study must share one grid; fix: resample "
                    f"them onto one grid or {recopy}, {skip}."
                )
                del headers[role]
                continue
            diff = float(np.max(np.abs(np.asarray(facts["affine"]) - np.asarray(ref["affine"]))))
            if diff > AFFINE_TOLERANCE:
                problems.append(
                    f"{where}: file {path} has an affine that differs from {ref_name}'s by up to "
                    f"{diff:.4g} (tolerance {AFFINE_TOLERANCE}): the volumes are not co-registered; fix: "
                    f"resample them onto one grid or {recopy}, {skip}."
                )
                del headers[role]
    if not deep:
        return problems
    allowed = sorted(int(v) for v in label_values)
    remap = {int(k): int(v) for k, v in (label_map or {}).items()}
    for role, path in files.items():
        if role not in headers:
            continue
        is_label = role == "seg"
        what = "label" if is_label else role
        try:
            facts = _cached(
                cache, path, "nifti-label" if is_label else "nifti-image", lambda: content_facts(path, is_label)
            )
        except OSError as exc:
            problems.append(f"{where}: file {path} ({what}) cannot be read ({_short(exc)}); fix: {recopy}, {skip}.")
            continue
        if "error" in facts:
            problems.append(f"{where}: file {path} ({what}) {facts['error']}; fix: {recopy}, {skip}.")
            continue
        if facts["nonfinite"]:
            problems.append(
                f"{where}: file {path} ({what}) holds {facts['nonfinite']:,} NaN or infinite voxel(s), "
                f"which scaling would turn into a blank channel still marked present; fix: {recopy}, {skip}."
            )
            continue
        if not is_label and not facts["nonzero"]:
            problems.append(
                f"{where}: file {path} ({what}) is blank (every voxel is 0): the modality would count as "
                f"present with no signal; fix: {recopy}, {skip}."
            )
            continue
        if is_label:
            if not facts["integral"]:
                problems.append(
                    f"{where}: file {path} (label) holds non-integer values; a label volume holds the "
                    f"codes {allowed}; fix: {recopy} (labels are saved as integers), {skip}."
                )
                continue
            values = [int(v) for v in facts["values"]]
            bad = [v for v in values if v not in allowed]
            if bad or facts["n_values"] > len(values):
                mapped = sorted({remap.get(v, v) for v in allowed})
                more = f" (and {facts['n_values'] - len(values)} more)" if facts["n_values"] > len(values) else ""
                problems.append(
                    f"{where}: file {path} (label) has codes {bad}{more} outside {dataset}'s {allowed}"
                    + (f" (read as {mapped})" if remap else "")
                    + f"; they would be trained on as background; fix: {recopy}, or read it with the "
                    f"reader of its release (BraTS 2021: 0/1/2/4, BraTS 2023: 0/1/2/3), {skip}."
                )
    return problems
