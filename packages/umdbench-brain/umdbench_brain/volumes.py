"""Records -> float volumes: loading (array or NIfTI), the released pre-processing of real scans,
modality stacking with the missing-modality rule, per-channel percentile scaling, a disk cache of
pre-processed studies, BraTS region masks and random crops.

Released pre-processing (``Record.extra["preprocess"] == "released"``,
set by the BraTS readers): the study's NIfTI volumes, read with nibabel together with their affines,
go through MONAI's ``Orientationd`` (RAS), ``Spacingd`` (1 mm isotropic; images bilinear, the label
nearest neighbour) and ``CropForegroundd`` (the box of voxels nonzero in any modality, margin 1, the
label cropped alike). Percentile scaling follows. Generated studies (arrays, no affine) are used on
their own grid: brainsynth phantoms need none of it, since they are drawn on a fixed canvas that is
RAS-ordered and 1 mm-like by construction, with the head roughly centred (no wide zero margin).

Disk cache (:class:`StudyLoader`): the pre-processed, scaled study (float16 volume, present flags,
label) of a file-backed record is stored once under ``<cache_dir>/volumes/<k[:2]>/<k>.npz``, where
``k`` hashes every source file's (absolute path, size, mtime_ns, inode, ctime_ns), the modality
order, the label remapping, the pre-processing settings and :data:`CACHE_VERSION`. Later epochs (and runs) read the
entry with ``numpy.load(allow_pickle=False)`` and never open the NIfTI files. Entries are written
atomically (:func:`umdbench.util.atomic_write_bytes`: a unique temporary file, then ``os.replace``),
so concurrent data-loader workers writing one entry each leave a whole file. An entry that cannot be
read, or whose stored key, shapes or dtypes do not match, is ignored and rebuilt from the sources.
File-backed volumes are rounded to float16 whether or not a cache is used, so a cached epoch sees
exactly the values of the first one.

Missing-modality rule: the encoder always sees ``len(modalities)`` channels in a fixed order;
a modality a study lacks is a channel of zeros (after scaling, 0 is the background level) and
``present[m] = 0`` in the batch, so a strategy can tell "absent" from "dark".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from umdbench.api import DataError, Record
from umdbench.data.check import MAX_VOLUME_VOXELS
from umdbench.util import atomic_write_bytes
from umdbench_brain.volcheck import AFFINE_TOLERANCE

__all__ = [
    "REGION_CODES",
    "PREPROCESS_MODES",
    "RELEASED_PREPROCESS",
    "CACHE_VERSION",
    "load_volume",
    "load_nifti",
    "stack_modalities",
    "released_preprocess",
    "scale_percentiles",
    "region_masks",
    "random_crop",
    "record_volume",
    "load_study",
    "StudyLoader",
]

PREPROCESS_MODES = ("released", "none")
# the released fine-tuning transforms (notes 1.6): RAS, 1 mm, foreground crop with margin 1
RELEASED_PREPROCESS = {
    "axcodes": "RAS",
    "pixdim": 1.0,
    "foreground_margin": 1,
    "image_interp": "bilinear",
    "label_interp": "nearest",
}
PERCENTILES = (5.0, 95.0)
# bump when the pre-processing or the cache file layout changes: old entries are then never read
CACHE_VERSION = 1
_CACHE_SUBDIR = "volumes"

# BraTS evaluation regions as unions of label codes (2018-2021 coding; 2023 releases are remapped
# 3 -> 4 by their reader): whole tumour, tumour core, enhancing tumour.
REGION_CODES = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def load_volume(source: Any, what: str) -> np.ndarray:
    """An array as is, or a NIfTI file through nibabel; ``what`` names the record for errors."""
    if isinstance(source, np.ndarray):
        return source
    return load_nifti(source, what)[0]


def load_nifti(source: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` of a NIfTI file through nibabel (errors as :func:`load_volume`)."""
    path = Path(source)
    try:
        import nibabel as nib

        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) != 3 or int(np.prod(shape, dtype=np.int64)) > MAX_VOLUME_VOXELS:
            # refused on the header, before nibabel allocates what it declares
            raise DataError(
                f"{what}: {path} declares shape {shape}; a volume must be 3-D with at most "
                f"{MAX_VOLUME_VOXELS:,} voxels (umdbench.data.check.MAX_VOLUME_VOXELS); re-copy the file "
                f"from the release (`umdbench data check` lists every such file)."
            )
        data = np.asanyarray(img.dataobj)
        if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
            raise DataError(
                f"{what}: {path} holds NaN or infinite voxels, which scaling would turn into a blank "
                f"channel; re-copy the file from the release (`umdbench data check` lists every such file)."
            )
        return data, np.asarray(img.affine, dtype=np.float64)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(
            f"{what}: file {path} does not exist; restore it or run `umdbench data check` on the "
            f"dataset to list every missing file."
        ) from exc
    except Exception as exc:  # nibabel raises several types for truncated or foreign files
        raise DataError(
            f"{what}: {path} is not a readable NIfTI volume ({type(exc).__name__}: {exc}); "
            f"re-copy the file from the release."
        ) from exc


