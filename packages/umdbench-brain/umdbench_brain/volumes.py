"""Records -> float volumes: loading (array or NIfTI), modality stacking with the missing-modality
rule, per-channel percentile scaling, BraTS region masks, random crops and flips.

Missing-modality rule: the encoder always sees ``len(modalities)`` channels in a fixed order;
a modality a study lacks is a channel of zeros (after scaling, 0 is the background level) and
``present[m] = 0`` in the batch, so a strategy can tell "absent" from "dark".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from umdbench.api import DataError, Record

__all__ = ["REGION_CODES", "load_volume", "stack_modalities", "scale_percentiles", "region_masks", "random_crop",
           "record_volume"]

# BraTS evaluation regions as unions of label codes (2018-2021 coding; 2023 releases are remapped
# 3 -> 4 by their reader): whole tumour, tumour core, enhancing tumour.
REGION_CODES = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def load_volume(source: Any, what: str) -> np.ndarray:
    """An array as is, or a NIfTI file through nibabel; ``what`` names the record for errors."""
    if isinstance(source, np.ndarray):
        return source
    path = Path(source)
    try:
        import nibabel as nib

        return np.asanyarray(nib.load(str(path)).dataobj)
    except FileNotFoundError as exc:
        raise DataError(f"{what}: file {path} does not exist; restore it or run `umdbench data check` on the "
                        f"dataset to list every missing file.") from exc
    except Exception as exc:  # nibabel raises several types for truncated or foreign files
        raise DataError(f"{what}: {path} is not a readable NIfTI volume ({type(exc).__name__}: {exc}); "
                        f"re-copy the file from the release.") from exc


def stack_modalities(image: dict, modalities: Sequence[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(volume float32 [M,D,H,W], present int64 [M])`` in ``modalities`` order; absent = zeros."""
    if not isinstance(image, dict):
        raise DataError(f"{what}: Record.image must be a dict {{modality: array or path}} for volume tasks, got "
                        f"{type(image).__name__}; this dataset does not fit a volume task type.")
    unknown = sorted(set(image) - set(modalities))
    if unknown or not image:
        raise DataError(f"{what}: modalities {sorted(image)} do not match the encoder's {list(modalities)}; set "
                        f"model.modalities to the dataset's modality names (--cfg-options model.modalities=[...]).")
    loaded = {m: load_volume(image[m], f"{what} ({m})") for m in modalities if m in image}
    shapes = {m: v.shape for m, v in loaded.items()}
    shape = next(iter(shapes.values()))
    if any(s != shape or len(s) != 3 for s in shapes.values()):
        raise DataError(f"{what}: modality volumes differ in shape {shapes} (or are not 3-D); the modalities of a "
                        f"study must be co-registered on one grid. Resample them before use.")
    out = np.zeros((len(modalities), *shape), dtype=np.float32)
    present = np.zeros(len(modalities), dtype=np.int64)
    for i, m in enumerate(modalities):
        if m in loaded:
            out[i] = loaded[m]
            present[i] = 1
    return out, present


def scale_percentiles(volume: np.ndarray, present: np.ndarray, lower: float = 5.0, upper: float = 95.0) -> np.ndarray:
    """Each present channel: percentile ``lower`` -> 0, ``upper`` -> 1, clipped (MONAI's
    ScaleIntensityRangePercentiles, as the released pre-processing). Absent channels stay zero."""
    from monai.transforms import ScaleIntensityRangePercentiles

    scale = ScaleIntensityRangePercentiles(lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)
    out = np.zeros_like(volume, dtype=np.float32)
    for i in np.flatnonzero(present):
        channel = volume[i]
        lo, hi = np.percentile(channel, (lower, upper))
        if hi > lo:  # a constant channel carries nothing; MONAI would warn and shift it only
            out[i] = np.asarray(scale(channel), dtype=np.float32)
    return out


def region_masks(label: np.ndarray, regions: Sequence[str], what: str) -> np.ndarray:
    """uint8 [K,D,H,W]: one binary mask per region name of :data:`REGION_CODES`."""
    bad = [r for r in regions if r not in REGION_CODES]
    if bad:
        raise DataError(f"{what}: regions {bad} are unknown; the segmentation task knows {sorted(REGION_CODES)} "
                        f"(the dataset's label_names() must list some of them).")
    return np.stack([np.isin(label, REGION_CODES[r]) for r in regions]).astype(np.uint8)


def random_crop(arrays: list[np.ndarray], size: int, rng: np.random.Generator, *, with_origin: bool = False):
    """One random ``size``-cubed window, the same for every array ([C,D,H,W]); zero-padded first
    where a side is shorter than ``size``. ``with_origin``: also return the window's first voxel
    in the unpadded grid (negative where padded), which template crops need."""
    shape = arrays[0].shape[1:]
    pad = [(0, 0)] + [((max(0, size - s)) // 2, max(0, size - s) - (max(0, size - s)) // 2) for s in shape]
    if any(p != (0, 0) for p in pad):
        arrays = [np.pad(a, pad) for a in arrays]
        shape = arrays[0].shape[1:]
    start = [int(rng.integers(0, s - size + 1)) for s in shape]
    window = (slice(None),) + tuple(slice(b, b + size) for b in start)
    crops = [a[window] for a in arrays]
    if with_origin:
        return crops, [b - p[0] for b, p in zip(start, pad[1:])]
    return crops


def record_volume(record: Record, modalities: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Scaled ``(volume [M,D,H,W], present [M])`` of one record."""
    what = f"record {record.uid}"
    volume, present = stack_modalities(record.image, modalities, what)
    return scale_percentiles(volume, present), present