def _nonzero(x):
    return x != 0


def released_preprocess(
    channels: dict[str, tuple[np.ndarray, np.ndarray]], label: tuple[np.ndarray, np.ndarray] | None, what: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray]:
    """The released spatial pre-processing of one study with MONAI: ``channels`` = ``{modality:
    (data, affine)}`` (co-registered: one shape and affine), ``label`` = ``(data, affine)`` or None.
    Returns ``({modality: float32 volume}, label in its own dtype or None, affine of the result)``
    in RAS orientation at 1 mm, cropped to the box of voxels nonzero in any modality (+ margin)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import CropForegroundd, Orientationd, Spacingd

    names = list(channels)
    shape, affine = channels[names[0]][0].shape, channels[names[0]][1]
    for m in names:
        data, aff = channels[m]
        if data.ndim != 3 or data.shape != shape:
            raise DataError(
                f"{what}: modality volumes differ in shape ({m}: {data.shape}, {names[0]}: {shape}) or are "
                f"not 3-D; the modalities of a study must be co-registered on one grid. Resample them "
                f"before use."
            )
        if not np.allclose(aff, affine, rtol=0, atol=AFFINE_TOLERANCE):
            raise DataError(
                f"{what}: the affine of {m} differs from that of {names[0]} (the volumes are not "
                f"co-registered); resample them onto one grid or re-copy the study."
            )
    if label is not None and (
        label[0].shape != shape or not np.allclose(label[1], affine, rtol=0, atol=AFFINE_TOLERANCE)
    ):
        raise DataError(
            f"{what}: the label volume is not on the images' grid (shape {label[0].shape} vs {shape}, "
            f"or a different affine); the label must share the images' grid."
        )
    if not any(np.any(np.asarray(channels[m][0]) != 0) for m in names):
        raise DataError(
            f"{what}: every modality is blank (all voxels 0), so the study has no foreground to crop to; "
            f"re-copy its files from the release (`umdbench data check` lists every such study)."
        )
    spec = RELEASED_PREPROCESS
    aff = torch.as_tensor(affine, dtype=torch.float64)
    image = np.stack([np.asarray(channels[m][0], dtype=np.float32) for m in names])
    data = {"image": MetaTensor(torch.from_numpy(image), affine=aff)}
    keys, modes = ["image"], [spec["image_interp"]]
    if label is not None:
        data["label"] = MetaTensor(torch.from_numpy(np.asarray(label[0], dtype=np.float32)[None]), affine=aff.clone())
        keys.append("label")
        modes.append(spec["label_interp"])
    labels = (("L", "R"), ("P", "A"), ("I", "S"))  # NIfTI world axes; explicit, MONAI warns otherwise
    data = Orientationd(keys=keys, axcodes=spec["axcodes"], labels=labels)(data)
    data = Spacingd(keys=keys, pixdim=(spec["pixdim"],) * 3, mode=tuple(modes))(data)
    data = CropForegroundd(
        keys=keys, source_key="image", select_fn=_nonzero, margin=spec["foreground_margin"], allow_smaller=True
    )(data)
    out_image = data["image"].numpy().astype(np.float32, copy=False)
    out_affine = np.asarray(data["image"].affine, dtype=np.float64)
    out_label = None
    if label is not None:
        out_label = np.rint(data["label"].numpy()[0]).astype(label[0].dtype)
    return {m: out_image[i] for i, m in enumerate(names)}, out_label, out_affine


def _check_image(image: Any, modalities: Sequence[str], what: str) -> None:
    if not isinstance(image, dict):
        raise DataError(
            f"{what}: Record.image must be a dict {{modality: array or path}} for volume tasks, got "
            f"{type(image).__name__}; this dataset does not fit a volume task type."
        )
    unknown = sorted(set(image) - set(modalities))
    if unknown or not image:
        raise DataError(
            f"{what}: modalities {sorted(image)} do not match the encoder's {list(modalities)}; set "
            f"model.modalities to the dataset's modality names (--cfg-options model.modalities=[...])."
        )


def stack_modalities(image: dict, modalities: Sequence[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(volume float32 [M,D,H,W], present int64 [M])`` in ``modalities`` order; absent = zeros."""
    _check_image(image, modalities, what)
    loaded = {m: load_volume(image[m], f"{what} ({m})") for m in modalities if m in image}
    for m, v in loaded.items():
        if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v)):
            raise DataError(
                f"{what} ({m}): the volume holds NaN or infinite voxels, which scaling would turn into a "
                f"blank channel still marked present; fix the data (`umdbench data check` lists them)."
            )
    shapes = {m: v.shape for m, v in loaded.items()}
    shape = next(iter(shapes.values()))
    if any(s != shape or len(s) != 3 for s in shapes.values()):
        raise DataError(
            f"{what}: modality volumes differ in shape {shapes} (or are not 3-D); the modalities of a "
            f"study must be co-registered on one grid. Resample them before use."
        )
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


def region_masks(label: np.ndarray, regions: Sequence[str], what: str, codes: dict | None = None) -> np.ndarray:
    """uint8 [K,D,H,W]: one binary mask per region name, each the union of its label codes:
    ``codes`` (``{region: [code, ...]}``, a record's ``extra["region_codes"]``, declared by its
    dataset) when given, else :data:`REGION_CODES` (BraTS)."""
    table = {str(k): tuple(int(c) for c in v) for k, v in codes.items()} if codes else REGION_CODES
    bad = [r for r in regions if r not in table]
    if bad:
        raise DataError(
            f"{what}: regions {bad} are unknown; the segmentation task knows {sorted(table)} "
            f"(the dataset's label_names() must list some of them)."
        )
    return np.stack([np.isin(label, table[r]) for r in regions]).astype(np.uint8)


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
    """Scaled ``(volume [M,D,H,W], present [M])`` of one record (no cache)."""
    volume, present, _ = load_study(record, modalities, with_label=False)
    return volume, present


def _preprocess_mode(record: Record, what: str) -> str:
    mode = record.extra.get("preprocess", "none")
    if mode not in PREPROCESS_MODES:
        raise DataError(
            f"{what}: Record.extra['preprocess'] is {mode!r}; allowed: {list(PREPROCESS_MODES)} (set by "
            f"the dataset's `preprocess` option)."
        )
    return mode


def load_study(record: Record, modalities: Sequence[str], *, with_label: bool) -> tuple:
    """``(volume float32 [M,D,H,W] percentile-scaled, present int64 [M], label or None)`` of one
    record, decoded from its sources (no cache): the released pre-processing when the record asks
    for it, the label (``extra["label"]``, when ``with_label``) remapped by ``extra["label_map"]``."""
    what = f"record {record.uid}"
    if with_label and "label" not in record.extra:
        raise DataError(f"{what}: no label volume (Record.extra['label']); a segmentation split needs one per study.")
    mode = _preprocess_mode(record, what)
    label = None
    if mode == "released":
        _check_image(record.image, modalities, what)
        sources = {m: record.image[m] for m in modalities if m in record.image}
        if any(isinstance(v, np.ndarray) for v in sources.values()):
            raise DataError(
                f"{what}: the released pre-processing needs NIfTI files (their affines), but the record "
                f"holds arrays; read generated studies with preprocess=none."
            )
        channels = {m: load_nifti(src, f"{what} ({m})") for m, src in sources.items()}
        lab = load_nifti(record.extra["label"], f"{what} (label)") if with_label else None
        arrays, label, _ = released_preprocess(channels, lab, what)
        volume, present = stack_modalities(arrays, modalities, what)
    else:
        volume, present = stack_modalities(record.image, modalities, what)
        if with_label:
            label = np.asarray(load_volume(record.extra["label"], f"{what} (label)"))
    if label is not None:
        for old, new in (record.extra.get("label_map") or {}).items():  # e.g. BraTS 2023: ET 3 -> 4
            label = np.where(label == int(old), int(new), label)
        if label.shape != volume.shape[1:]:
            raise DataError(
                f"{what}: label shape {label.shape} differs from the images' {volume.shape[1:]}; the "
                f"label must be on the images' grid."
            )
    return scale_percentiles(volume, present, *PERCENTILES), present, label


def _file_backed(record: Record) -> bool:
    image = record.image
    sources = list(image.values()) if isinstance(image, dict) else [image]
    if "label" in record.extra:
        sources.append(record.extra["label"])
    return bool(sources) and all(isinstance(s, (str, os.PathLike)) for s in sources)


def _label_dtype(label: np.ndarray) -> np.dtype:
    if label.size == 0 or (label.min() >= 0 and label.max() < 256):
        return np.dtype(np.uint8)
    return np.dtype(np.int32)


class StudyLoader:
    """Pre-processed studies of records, through the disk cache described in the module doc
    (``cache_dir`` None: no cache). Picklable for data-loader workers; ``hits``/``misses``/
    ``rebuilt`` count per process (``rebuilt``: an entry existed but was unreadable or mismatched).

    Generated studies (records holding arrays) have no file to cache; each is pre-processed once
    per process and kept in memory (up to :attr:`MEMORY_BYTES`; past that, again at every load),
    so an epoch does not scale every study's percentiles again."""

    MEMORY_BYTES = 256 * 2**20

    def __init__(self, modalities: Sequence[str], cache_dir: str | Path | None = None):
        self.modalities = tuple(modalities)
        self.cache_dir = Path(cache_dir) / _CACHE_SUBDIR if cache_dir is not None else None
        self.hits = self.misses = self.rebuilt = 0
        self._kept: dict[tuple[int, bool], tuple] = {}  # (id(record), with_label) -> (record, study)
        self._kept_bytes = 0

    def __getstate__(self):
        return {"modalities": self.modalities, "cache_dir": self.cache_dir}

    def __setstate__(self, state):
        self.__init__(state["modalities"])
        self.cache_dir = state["cache_dir"]

    # -- public ---------------------------------------------------------------------------------
    def load(self, record: Record, *, with_label: bool) -> tuple:
        """``(volume float32 [M,D,H,W], present int64 [M], label or None)``; see :func:`load_study`."""
        if not _file_backed(record):  # generated studies: in memory already, kept once scaled
            return self._generated(record, with_label)
        has_label = "label" in record.extra
        if with_label and not has_label:
            raise DataError(
                f"record {record.uid}: no label volume (Record.extra['label']); a segmentation split "
                f"needs one per study."
            )
        key = self.key(record)
        entry = self.entry_path(key)
        if entry is not None:
            cached = self._read(entry, key, has_label)
            if cached is not None:
                self.hits += 1
                volume, present, label = cached
                return volume, present, label if with_label else None
        self.misses += 1
        # the label goes into the entry whenever the record has one, so pre-training and
        # segmentation stages share one entry per study
        volume, present, label = load_study(record, self.modalities, with_label=has_label)
        volume = volume.astype(np.float16)
        if label is not None:
            label = label.astype(_label_dtype(label))
        if entry is not None:
            self._write(entry, key, volume, present, label)
        return volume.astype(np.float32), present, label if with_label else None

    def _generated(self, record: Record, with_label: bool) -> tuple:
        key = (id(record), with_label)
        kept = self._kept.get(key)
        if kept is None or kept[0] is not record:  # the entry holds the record, so its id is not reused
            study = load_study(record, self.modalities, with_label=with_label)
            size = sum(a.nbytes for a in study if a is not None)
            kept = (record, study)
            if self._kept_bytes + size <= self.MEMORY_BYTES:
                self._kept[key] = kept
                self._kept_bytes += size
        volume, present, label = kept[1]
        # copies: a caller may change what it is handed, and the next epoch must not see that
        return volume.copy(), present.copy(), None if label is None else label.copy()

    def key(self, record: Record) -> str:
        """Hash of the sources' (absolute path, size, mtime_ns, inode, ctime_ns: a same-size rewrite
        whose mtime was set back still changes ctime_ns), the modality order, the label map,
        the pre-processing settings and the cache version."""
        what = f"record {record.uid}"
        files = {f"image:{m}": p for m, p in sorted(record.image.items())}
        if "label" in record.extra:
            files["label"] = record.extra["label"]
        stats = []
        for role, path in files.items():
            apath = os.path.abspath(path)
            try:
                st = os.stat(apath)
            except OSError as exc:
                raise DataError(
                    f"{what}: file {apath} ({role}) does not exist; restore it or run `umdbench data "
                    f"check` on the dataset to list every missing file."
                ) from exc
            stats.append([role, apath, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns])
        mode = _preprocess_mode(record, what)
        payload = {
            "version": CACHE_VERSION,
            "modalities": list(self.modalities),
            "files": stats,
            "label_map": {str(k): int(v) for k, v in (record.extra.get("label_map") or {}).items()},
            "preprocess": mode,
            "settings": RELEASED_PREPROCESS if mode == "released" else None,
            "percentiles": list(PERCENTILES),
            "dtype": "float16",
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def entry_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.npz"

    # -- internals --------------------------------------------------------------------------------
    def _read(self, entry: Path, key: str, has_label: bool):
        if not entry.is_file():
            return None
        try:
            with np.load(entry, allow_pickle=False) as npz:
                stored_key = str(npz["key"])
                volume = npz["volume"]
                present = npz["present"]
                label = npz["label"] if "label" in npz.files else None
        except Exception:  # truncated / not a zip / bad CRC / missing member: rebuild it
            self.rebuilt += 1
            return None
        m = len(self.modalities)
        ok = (
            stored_key == key
            and volume.dtype == np.float16
            and volume.ndim == 4
            and volume.shape[0] == m
            and present.shape == (m,)
            and present.dtype == np.int64
            and (label is not None) == has_label
            and (label is None or label.shape == volume.shape[1:])
        )
        if not ok:
            self.rebuilt += 1
            return None
        return volume.astype(np.float32), present, label

    @staticmethod
    def _write(entry: Path, key: str, volume: np.ndarray, present: np.ndarray, label) -> None:
        arrays = {"key": np.array(key), "volume": volume, "present": present}
        if label is not None:
            arrays["label"] = label
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(entry, buf.getbuffer())
        except OSError:  # a read-only or full cache folder must not stop training: the volume is right
            pass
